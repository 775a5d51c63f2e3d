"""Progress events shared by the CLI progress bar and the service's job events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Phase = Literal["scoring", "training", "evaluating"]


@dataclass
class ProgressEvent:
    """One progress report. Optional fields are None when they do not apply to the phase."""

    phase: Phase
    step: int
    total_steps: int
    loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    trained_tokens: int | None = None
    grad_norm: float | None = None
    checkpoint: str | None = None  # path of a checkpoint written at this step

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


ProgressCallback = Callable[[ProgressEvent], None]
StopCallback = Callable[[], bool]
