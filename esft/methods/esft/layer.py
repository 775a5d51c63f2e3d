"""SplitExperts: a fused experts module split into its frozen experts and a trainable twin of the selected ones.

transformers stores a layer's experts fused, e.g. ``gate_up_proj[E, 2I, H]``. Masking gradients of the
unselected rows would still compute and store full ``[E, ...]`` gradients and AdamW state, and with
weight decay AdamW would move the "frozen" rows. Instead each selected layer's experts module becomes a
``SplitExperts``: the original module, frozen, serves the unselected experts, and a twin of the same
class holds only the selected rows (in fp32 master precision). Tokens are routed between the two with
the expert-parallel sentinel transformers already supports (an id equal to ``num_experts`` is skipped).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call


class SplitExperts(nn.Module):
    """A fused experts module split into frozen ``base`` experts and trainable ``trainable`` rows.

    ``forward`` has the experts signature ``(hidden[T, H], top_k_index[T, K], top_k_weights[T, K])``.
    """

    def __init__(self, base: nn.Module, selected: list[int], expert_params: tuple[str, ...], master_dtype):
        super().__init__()
        num_experts = int(base.num_experts)
        device = next(base.parameters()).device  # the model is usually on its device before it is split
        ids = torch.tensor(sorted(selected), dtype=torch.long, device=device)
        # global expert id (or the sentinel E) -> row of the twin, or the twin's sentinel len(selected)
        local_of = torch.full((num_experts + 1,), len(ids), dtype=torch.long, device=device)
        local_of[ids] = torch.arange(len(ids), device=device)
        self.register_buffer("selected", ids, persistent=False)
        self.register_buffer("local_of", local_of, persistent=False)
        self.base = base
        self.base._is_expert_parallel = True
        self.trainable = _twin(base, ids, expert_params, master_dtype)
        self.expert_params = expert_params

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        num_experts = self.base.num_experts
        local = self.local_of[top_k_index.clamp(0, num_experts)]  # [T, K] twin rows or twin sentinel
        mine = local < len(self.selected)  # [T, K] choices that go to a trained expert
        base_index = torch.where(mine, torch.full_like(top_k_index, num_experts), top_k_index)
        frozen_out = self.base(hidden_states, base_index, top_k_weights)  # [T, H]
        rows = mine.any(dim=-1).nonzero().squeeze(-1)  # tokens that use a trained expert
        if rows.numel() == 0:
            # Keep the twin in the graph so its gradient is zero rather than None: AdamW then treats
            # every step alike (weight decay, moment decay) whatever the routing of this batch.
            return frozen_out + sum(p.sum() for p in self._weights(hidden_states.dtype).values()) * 0
        trained_out = functional_call(
            self.trainable, self._weights(hidden_states.dtype), (hidden_states[rows], local[rows], top_k_weights[rows])
        )  # [rows, H]: only tokens routed to trained experts reach the twin
        return frozen_out.index_add(0, rows, trained_out.to(frozen_out.dtype))

    def _weights(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The twin's rows in the compute dtype (a cast inside autograd, so grads reach the fp32 masters)."""
        return {n: getattr(self.trainable, n).to(dtype) for n in self.expert_params}

    @torch.no_grad()
    def merged_rows(self, name: str) -> torch.Tensor:
        """The trained rows of parameter ``name`` in the base model's dtype, ``[n_selected, ...]``."""
        return getattr(self.trainable, name).detach().to(getattr(self.base, name).dtype)

    @torch.no_grad()
    def fold(self) -> nn.Module:
        """Copy the trained rows into the fused base tensors and return the plain experts module."""
        for name in self.expert_params:
            getattr(self.base, name).index_copy_(0, self.selected, self.merged_rows(name))
        self.base._is_expert_parallel = False
        return self.base


def _twin(base: nn.Module, ids: torch.Tensor, expert_params: tuple[str, ...], master_dtype) -> nn.Module:
    """A shallow copy of ``base`` owning only rows ``ids`` of its per-expert parameters."""
    twin = copy.copy(base)  # same class and attributes; parameter dicts replaced below
    twin._parameters = {}
    twin._buffers = dict(base._buffers)
    twin._modules = dict(base._modules)
    for name, param in base._parameters.items():
        if name in expert_params:
            rows = param.detach().index_select(0, ids.to(param.device)).to(master_dtype).clone()
            twin._parameters[name] = nn.Parameter(rows, requires_grad=True)
        else:
            twin._parameters[name] = param
    twin.num_experts = len(ids)
    twin._is_expert_parallel = True
    return twin
