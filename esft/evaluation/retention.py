"""Retention: what an adapter kept of the base model's general ability, per general-ability file and on average.

Per file: ``difference = adapter - base`` (points of that file's metric) and ``ratio = adapter / base``
(``None`` when the base scores 0: nothing to keep). On average: the same two numbers between the mean of
the base's file scores and the mean of the adapter's (every suite metric is on the 0-100 scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from esft.evaluation.metrics import LLM_JUDGE, TEXT_METRICS

SUITE_METRICS = tuple(TEXT_METRICS)
"""Metrics a general-ability file may use (no judge: suites are scored without outside calls)."""


@dataclass(frozen=True)
class FileScore:
    """One general-ability file's mean score for the base model and for the adapter."""

    name: str
    metric: str
    n_examples: int
    base: float | None
    adapter: float | None


def _compare(base: float | None, adapter: float | None) -> dict[str, float | None]:
    if base is None or adapter is None:
        return {"difference": None, "ratio": None}
    return {"difference": adapter - base, "ratio": adapter / base if base else None}


def retention(files: Sequence[FileScore]) -> dict[str, Any]:
    """``{"files": [...], "average": {...}}`` with base, adapter, difference and ratio each."""
    rows = [{"name": f.name, "metric": f.metric, "n_examples": f.n_examples, "base": f.base, "adapter": f.adapter,
             **_compare(f.base, f.adapter)} for f in files]
    scored = [f for f in files if f.base is not None and f.adapter is not None]
    if scored:
        base = sum(f.base for f in scored) / len(scored)
        adapter = sum(f.adapter for f in scored) / len(scored)
        average = {"base": base, "adapter": adapter, **_compare(base, adapter)}
    else:
        average = {"base": None, "adapter": None, "difference": None, "ratio": None}
    return {"files": rows, "average": average}


def headline(task_delta: float | None, task_metric: str | None, kept_ratio: float | None) -> str:
    """What users read first, e.g. ``task +31 points (exact_match), general ability 99% kept``."""
    parts = []
    if task_delta is not None:
        unit = "points" if task_metric != LLM_JUDGE else "on the 1-10 judge scale"
        parts.append(f"task {task_delta:+.0f} {unit} ({task_metric})" if task_metric != LLM_JUDGE
                     else f"task {task_delta:+.1f} {unit}")
    if kept_ratio is not None:
        parts.append(f"general ability {kept_ratio:.0%} kept")
    return ", ".join(parts)
