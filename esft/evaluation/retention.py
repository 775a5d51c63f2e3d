"""Retention: what an adapter kept of the base model's general ability, per general-ability file and on average.

Per file: ``difference = adapter - base`` (points of that file's metric) and ``ratio = adapter / base``
(``None`` when the base scores 0: nothing to keep). On average: the same two numbers between the mean of
the base's file scores and the mean of the adapter's (every suite metric is on the 0-100 scale).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esft.errors import ConfigError
from esft.evaluation.metrics import LLM_JUDGE, SUITE_METRICS
from esft.evaluation.task import EvalExample, EvaluationResult, generate_answers, load_examples, score_answers


@dataclass(frozen=True)
class GeneralFile:
    """A general-ability file (chat or prompt/completion JSONL) and the metric that scores it."""

    name: str
    path: Path
    metric: str

    def __post_init__(self) -> None:
        if self.metric not in SUITE_METRICS:
            raise ConfigError(f"general-ability file {self.name!r}: metric {self.metric!r} is not one of "
                              f"{list(SUITE_METRICS)}", param="metric")


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


def load_general(files: Sequence[GeneralFile], max_examples: int | None = None) -> dict[str, list[EvalExample]]:
    """Each file's evaluation examples (the first ``max_examples``), by file name."""
    return {f.name: load_examples(f.path, max_examples) for f in files}


def score_retention(
    files: Sequence[GeneralFile],
    examples: Mapping[str, Sequence[EvalExample]],
    answers: Mapping[str, Sequence[str]],
) -> tuple[dict[str, Any], dict[str, EvaluationResult]]:
    """The ``retention`` report from answers given in file order (``answers``: ``base`` and ``adapter`` ->
    one answer per example of every file, concatenated), and each file's full result."""
    if set(answers) != {"base", "adapter"}:
        raise ConfigError(f"answers must be for 'base' and 'adapter', got {sorted(answers)}", param="answers")
    results, scores, start = {}, [], 0
    for f in files:
        n = len(examples[f.name])
        given = {label: list(answers[label][start:start + n]) for label in ("base", "adapter")}
        start += n
        result = score_answers(examples[f.name], given, [f.metric])
        results[f.name] = result
        scores.append(FileScore(f.name, f.metric, n, result.mean("base"), result.mean("adapter")))
    return retention(scores), results


def evaluate_retention(
    engine,
    files: Sequence[GeneralFile],
    *,
    models: Mapping[str, str],
    max_examples: int | None = None,
    max_new_tokens: int = 64,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict[str, Any], dict[str, EvaluationResult]]:
    """Evaluate ``models`` (labels ``base`` and ``adapter`` -> engine model names) on every file.

    Every file's prompts go to the engine in one submission. Returns the ``retention`` report and each
    file's full result (answers and per-example scores).
    """
    if set(models) != {"base", "adapter"}:
        raise ConfigError(f"models must name 'base' and 'adapter', got {sorted(models)}", param="models")
    examples = load_general(files, max_examples)
    prompts = [e.prompt for f in files for e in examples[f.name]]
    engine.start()
    answers = generate_answers(engine, prompts, list(dict.fromkeys(models.values())),
                               max_new_tokens=max_new_tokens, should_stop=should_stop)
    return score_retention(files, examples, {label: answers[name] for label, name in models.items()})
