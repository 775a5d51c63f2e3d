"""Resolving ``"auto"`` hyperparameters from the validated dataset (OpenAI's epoch heuristic)."""

from __future__ import annotations

import math
from typing import Any

from esft.constants import DEFAULT_N_SAMPLE_TOKENS

TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MAX_EPOCHS = 3, 100, 25_000, 25
DEFAULT_LEARNING_RATE = 1e-5  # the ESFT paper's learning rate
TRAINING_KEYS = (
    "max_steps",
    "n_epochs",
    "batch_size",
    "grad_accum_steps",
    "learning_rate",
    "weight_decay",
    "lr_scheduler",
    "warmup_ratio",
    "seq_len",
    "eval_every",
    "save_every",
)


def auto_epochs(n_examples: int) -> int:
    """Aim for 3 epochs; more for tiny sets (at least ~100 example passes), fewer for huge ones; 1..25."""
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, MIN_TARGET_EXAMPLES // max(n_examples, 1))
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def auto_seq_len(token_stats: dict[str, float] | None, max_context: int | None) -> int:
    """The longest example rounded up to 64 (a little slack for the chat template), capped by the context."""
    cap = min(max_context or 4096, 4096)
    if not token_stats:
        return min(2048, cap)
    wanted = int(math.ceil((token_stats["max"] * 1.25 + 16) / 64) * 64)
    return max(64, min(wanted, cap))


def resolve(
    hp: dict[str, Any], n_examples: int, token_stats: dict[str, float] | None, max_context: int | None
) -> dict[str, Any]:
    """Concrete hyperparameters (every ``auto`` replaced) plus ``total_steps``, as stored on the job."""
    out = dict(hp)
    if out.get("n_epochs") in (None, "auto"):
        out["n_epochs"] = auto_epochs(n_examples)
    if out.get("batch_size") in (None, "auto"):
        out["batch_size"] = max(1, min(8, n_examples))
    if out.get("learning_rate") in (None, "auto"):
        out["learning_rate"] = DEFAULT_LEARNING_RATE
    if out.get("seq_len") in (None, "auto"):
        out["seq_len"] = auto_seq_len(token_stats, max_context)
    per_step = out["batch_size"] * out.get("grad_accum_steps", 1)
    out["total_steps"] = out.get("max_steps") or math.ceil(n_examples / per_step) * out["n_epochs"]
    if out.get("save_every") is None:
        out["save_every"] = max(1, math.ceil(out["total_steps"] / 10))
    return out


def training_kwargs(resolved: dict[str, Any], method: dict[str, Any], seed: int) -> dict[str, Any]:
    """Keyword arguments for ``esft.config.TrainingConfig``."""
    esft = method.get("esft", {})
    kwargs = {key: resolved[key] for key in TRAINING_KEYS if resolved.get(key) is not None}
    if kwargs.get("max_steps"):
        kwargs.pop("n_epochs", None)
    return {
        **kwargs,
        "seed": seed,
        "train_shared_experts": bool(esft.get("train_shared_experts")),
        "train_non_expert_modules": bool(esft.get("train_non_expert_modules")),
    }


def scoring_kwargs(resolved: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    n_tokens = method.get("esft", {}).get("n_sample_tokens", "auto")
    return {
        "n_sample_tokens": DEFAULT_N_SAMPLE_TOKENS if n_tokens == "auto" else n_tokens,
        "seq_len": resolved["seq_len"],
        "batch_size": resolved["batch_size"],
    }


def selection_kwargs(method: dict[str, Any]) -> dict[str, Any]:
    esft = method.get("esft", {})
    top_p = esft.get("top_p", "auto")
    return {
        "score_function": esft.get("score_function", "token"),
        "top_p": None if top_p == "auto" else top_p,
        "max_experts_per_layer": esft.get("max_experts_per_layer"),
    }
