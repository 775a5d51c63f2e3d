"""Per-family facts: the MoE families ESFT cannot train, with the reason, and family-specific quirks.

Support is generic: any model whose experts class transformers decorates with
``use_experts_implementation`` is found by ``esft.models.discovery`` without a family entry. This module
is the one extension point for the exceptions. Adding a family means one entry here (if it needs one)
and one row in the tests' family matrix (``esft.models.toy.TOY_FAMILIES``).
"""

from __future__ import annotations

UNSUPPORTED_FAMILIES: dict[str, str] = {
    "dbrx": "its experts compute densely over all experts in one module without the fused-experts "
    "interface, so selected experts cannot be split out for training",
    "llama4": "its experts run densely over every expert (no top-k dispatch to a fused-experts kernel)",
    "jetmoe": "its experts are mixture-of-attention and MLP modules without the fused-experts interface",
    "longcat_flash": "its router mixes in zero/identity experts outside the fused-experts module",
    "doge": "its 'experts' are embedding rows (product-key retrieval), not feed-forward experts; ESFT does not apply",
    "step3p7": "its experts are not decorated with transformers' fused-experts interface (vision-language model)",
    "switch_transformers": "encoder-decoder model with per-expert modules; not a causal-LM MoE",
    "nllb_moe": "encoder-decoder model with per-expert modules; not a causal-LM MoE",
}

# Child-module names (of the MoE block) that hold shared experts or their gates.
SHARED_EXPERT_MARKERS: tuple[str, ...] = ("shared",)

# Child-module names of the MoE block that hold the router.
ROUTER_NAMES: tuple[str, ...] = ("gate", "router")

# Experts kernels that honour the expert-parallel sentinel for every family; eager does not for
# gpt_oss and nemotron_h, so split (trainable) experts always run one of these.
SENTINEL_SAFE_KERNELS: tuple[str, ...] = ("grouped_mm", "batched_mm")


def unsupported_reason(model_type: str | None) -> str | None:
    """Why a family cannot be trained with ESFT, or None if nothing is known against it."""
    return UNSUPPORTED_FAMILIES.get(model_type or "")
