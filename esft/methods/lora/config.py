"""The LoRA method's config: rank, scale and explicit targets, handed to peft's public ``LoraConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field

from esft.errors import ConfigError
from esft.options import option

_METHOD = {"section": "method", "expose": ("api", "worker")}


@dataclass
class LoRAConfig:
    """LoRA on attention (or other ``nn.Linear``) modules, and optionally on fused expert parameters.

    transformers stores routed experts as fused 3-D parameters (``gate_up_proj[E, 2I, H]``), not
    ``nn.Linear`` modules, so peft reaches them only through ``target_parameters`` (one LoRA per expert,
    on every expert of the parameter). Dense and shared-expert MLPs are not targeted by default: peft 0.21
    rewrites targets named ``gate_proj``/``up_proj``/``down_proj`` in MoE models onto the fused experts.

    >>> LoRAConfig(rank=4).alpha
    16
    """

    rank: int = option(8, "LoRA rank r", ge=1, **_METHOD)
    alpha: int = option(16, "LoRA scale numerator (the update is scaled by alpha / r)", ge=1, **_METHOD)
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "nn.Linear module names to adapt; default: every attention projection"})
    target_parameters: list[str] | None = field(
        default=None, metadata={"help": "fused expert parameters to adapt, e.g. ['mlp.experts.down_proj']"})

    def __post_init__(self) -> None:
        problems = []
        for name in ("rank", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("target_modules", "target_parameters"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                problems.append(f"{name} must be a list of names, got {value!r}")
        if problems:
            raise ConfigError(problems, param="lora")
