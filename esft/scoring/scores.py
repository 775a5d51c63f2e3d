"""Expert scores per MoE layer (token and gate, raw and normalised) and the scoring pass that makes them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esft.config import ScoringConfig
from esft.constants import IGNORE_INDEX, SCORES_SCHEMA
from esft.data.batching import collate
from esft.data.tokenize import TokenizedExample
from esft.errors import ConfigError, DataFormatError
from esft.io import write_json_atomic
from esft.models.discovery import find_moe_layers
from esft.parallel.data_parallel import world
from esft.scoring.capture import RoutingAccumulator, capture_routing
from esft.training.progress import ProgressEvent


@dataclass
class LayerScores:
    """Scores of one MoE layer; lists are indexed by expert id."""

    token: list[float]  # share of the layer's top-K choices; sums to 1
    gate: list[float]  # gate mass normalised within the layer; sums to 1
    gate_raw: list[float]  # mean gate value per token (paper Eq. 6)
    top_k: int

    def get(self, score_function: str) -> list[float]:
        if score_function not in ("token", "gate"):
            raise ConfigError(f"score_function must be 'token' or 'gate', got {score_function!r}")
        return self.token if score_function == "token" else self.gate


@dataclass
class ExpertScores:
    """Per-layer expert scores of one task sample, with what produced them."""

    layers: dict[int, LayerScores]
    n_tokens: int
    n_sequences: int
    base_model: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCORES_SCHEMA,
            "base_model": self.base_model,
            "config": self.config,
            "n_tokens": self.n_tokens,
            "n_sequences": self.n_sequences,
            "layers": {
                str(i): {"token": s.token, "gate": s.gate, "gate_raw": s.gate_raw, "top_k": s.top_k}
                for i, s in sorted(self.layers.items())
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertScores:
        if "layers" not in data:
            raise ConfigError("scores file has no 'layers'; pass a file written by `esft score`", param="scores")
        layers = {int(k): LayerScores(**v) for k, v in data["layers"].items()}
        return cls(layers, data.get("n_tokens", 0), data.get("n_sequences", 0), data.get("base_model", {}),
                   data.get("config", {}))

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ExpertScores:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _normalise(values: torch.Tensor) -> list[float]:
    total = float(values.sum())
    return (values / total).tolist() if total > 0 else [0.0] * values.numel()


def _finish(acc: RoutingAccumulator) -> dict[int, LayerScores]:
    n = max(acc.n_sequences, 1)
    out = {}
    for layer in acc.layers:
        i = layer.layer_index
        token = acc.token_sums[i] / n
        gate_raw = acc.gate_sums[i] / n
        out[i] = LayerScores(_normalise(token), _normalise(gate_raw), gate_raw.tolist(), acc.top_k.get(i, 0))
    return out


def _take_budget(examples: Sequence[TokenizedExample], config: ScoringConfig) -> list[TokenizedExample]:
    """Examples in file order until ``n_sample_tokens`` counted tokens (the crossing one included)."""
    taken, counted = [], 0
    for ex in examples:
        ex_count = sum(1 for y in ex.labels if y != IGNORE_INDEX) if config.response_only else len(ex.input_ids)
        if ex_count == 0:
            continue
        taken.append(ex)
        counted += ex_count
        if counted >= config.n_sample_tokens:
            break
    return taken


@torch.no_grad()  # not inference_mode: FSDP2 (expert parallelism) tracks versions of its gathered weights
def score_experts(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    config: ScoringConfig,
    *,
    pad_token_id: int,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> ExpertScores:
    """Score every routed expert of every MoE layer on a task sample (one forward pass per batch).

    Args:
        model: a transformers causal LM with fused MoE experts.
        examples: tokenized task data; ``labels`` mark response tokens for ``response_only``.
        config: token budget, batch size and whether only response tokens count.
        pad_token_id: id used to pad batches (padding never counts).
        progress: optional callback receiving ``phase="scoring"`` events.

    Returns:
        ``ExpertScores`` with token and gate scores normalised within each layer.
    """
    layers = find_moe_layers(model)
    sample = _take_budget(examples, config)
    if not sample:
        raise DataFormatError("no tokens to score (empty data, or no response tokens with response_only)",
                              code="empty_file", param="data")
    order = sorted(range(len(sample)), key=lambda i: len(sample[i].input_ids))  # less padding
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    acc = RoutingAccumulator(layers)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    mine = rank_batches(batches)
    with capture_routing(model, acc):
        for step, idx in enumerate(mine, 1):
            batch = collate([sample[i] for i in (idx or batches[0])], pad_token_id)
            count = batch["labels"] != IGNORE_INDEX if config.response_only else batch["attention_mask"].bool()
            acc.begin_batch(count if idx else torch.zeros_like(count))  # a filler batch counts nothing
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                  use_cache=False)
            if progress:
                elapsed = time.perf_counter() - start
                progress(ProgressEvent(phase="scoring", step=step, total_steps=len(mine),
                                       tokens_per_s=acc.n_tokens / max(elapsed, 1e-9),
                                       eta_s=elapsed / step * (len(mine) - step)))
    model.train(was_training)
    acc.reduce_over_ranks()
    return ExpertScores(_finish(acc), acc.n_tokens, acc.n_sequences, config=config.to_dict())


def rank_batches(batches: list[list[int]]) -> list[list[int]]:
    """This rank's share of the scoring batches, padded with empty fillers so every rank runs as many
    forward passes (an expert-parallel model exchanges tokens in every one)."""
    rank, size = world()
    if size == 1:
        return batches
    mine = batches[rank::size]
    return mine + [[]] * (-(-len(batches) // size) - len(mine))
