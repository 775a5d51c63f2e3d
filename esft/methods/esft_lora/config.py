"""The ESFT-LoRA method's config: the rank and scale of the low-rank deltas, and the experts they apply to."""

from __future__ import annotations

from dataclasses import dataclass, field

from esft.errors import ConfigError
from esft.expert_config import ExpertConfig
from esft.options import check_declared, option

_METHOD = {"section": "method", "expose": ("api", "worker")}


@dataclass
class ESFTLoRAConfig:
    """Low-rank deltas ``B @ A * alpha / rank`` on each expert row the ``expert_config`` selects.

    ``rank`` and ``alpha`` are options (the job schema's ``method.esft_lora`` fields derive from them);
    ``expert_config`` comes from scoring and selection, as for ESFT.

    >>> ESFTLoRAConfig(rank=2).scale
    8.0
    """

    rank: int = option(4, "rank of each selected expert's low-rank delta", ge=1, **_METHOD)
    alpha: int = option(16, "scale numerator of the deltas (the update is scaled by alpha / rank)", ge=1, **_METHOD)
    expert_config: ExpertConfig | None = field(default=None, metadata={"help": "the experts that train"})

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __post_init__(self) -> None:
        problems, first = check_declared(self)
        if problems:
            raise ConfigError(problems, param=first)
