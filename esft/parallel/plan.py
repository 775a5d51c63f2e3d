"""Sizing an expert-parallel ESFT run: memory per rank and the smallest layout that fits (``esft plan``).

Counts come from the model's config alone (the model is built on the meta device: no weights are read), so a
plan for DeepSeek-V3 runs on a laptop. Per rank, with ``W`` ranks and experts sharded over ``ep_size``:

- frozen weights: every weight / ``W`` at rest (FSDP2 shards dense weights over all ranks and each expert block
  over its ``W / ep_size`` replicas), plus the working set gathered for compute: two decoder layers (the one
  running and the one prefetched), each its dense weights whole and its expert block (``1 / ep_size`` of the
  layer's experts);
- trained rows: fp32 masters of the selected experts this rank owns (the busiest expert-parallel rank);
- AdamW: fp32 gradient + two fp32 moments of those rows (12 bytes per trained parameter);
- activations: an estimate for one micro-batch of ``batch_size * seq_len`` tokens: per token and layer the
  saved hidden states of attention and the routed experts' inputs (``2 * (16 * hidden + 3 * top_k *
  moe_intermediate)`` bytes in bf16; only the layer input with activation checkpointing, plus one layer
  recomputed), plus fp32 logits.

A layout fits when the sum is at most 90% of the device's memory (the rest: CUDA context, allocator slack).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch

from esft.errors import ConfigError
from esft.expert_config import ExpertConfig
from esft.models.discovery import find_moe_layers

HEADROOM = 0.9
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """``"80GiB"`` -> 85899345920 (GB = 10^9, GiB and G = 2^30).

    >>> parse_bytes("80GiB"), parse_bytes("40GB")
    (85899345920, 40000000000)
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"`gpu_memory` must be a size such as 80GiB or 40GB, got {text!r}", param="gpu_memory")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of a model, by kind."""

    total: int
    expert: int  # routed-expert parameters of all layers
    per_expert: dict[int, int]  # decoder layer -> parameters of one routed expert
    num_experts: int
    layers: int
    largest_dense_layer: int  # parameters of the largest decoder layer less its routed experts
    hidden: int
    vocab: int
    top_k: int
    moe_intermediate: int


def model_sizes(config) -> ModelSizes:
    """Count a transformers config's parameters on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    moe = find_moe_layers(model)
    per_expert = {ly.layer_index: sum(p[0].numel() for n, p in ly.experts(model).named_parameters()
                                      if n in ly.expert_params) for ly in moe}
    expert = sum(per_expert[ly.layer_index] * ly.num_experts for ly in moe)
    experts_of = {ly.layer_index: per_expert[ly.layer_index] * ly.num_experts for ly in moe}
    decoder = model.model.layers
    dense_layers = [sum(p.numel() for p in layer.parameters()) - experts_of.get(i, 0)
                    for i, layer in enumerate(decoder)]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelSizes(
        total=sum(p.numel() for p in model.parameters()), expert=expert, per_expert=per_expert,
        num_experts=moe[0].num_experts, layers=len(decoder), largest_dense_layer=max(dense_layers),
        hidden=text.hidden_size, vocab=text.vocab_size, top_k=_first(text, "num_experts_per_tok", "top_k"),
        moe_intermediate=_first(text, "moe_intermediate_size", "intermediate_size"))


def _first(config, *names: str) -> int:
    return next(int(getattr(config, n)) for n in names if isinstance(getattr(config, n, None), int))


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank needs, by kind, for a layout (``nodes`` x ``gpus_per_node`` ranks, ``ep_size``)."""

    nodes: int
    gpus_per_node: int
    ep_size: int
    frozen_weights: int
    trained_rows: int
    adamw_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.frozen_weights + self.trained_rows + self.adamw_state + self.activations

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def rank_memory(sizes: ModelSizes, experts: ExpertConfig, *, nodes: int, gpus_per_node: int, ep_size: int,
                weight_bytes: int = 2, batch_tokens: int = 4096, activation_checkpointing: bool = False
                ) -> RankMemory:
    """Memory per rank of one layout; trained rows are counted on the expert-parallel rank that owns the most."""
    world = nodes * gpus_per_node
    block = sizes.num_experts // ep_size
    gathered = 2 * (sizes.largest_dense_layer + max(sizes.per_expert.values()) * block) if world > 1 else 0
    frozen = (sizes.total * weight_bytes) // world + gathered * weight_bytes
    owned = [0] * ep_size
    for layer, ids in experts.experts.items():
        for g in ids:
            owned[g // block] += sizes.per_expert.get(layer, 0)
    trained = max(owned)
    per_token_layer = 2 * (16 * sizes.hidden + 3 * sizes.top_k * sizes.moe_intermediate)
    saved_layers = 1 if activation_checkpointing else sizes.layers
    activations = batch_tokens * (per_token_layer * saved_layers + (2 * sizes.hidden * sizes.layers
                                  if activation_checkpointing else 0) + 4 * sizes.vocab)
    return RankMemory(nodes, gpus_per_node, ep_size, frozen, 4 * trained, 12 * trained, activations)


def ep_sizes(num_experts: int, world: int, gpus_per_node: int) -> list[int]:
    """``ep_size`` candidates of a layout, best first: the largest within one node (all-to-all stays on the node's
    links, replicas go across nodes), then larger ones across nodes (fewer trained rows per rank).

    >>> ep_sizes(64, 16, 8)
    [8, 16]
    """
    divisors = [d for d in range(1, world + 1) if num_experts % d == 0 and world % d == 0]
    in_node = max(d for d in divisors if d <= gpus_per_node)
    return [in_node] + [d for d in divisors if d > gpus_per_node]


def smallest_layout(sizes: ModelSizes, experts: ExpertConfig, *, gpus_per_node: int, gpu_memory: int,
                    max_nodes: int = 64, **options) -> tuple[RankMemory | None, list[RankMemory]]:
    """The fewest devices whose per-rank memory fits ``gpu_memory`` (None if none up to ``max_nodes`` nodes), and
    the best ``ep_size`` of every layout tried: 1, 2, 4, ... devices of one node, then whole nodes."""
    one_node = [g for g in (2**i for i in range(8)) if g < gpus_per_node]
    layouts = [(1, g) for g in one_node] + [(n, gpus_per_node) for n in range(1, max_nodes + 1)]
    tried = []
    for nodes, gpus in layouts:
        candidates = [rank_memory(sizes, experts, nodes=nodes, gpus_per_node=gpus, ep_size=ep, **options)
                      for ep in ep_sizes(sizes.num_experts, nodes * gpus, gpus)]
        fitting = [m for m in candidates if m.total <= HEADROOM * gpu_memory]
        tried.append(fitting[0] if fitting else min(candidates, key=lambda m: m.total))
        if fitting:
            return fitting[0], tried
    return None, tried


def uniform_selection(num_experts: int, layers: list[int], fraction: float) -> ExpertConfig:
    """``fraction`` of each layer's experts, spread evenly over the ids (for sizing before scoring).

    >>> uniform_selection(8, [1], 0.25).experts
    {1: [0, 4]}
    """
    n = max(1, math.ceil(num_experts * fraction))
    return ExpertConfig(experts={layer: sorted({round(i * num_experts / n) for i in range(n)}) for layer in layers})


def gib(n: int) -> str:
    return f"{n / 2**30:.1f}"
