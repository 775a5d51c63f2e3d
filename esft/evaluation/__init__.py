"""Evaluation of fine-tuned models.

- ``metrics``: text metrics by name (exact_match, contains, bleu, chrf, rouge_l) and ``llm_judge`` (``judge``).
- ``task``: greedy answers through the serving engine, scored per example and summarised with bootstrap
  intervals (``evaluate_task``, ``score_answers``).
- ``retention``: what an adapter kept of the base model's general ability.
- ``teacher_forcing``: exact match of greedy decoding by one teacher-forced forward pass (training-time checks).

Names load on first use, so the service's API process reads ``esft.evaluation.metrics`` without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalResult": "teacher_forcing",
    "exact_match": "teacher_forcing",
    "tokenize_rows": "teacher_forcing",
    "JudgeClient": "judge",
    "parse_score": "judge",
    "METRIC_NAMES": "metrics",
    "TEXT_METRICS": "metrics",
    "check_metrics": "metrics",
    "FileScore": "retention",
    "GeneralFile": "retention",
    "evaluate_retention": "retention",
    "headline": "retention",
    "retention": "retention",
    "EvalExample": "task",
    "EvaluationResult": "task",
    "evaluate_task": "task",
    "load_examples": "task",
    "score_answers": "task",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # a submodule import may have bound the same name; the export wins
    return value
