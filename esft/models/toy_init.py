"""Initialisation fixes that make tiny random MoE models behave like trained ones in tests and demos."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def confident_head(model: PreTrainedModel) -> None:
    """Give the untied LM head unit-scale logits (std ``hidden**-0.5`` instead of 0.02).

    With the default init a tiny random model's logits span a few hundredths, so its output is nearly
    uniform whatever its experts do: training only experts could then fix the argmax but never the loss.
    Real checkpoints have confident heads; this makes toy runs behave like them.
    """
    head = model.get_output_embeddings()
    if head is None or head.weight is model.get_input_embeddings().weight:
        return
    with torch.no_grad():
        head.weight.normal_(0.0, head.weight.shape[1] ** -0.5)


def spread_zero_routers(model: torch.nn.Module, std: float) -> None:
    """Re-draw all-zero router weights ``[num_experts, hidden]`` (e.g. afmoe zero-initialises its router)."""
    experts = [m for m in model.modules() if hasattr(m, "num_experts") and hasattr(m, "is_transposed")]
    expert_counts = {m.num_experts for m in experts}
    expert_params = {id(p) for m in experts for p in m.parameters()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_router = ("gate" in name or "router" in name) and name.endswith("weight") and param.ndim == 2
            is_router = is_router and param.shape[0] in expert_counts and id(param) not in expert_params
            if is_router and not param.any():
                param.normal_(0.0, std)
