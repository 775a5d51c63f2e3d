"""Typed, validated configuration for scoring, selection and training, with JSON round trips.

Every config checks all of its fields in ``__post_init__`` and raises one ``ConfigError`` listing
every problem, so a user fixes a bad spec in one pass instead of one error at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from esft.constants import DEFAULT_N_SAMPLE_TOKENS, DEFAULT_TOP_P
from esft.errors import ConfigError

ScoreFunction = Literal["token", "gate"]
Overflow = Literal["truncate", "reject"]
Scheduler = Literal["cosine", "constant", "linear"]


class _JSONConfig:
    """Mixin: ``to_dict`` / ``from_dict`` that reject unknown keys by name."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; valid fields are {sorted(names)}")
        return cls(**data)


def _positive(problems: list[str], name: str, value: float | int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        problems.append(f"{name} must be a positive number, got {value!r}")


@dataclass
class ScoringConfig(_JSONConfig):
    """How to sample task tokens and score experts (paper section 3.2)."""

    n_sample_tokens: int = field(
        default=DEFAULT_N_SAMPLE_TOKENS, metadata={"help": "stop after this many scored tokens (paper: 2^17)"}
    )
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    seq_len: int = field(default=4096, metadata={"help": "longer sequences are truncated from the end"})
    response_only: bool = field(
        default=True,
        metadata={"help": "score only assistant/completion tokens (default: docs/results.md found it selects "
                          "fewer experts that train to a lower loss); False scores every token as the paper"},
    )

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("n_sample_tokens", "batch_size", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if problems:
            raise ConfigError(problems)


@dataclass
class SelectionConfig(_JSONConfig):
    """Per-layer top-p selection of experts (paper section 3.3)."""

    score_function: ScoreFunction = "token"
    top_p: float | None = field(default=None, metadata={"help": "cumulative score per layer (0.2 token, 0.1 gate)"})
    max_experts_per_layer: int | None = field(default=None, metadata={"help": "optional cap per layer"})

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.score_function not in DEFAULT_TOP_P:
            problems.append(f"score_function must be 'token' or 'gate', got {self.score_function!r}")
        if self.top_p is None and self.score_function in DEFAULT_TOP_P:
            self.top_p = DEFAULT_TOP_P[self.score_function]
        if self.top_p is not None and (
            isinstance(self.top_p, bool) or not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1
        ):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.max_experts_per_layer is not None and (
            isinstance(self.max_experts_per_layer, bool)
            or not isinstance(self.max_experts_per_layer, int)
            or self.max_experts_per_layer < 1
        ):
            problems.append(f"max_experts_per_layer must be a positive integer, got {self.max_experts_per_layer!r}")
        if problems:
            raise ConfigError(problems, param="top_p" if any("top_p" in p for p in problems) else None)


@dataclass
class TrainingConfig(_JSONConfig):
    """Hyperparameters and run options of ``esft.train``."""

    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps; default from n_epochs"})
    n_epochs: int | None = field(default=None, metadata={"help": "used when max_steps is None (default 1)"})
    batch_size: int = 4
    grad_accum_steps: int = 1
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    lr_scheduler: Scheduler = "cosine"
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    seq_len: int = 2048
    overflow: Overflow = field(default="truncate", metadata={"help": "over-long samples: truncate the end or reject"})
    eval_every: int | None = field(default=None, metadata={"help": "validation loss every N steps (and at the end)"})
    validation_split: float = field(default=0.0, metadata={"help": "held-out fraction when no validation file"})
    save_every: int | None = field(default=None, metadata={"help": "checkpoint every N steps (and at the end)"})
    seed: int = 0
    train_shared_experts: bool = False
    train_non_expert_modules: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    deterministic: bool = field(default=False, metadata={"help": (
        "torch's deterministic algorithms and one CPU thread for the run: bit-identical reruns and resumes, "
        "slower on multi-core CPUs and GPUs")})

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.deterministic, bool):
            problems.append(f"deterministic must be true or false, got {self.deterministic!r}")
        _positive(problems, "max_steps", self.max_steps, allow_none=True)
        _positive(problems, "n_epochs", self.n_epochs, allow_none=True)
        for name in ("batch_size", "grad_accum_steps", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        _positive(problems, "learning_rate", self.learning_rate)
        _positive(problems, "max_grad_norm", self.max_grad_norm, allow_none=True)
        _positive(problems, "eval_every", self.eval_every, allow_none=True)
        _positive(problems, "save_every", self.save_every, allow_none=True)
        if not isinstance(self.weight_decay, int | float) or self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.warmup_ratio, int | float) or not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not isinstance(self.validation_split, int | float) or not 0 <= self.validation_split < 1:
            problems.append(f"validation_split must be in [0, 1), got {self.validation_split!r}")
        if self.lr_scheduler not in ("cosine", "constant", "linear"):
            problems.append(f"lr_scheduler must be cosine, constant or linear, got {self.lr_scheduler!r}")
        if self.overflow not in ("truncate", "reject"):
            problems.append(f"overflow must be 'truncate' or 'reject', got {self.overflow!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            problems.append(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if problems:
            raise ConfigError(problems)
