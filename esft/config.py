"""Scoring, selection and training options: declared once, validated at construction, JSON round trips.

Every field is an ``esft.options.option`` declaration (help, static bounds, where it is exposed); the CLI
flags, the service's job schema and the worker's resolution are derived from them. Each config checks all
of its fields in ``__post_init__`` and raises one ``ConfigError`` listing every problem, so a user fixes a bad
spec in one pass. ``resolve_auto`` turns the service's ``"auto"`` values into concrete ones from the data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from esft.constants import DEFAULT_N_SAMPLE_TOKENS, DEFAULT_TOP_P
from esft.errors import ConfigError
from esft.options import Option, check_declared, declared_options, option

ScoreFunction = Literal["token", "gate"]
Overflow = Literal["truncate", "reject"]
Scheduler = Literal["cosine", "constant", "linear"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

DEFAULT_LEARNING_RATE = 1e-5  # the ESFT paper's learning rate
MAX_LEARNING_RATE_MULTIPLIER = 1e5  # keeps DEFAULT_LEARNING_RATE * multiplier within learning_rate's (0, 1]
_CLI_WORKER = ("cli", "worker")


class _JSONConfig:
    """Mixin: ``to_dict`` / ``from_dict`` that reject unknown keys by name, and declared-option checks."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; valid fields are {sorted(names)}",
                              param=unknown[0])
        return cls(**data)

    def _check(self, extra: list[tuple[str, str]] = ()) -> None:
        """Raise one ``ConfigError`` for the declared-bound problems plus ``extra`` ``(field, problem)`` pairs."""
        problems, first = check_declared(self)
        problems += [problem for _, problem in extra]
        if problems:
            raise ConfigError(problems, param=first or extra[0][0])


@dataclass
class ScoringConfig(_JSONConfig):
    """How to sample task tokens and score experts (paper section 3.2)."""

    n_sample_tokens: int = option(
        DEFAULT_N_SAMPLE_TOKENS, "stop after this many scored tokens (paper: 2^17)", ge=1, section="method",
        auto=f"{DEFAULT_N_SAMPLE_TOKENS} (the paper's 2^17)",
    )
    batch_size: int = option(8, "sequences per scoring forward pass", ge=1, expose=_CLI_WORKER)
    seq_len: int = option(4096, "longer sequences are truncated from the end", ge=1, expose=_CLI_WORKER)
    response_only: bool = option(
        True, "score only assistant/completion tokens (docs/results.md: fewer experts, lower loss); "
        "false scores every token as the paper does", section="method", flag="--response-only/--all-tokens",
    )

    def __post_init__(self) -> None:
        self._check()


@dataclass
class SelectionConfig(_JSONConfig):
    """Per-layer top-p selection of experts (paper section 3.3)."""

    score_function: ScoreFunction = option("token", "token or gate score (paper section 3.2)", section="method")
    top_p: float | None = option(
        None, "cumulative score per layer to reach (default 0.2 token, 0.1 gate)", gt=0, le=1, section="method",
        auto="0.2 for token, 0.1 for gate (the paper's)",
    )
    max_experts_per_layer: int | None = option(None, "optional cap on experts per layer", ge=1, section="method")

    def __post_init__(self) -> None:
        if self.top_p is None and self.score_function in DEFAULT_TOP_P:
            self.top_p = DEFAULT_TOP_P[self.score_function]
        self._check()


@dataclass
class TrainingConfig(_JSONConfig):
    """Hyperparameters and run options of ``esft.train``."""

    max_steps: int | None = option(None, "optimizer steps; overrides n_epochs when set", ge=1)
    n_epochs: int | None = option(
        None, "passes over the data when max_steps is not set (default 1)", ge=1,
        auto="aim for 3 epochs: more for tiny datasets (~100 example passes), fewer for huge ones; 1..25",
    )
    batch_size: int = option(4, "sequences per micro-batch", ge=1, auto="min(8, number of examples)")
    grad_accum_steps: int = option(1, "micro-batches per optimizer step", ge=1)
    learning_rate_multiplier: float | None = option(
        None, f"OpenAI's multiplier of the default learning rate ({DEFAULT_LEARNING_RATE:g}); the service resolves "
        "it into learning_rate (give one of the two)", gt=0, le=MAX_LEARNING_RATE_MULTIPLIER, expose=("api",),
        auto="1, or learning_rate / the default when learning_rate is given",
    )
    learning_rate: float = option(
        DEFAULT_LEARNING_RATE, "peak learning rate", gt=0, le=1, flag="--lr",
        auto="1e-5 (the ESFT paper's value) times learning_rate_multiplier",
    )
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0)
    lr_scheduler: Scheduler = option("cosine", "learning-rate schedule after warmup")
    warmup_ratio: float = option(0.0, "fraction of steps with linear warmup", ge=0, lt=1)
    max_grad_norm: float | None = option(1.0, "clip the gradient norm to this (none: no clipping)", gt=0)
    seq_len: int = option(2048, "maximum tokens per sample", ge=1, auto="the longest example plus slack, "
                          "rounded up to 64, capped by the model's context and 4096")
    overflow: Overflow = option("truncate", "over-long samples: truncate the end or reject them")
    eval_every: int | None = option(None, "validation loss every N steps (and at the end)", ge=1)
    validation_split: float = option(0.0, "held-out fraction of the training data when there is no "
                                     "validation file", ge=0, lt=1)
    save_every: int | None = option(None, "checkpoint every N steps (and at the end)", ge=1,
                                    auto="about 10 checkpoints per run")
    seed: int = option(0, "seed for data order and initial RNG", ge=0, lt=2**32, section="job")
    train_shared_experts: bool = option(False, "also train the shared experts (a paper variant)",
                                        section="method")
    train_non_expert_modules: bool = option(False, "also train attention, norms, embeddings... (a paper variant)",
                                            section="method")
    dtype: DType = option("auto", "weights dtype to load the model in", expose=("cli",))
    packing: bool = option(
        True, "pack each micro-batch into one row without padding where that is exact for the model family "
        "(esft.models.families.PACKING_EXACT); other families pad", flag="--packing/--no-packing"
    )
    activation_checkpointing: bool = option(
        False, "recompute each decoder layer's activations in the backward pass: less activation memory, "
        "about one more forward pass of compute"
    )
    deterministic: bool = option(
        False, "torch's deterministic algorithms on one CPU thread: runs and resumes bit-identical, slower"
    )

    def __post_init__(self) -> None:
        self._check()

    def total_steps(self, n_train_examples: int) -> int:
        """Optimizer steps of the run: ``max_steps``, or ``n_epochs`` (default 1) over the training examples.

        ``n_train_examples`` counts what trains, after any validation split. An epoch is at least one step,
        also with fewer examples than ``batch_size``.

        >>> TrainingConfig(batch_size=8, n_epochs=3).total_steps(5)
        3
        """
        if self.max_steps is not None:
            return self.max_steps
        micro_batches = max(1, math.ceil(n_train_examples / self.batch_size))
        return math.ceil(micro_batches / self.grad_accum_steps) * (self.n_epochs or 1)


