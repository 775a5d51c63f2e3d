"""Records the experts each token really chose, with their gate weights, via pre-hooks on experts modules.

Top-k over ``output_router_logits`` is not the real selection for group-limited or bias-corrected
routers (it matched 50% of DeepSeek-V2 group-limited choices). The experts module's inputs are: they
are the router's final ``top_k_index`` and ``top_k_weights``, after normalisation and scaling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from esft.models.discovery import MoELayer
from esft.parallel.data_parallel import all_reduce_sum, world


class RoutingAccumulator:
    """Per-layer sums of per-sequence token and gate scores (paper Eq. 5 and 6).

    For each sequence j with L_j counted tokens, the per-sequence scores of expert i are
    ``sum_k 1[i chosen at k] / K / L_j`` (token) and ``sum_k g_{i,k} / L_j`` (gate); the accumulator
    adds them up over sequences, so dividing by ``n_sequences`` gives the paper's averages.
    """

    def __init__(self, layers: list[MoELayer]):
        self.layers = layers
        self.token_sums = {layer.layer_index: torch.zeros(layer.num_experts, dtype=torch.float64) for layer in layers}
        self.gate_sums = {layer.layer_index: torch.zeros(layer.num_experts, dtype=torch.float64) for layer in layers}
        self.top_k: dict[int, int] = {}
        self.n_sequences = 0
        self.n_tokens = 0
        self._mask: torch.Tensor | None = None  # [B, T] bool: tokens that count in this batch

    def begin_batch(self, count_mask: torch.Tensor) -> None:
        """Set which tokens of the next forward pass count (padding and, optionally, prompts do not)."""
        self._mask = count_mask.bool()
        lengths = self._mask.sum(dim=1)
        self.n_sequences += int((lengths > 0).sum())
        self.n_tokens += int(lengths.sum())

    def record(self, layer: MoELayer, expert_ids: torch.Tensor, gate_weights: torch.Tensor) -> None:
        """Add one layer's routing for the current batch.

        Args:
            expert_ids: ``[B*T, K]`` chosen expert ids, batch-major rows (ids >= E mean "none").
            gate_weights: ``[B*T, K]`` gate values of those choices.
        """
        if self._mask is None:
            raise RuntimeError("RoutingAccumulator.begin_batch must be called before each forward pass")
        device = expert_ids.device  # sum on the model's device; only the [E] totals come back to the host
        mask = self._mask.to(device)
        batch, seq = mask.shape
        if expert_ids.shape[0] != batch * seq:
            raise RuntimeError(
                f"layer {layer.layer_index}: experts saw {expert_ids.shape[0]} rows for a {batch}x{seq} batch; "
                "this family reorders or drops tokens before its experts, which scoring does not support"
            )
        top_k = expert_ids.shape[-1]
        self.top_k[layer.layer_index] = top_k
        num_experts = layer.num_experts
        ids = expert_ids.reshape(batch, seq, top_k).long()  # [B, T, K]
        weights = gate_weights.reshape(batch, seq, top_k).double()  # [B, T, K]
        lengths = mask.sum(dim=1).clamp(min=1).double()  # [B]
        valid = mask.unsqueeze(-1) & (ids < num_experts) & (ids >= 0)  # [B, T, K]
        # Each counted token adds 1/K to every expert it chose, scaled by 1/L_j of its sequence.
        per_choice = valid.double() / lengths.view(batch, 1, 1)  # [B, T, K]
        flat_ids = ids.clamp(0, num_experts - 1).reshape(-1)
        zeros = torch.zeros(num_experts, dtype=torch.float64, device=device)
        self.token_sums[layer.layer_index] += zeros.index_add(0, flat_ids, (per_choice / top_k).reshape(-1)).cpu()
        self.gate_sums[layer.layer_index] += zeros.index_add(0, flat_ids, (per_choice * weights).reshape(-1)).cpu()


    def reduce_over_ranks(self) -> None:
        """Sum every rank's sums and counts (data sharded over ranks); float64 sums, so the scores equal one
        process's to rounding (~1e-16)."""
        rank, size = world()
        if size == 1:
            return
        for sums in (self.token_sums, self.gate_sums):
            for tensor in sums.values():
                dist.all_reduce(tensor)
        self.n_sequences, self.n_tokens = (int(v) for v in all_reduce_sum(self.n_sequences, self.n_tokens))


def _routing_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    index = args[1] if len(args) > 1 else kwargs.get("top_k_index", kwargs.get("router_indices"))
    weights = args[2] if len(args) > 2 else kwargs.get("top_k_weights", kwargs.get("routing_weights"))
    if index is None or weights is None:
        raise RuntimeError("experts module was called without (hidden, top_k_index, top_k_weights)")
    return index, weights


@contextmanager
def capture_routing(model: nn.Module, accumulator: RoutingAccumulator) -> Iterator[RoutingAccumulator]:
    """Hook every experts module of ``model`` so each forward pass feeds ``accumulator``."""
    handles = []
    for layer in accumulator.layers:

        def hook(module: nn.Module, args: tuple, kwargs: dict, layer: MoELayer = layer) -> None:
            index, weights = _routing_args(args, kwargs)
            accumulator.record(layer, index.detach(), weights.detach())

        handles.append(layer.experts(model).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield accumulator
    finally:
        for handle in handles:
            handle.remove()
