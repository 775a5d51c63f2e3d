"""LowRankExperts: the ESFT split, where the selected rows stay frozen and train through low-rank deltas.

The split (``esft.methods.esft.layer.SplitExperts``) already routes only the tokens of the selected experts
through a twin holding their rows. ESFT-LoRA keeps that routing and freezes the twin's rows; each selected
expert's weight matrix ``W[d_out, d_in]`` becomes ``W + (alpha / r) * B @ A`` with ``A[r, d_in]`` and
``B[d_out, r]`` the only trainable tensors. ``B`` starts at zero, so the prepared model computes exactly the base.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from esft.methods.esft.layer import SplitExperts


class LowRankExperts(SplitExperts):
    """A split experts module whose selected rows are ``frozen rows + scale * B @ A`` (one A, B per expert).

    Only the per-expert matrices (3-D fused parameters) get factors; per-expert vectors (biases) stay frozen.
    """

    def __init__(self, base: nn.Module, selected: list[int], expert_params: tuple[str, ...], rank: int,
                 scale: float, master_dtype=torch.float32):
        super().__init__(base, selected, expert_params, master_dtype)
        self.scale = scale
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in expert_params:
            rows = getattr(self.trainable, name)
            rows.requires_grad_(False)
            if rows.dim() != 3:
                continue
            n, d_out, d_in = rows.shape
            a = torch.empty(n, rank, d_in, dtype=master_dtype, device=rows.device)
            for i in range(n):  # peft's LoRA initialisation of A, per expert
                nn.init.kaiming_uniform_(a[i], a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a)
            self.lora_B[name] = nn.Parameter(torch.zeros(n, d_out, rank, dtype=master_dtype, device=rows.device))

    def delta(self, name: str) -> torch.Tensor | None:
        """``scale * B @ A`` for every selected expert of parameter ``name`` (None: no factors)."""
        if name not in self.lora_A:
            return None
        return self.scale * torch.bmm(self.lora_B[name], self.lora_A[name])

    def _weights(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        weights = {}
        for name in self.expert_params:
            rows, delta = getattr(self.trainable, name), self.delta(name)
            weights[name] = (rows if delta is None else rows + delta).to(dtype)
        return weights

    @torch.no_grad()
    def merged_rows(self, name: str) -> torch.Tensor:
        rows, delta = getattr(self.trainable, name), self.delta(name)
        return (rows if delta is None else rows + delta).to(getattr(self.base, name).dtype)