CONFIG_CLASSES: tuple[type, ...] = (ScoringConfig, SelectionConfig, TrainingConfig)


def all_options() -> dict[type, list[Option]]:
    """Every declared option of every config class."""
    return {cls: declared_options(cls) for cls in CONFIG_CLASSES}


# --- "auto": the service's values chosen from the dataset -------------------------------------------------

TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MAX_AUTO_EPOCHS = 3, 100, 25_000, 25
AUTO = "auto"


@dataclass(frozen=True)
class DataFacts:
    """What ``auto`` values are chosen from: the validated training file and the base model."""

    n_examples: int
    max_tokens: int | None = None  # longest example in tokens, when a tokenizer could count them
    max_context: int | None = None  # the model's context length


def auto_epochs(n_examples: int) -> int:
    """Aim for 3 epochs; more for tiny sets (at least ~100 example passes), fewer for huge ones; 1..25."""
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, MIN_TARGET_EXAMPLES // max(n_examples, 1))
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def auto_seq_len(facts: DataFacts) -> int:
    """The longest example plus slack for the chat template, rounded up to 64, capped by the context."""
    cap = min(facts.max_context or 4096, 4096)
    if not facts.max_tokens:
        return min(2048, cap)
    wanted = int(math.ceil((facts.max_tokens * 1.25 + 16) / 64) * 64)
    return max(64, min(wanted, cap))


# One rule per option that declares ``auto``: (facts, values resolved so far) -> value.
AUTO_RULES: dict[str, Callable[[DataFacts, dict[str, Any]], Any]] = {
    "n_sample_tokens": lambda facts, _: DEFAULT_N_SAMPLE_TOKENS,
    "top_p": lambda facts, values: DEFAULT_TOP_P[values.get("score_function", "token")],
    "n_epochs": lambda facts, _: auto_epochs(facts.n_examples),
    "batch_size": lambda facts, _: max(1, min(8, facts.n_examples)),
    "learning_rate_multiplier": lambda facts, values: _given_multiplier(values),
    "learning_rate": lambda facts, values: DEFAULT_LEARNING_RATE * (values.get("learning_rate_multiplier") or 1.0),
    "seq_len": lambda facts, _: auto_seq_len(facts),
    "save_every": lambda facts, values: max(1, math.ceil(values["total_steps"] / 10)),
}


def _given_multiplier(values: dict[str, Any]) -> float:
    """The multiplier a given ``learning_rate`` stands for (1 when the learning rate is ``auto`` too)."""
    rate = values.get("learning_rate", AUTO)
    return 1.0 if rate in (AUTO, None) else rate / DEFAULT_LEARNING_RATE


def resolve_auto(values: dict[str, Any], facts: DataFacts) -> dict[str, Any]:
    """Concrete option values: every ``"auto"`` (or missing auto-able option) chosen by its rule.

    Also adds ``total_steps`` (``TrainingConfig.total_steps`` over the examples left after the validation
    split), which ``save_every``'s rule and progress reporting use.

    >>> resolve_auto({"n_epochs": "auto", "batch_size": 4}, DataFacts(n_examples=40))["total_steps"]
    30
    """
    out = dict(values)
    pending = [o.name for opts in all_options().values() for o in opts if o.auto and out.get(o.name, AUTO) == AUTO]
    for name in [n for n in pending if n != "save_every"]:
        out[name] = AUTO_RULES[name](facts, out)
    training = {o.name: out[o.name] for o in declared_options(TrainingConfig) if out.get(o.name) not in (None, AUTO)}
    config = TrainingConfig(**training)
    out["total_steps"] = config.total_steps(n_train_examples(facts.n_examples, config.validation_split))
    if "save_every" in pending:
        out["save_every"] = AUTO_RULES["save_every"](facts, out)
    return out


def n_train_examples(n_examples: int, validation_split: float) -> int:
    """Examples that train after holding out ``validation_split`` of them (at least one each side)."""
    if validation_split <= 0 or n_examples < 2:
        return n_examples
    n_val = min(n_examples - 1, max(1, round(n_examples * validation_split)))
    return n_examples - n_val
