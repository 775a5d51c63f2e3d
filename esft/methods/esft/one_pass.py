"""One pass through the experts: trained rows live in the fused tensor, gradients only for their token groups.

``SplitExperts`` runs each selected layer twice (frozen experts, then a trainable twin) and pays a second
dispatch (sort, gather, ``index_add``) plus a cast of the fp32 twin every forward. Here the experts module
keeps its fused tensors and one dispatch over all routed tokens, through an experts kernel registered with
transformers' ``ExpertsInterface`` (``esft_grouped_mm``). Its grouped linear has a custom backward: input
gradients for every token (the backward must reach earlier layers), weight gradients only for the selected
experts' token groups (a grouped matrix product over those groups), landing on fp32 master rows. The fused
rows are refreshed from the masters whenever the masters changed (after an optimizer step, after a resume
loads them), and a copy of the original rows is kept so ``restore`` is bit-exact.

Numerics: the forward sees the trained rows in the model's dtype (for a bf16 model, rounded to bf16), not the
fp32 twin ``SplitExperts`` computes with; gradients still land on fp32 masters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.moe import (
    ALL_EXPERTS_FUNCTIONS,
    _grouped_mm,
    grouped_mm_experts_forward,
)

ONE_PASS_KERNEL = "esft_grouped_mm"
_ROW_ALIGN = 8  # grouped_mm needs groups of 16-byte multiples along the token dimension of dW products


def one_pass_reason(experts: nn.Module, expert_params: tuple[str, ...]) -> str | None:
    """Why the one-pass kernel cannot train this experts module (its layer keeps the two-module split)."""
    if not hasattr(F, "grouped_mm"):
        return "this torch has no torch.nn.functional.grouped_mm"
    checks = {
        "parameters other than gate_up_proj and down_proj": set(expert_params) != {"gate_up_proj", "down_proj"},
        "biases": experts.has_bias,
        "transposed weights": experts.is_transposed,
        "no gate projection": not experts.has_gate,
        "a post-expert norm": getattr(experts, "has_post_expert_norm", False),
    }
    found = [reason for reason, present in checks.items() if present]
    return f"its experts have {', '.join(found)}" if found else None


@dataclass
class TrainedRows:
    """The ESFT state of one experts module: which rows train, their fp32 masters and the original rows."""

    selected: torch.Tensor  # [n] expert ids, ascending
    masters: dict[str, nn.Parameter]  # fused-parameter name -> [n, ...] master rows
    original: dict[str, torch.Tensor]  # fused-parameter name -> [n, ...] rows before training (model dtype)
    config: object  # the experts module's config before the kernel was switched
    versions: dict[str, int] = field(default_factory=dict)

    @torch.no_grad()
    def refresh(self, experts: nn.Module) -> None:
        """Copy masters into the fused rows if an optimizer step or a checkpoint load changed them."""
        for name, master in self.masters.items():
            if self.versions.get(name) != master._version:
                fused = getattr(experts, name)
                fused.index_copy_(0, self.selected, master.detach().to(fused.dtype))
                self.versions[name] = master._version


def attach(experts: nn.Module, selected: list[int], expert_params: tuple[str, ...], master_dtype) -> TrainedRows:
    """Make ``experts`` train rows ``selected`` through the one-pass kernel (in place; see ``detach``)."""
    ids = torch.tensor(sorted(selected), dtype=torch.long, device=getattr(experts, expert_params[0]).device)
    masters, original = {}, {}
    for name in expert_params:
        rows = getattr(experts, name).detach().index_select(0, ids)
        original[name] = rows.clone()
        masters[name] = nn.Parameter(rows.to(master_dtype).clone(), requires_grad=True)
    state = TrainedRows(ids, masters, original, experts.config)
    state.versions = {name: master._version for name, master in masters.items()}
    experts.config = copy.copy(experts.config)  # only this layer switches kernel
    experts.config._experts_implementation = ONE_PASS_KERNEL
    experts._esft_rows = state
    return state


def detach(experts: nn.Module, *, keep_trained: bool = True) -> nn.Module:
    """Back to a plain experts module: trained rows written in (or the originals, with ``keep_trained=False``)."""
    state: TrainedRows = experts.__dict__.pop("_esft_rows")
    with torch.no_grad():
        for name, master in state.masters.items():
            rows = master.detach() if keep_trained else state.original[name]
            getattr(experts, name).index_copy_(0, state.selected, rows.to(getattr(experts, name).dtype))
    experts.config = state.config
    return experts


class _SelectedRowsLinear(torch.autograd.Function):
    """``y = x @ W[e].T`` per token group; backward: dx for all groups, dW only for the selected experts.

    ``x`` is ``[S, in]`` sorted by expert, ``weight`` the frozen fused ``[E, out, in]``, ``offsets`` the
    ``[E]`` cumulative group ends, ``master`` the ``[n, out, in]`` fp32 rows of the ``selected`` experts
    (an input only so that their gradient has somewhere to go).
    """

    @staticmethod
    def forward(ctx, x, weight, offsets, master, selected):
        ctx.save_for_backward(x, weight, offsets, selected)
        ctx.master_dtype = master.dtype
        return _grouped_mm(x, weight.transpose(-2, -1), offs=offsets)  # [S, out]

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, offsets, selected = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = _grouped_mm(grad_out, weight, offs=offsets) if ctx.needs_input_grad[0] else None  # [S, in]
        starts = torch.cat([offsets.new_zeros(1), offsets[:-1]])[selected].long()  # [n] first row of each group
        lengths = offsets[selected].long() - starts  # [n] tokens of each selected expert
        # Each group padded to a multiple of _ROW_ALIGN rows (grouped_mm wants 16-byte group strides); padding
        # rows point at an appended zero row, so they add nothing to the weight gradient.
        padded = (lengths + _ROW_ALIGN - 1) // _ROW_ALIGN * _ROW_ALIGN
        total = int(padded.sum())  # the one host sync of this backward
        group = torch.repeat_interleave(torch.arange(len(selected), device=x.device), padded, output_size=total)
        within = torch.arange(total, device=x.device) - (torch.cumsum(padded, 0) - padded)[group]
        rows = torch.where(within < lengths[group], starts[group] + within, x.shape[0])  # [total]
        x_sel = torch.cat([x, x.new_zeros(1, x.shape[1])])[rows].to(grad_out.dtype)  # [total, in]
        g_sel = torch.cat([grad_out, grad_out.new_zeros(1, grad_out.shape[1])])[rows]  # [total, out]
        group_ends = torch.cumsum(padded, dim=0).to(torch.int32)
        grad_master = F.grouped_mm(g_sel.t().contiguous(), x_sel, offs=group_ends)  # [n, out, in]
        return grad_x, None, None, grad_master.to(ctx.master_dtype), None


def one_pass_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """The ``esft_grouped_mm`` experts kernel: one grouped dispatch over every routed token."""
    state: TrainedRows | None = self.__dict__.get("_esft_rows")
    if state is None:
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    state.refresh(self)
    n_tokens, top_k = top_k_index.shape
    expert_ids, order = torch.sort(top_k_index.reshape(-1))  # [S] ascending, S = n_tokens * top_k
    x = hidden_states[order // top_k]  # [S, H] in expert order
    counts = torch.bincount(expert_ids, minlength=self.num_experts)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)  # [E] group ends
    gate_up = _SelectedRowsLinear.apply(x, self.gate_up_proj, offsets, state.masters["gate_up_proj"], state.selected)
    out = _SelectedRowsLinear.apply(
        self._apply_gate(gate_up), self.down_proj, offsets, state.masters["down_proj"], state.selected
    )  # [S, H]
    out = out * top_k_weights.reshape(-1)[order].unsqueeze(-1).to(out.dtype)
    unsorted = torch.empty_like(out).index_copy_(0, order, out)  # back to token-major order
    return unsorted.view(n_tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)  # [T, H]


ALL_EXPERTS_FUNCTIONS.register(ONE_PASS_KERNEL, one_pass_experts_forward)
