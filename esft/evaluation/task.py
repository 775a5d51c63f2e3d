"""Task evaluation: answers of several models (base, adapter) to the same prompts, scored by named metrics.

``generate_answers`` decodes greedily through the serving engine, every prompt of every model submitted
at once so they share batches. ``score_answers`` scores given answers (so answers from elsewhere, e.g. a
merged full fine-tune served by another engine, score the same way). ``evaluate_task`` does both.

Scores are per example and per model; each model's summary is the mean with a bootstrap 95% interval,
and each model after the first also gets its paired difference to the first (the base).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esft.data.formats import iter_examples
from esft.evaluation.bootstrap import mean_interval, paired_difference_interval
from esft.evaluation.judge import JudgeClient, outcome_counts
from esft.evaluation.metrics import LLM_JUDGE, TEXT_METRICS, check_metrics

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class EvalExample:
    """A prompt (text, or chat messages ending before the answer) and the reference answer."""

    prompt: Prompt
    reference: str

    @property
    def question(self) -> str:
        """The text a judge sees as the question: the prompt, or its last user turn."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else self.prompt[-1]["content"]


def load_examples(path: str | Path, limit: int | None = None) -> list[EvalExample]:
    """Evaluation examples from a JSONL file: chat rows end before their last assistant turn; completion
    rows split into prompt and completion; text rows (no answer) are skipped."""
    examples: list[EvalExample] = []
    for row in iter_examples(path):
        if limit is not None and len(examples) >= limit:
            break
        if row.kind == "chat":
            messages = [{"role": m["role"], "content": m["content"]} for m in row.messages or ()]
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
            if last > 0:
                examples.append(EvalExample(messages[:last], messages[last]["content"]))
        elif row.kind == "completion" and row.prompt:
            examples.append(EvalExample(row.prompt, row.completion or ""))
    return examples


def generate_answers(
    engine,
    prompts: Sequence[Prompt],
    models: Sequence[str],
    *,
    max_new_tokens: int = 64,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, list[str]]:
    """Greedy answers of each model (base name or adapter name of ``engine``) to every prompt.

    All requests are submitted at once, so the engine batches them (mixing models where it can). A prompt
    that does not fit the context gets an empty answer. Stopping cancels what is still running.
    """
    from esft.serving import GenerationRequest, SamplingParams, ServingError

    context = getattr(engine.model.config, "max_position_embeddings", None) or 1 << 30
    encoded = [engine.encode(prompt) for prompt in prompts]
    handles = {}
    for model in models:
        for i, ids in enumerate(encoded):
            room = min(max_new_tokens, engine.config.max_new_tokens, context - len(ids))
            if room < 1 or not ids:
                continue
            params = SamplingParams(max_tokens=room, temperature=0.0)
            try:
                handles[model, i] = engine.submit(GenerationRequest(ids, model=model, params=params))
            except ServingError:
                continue
    answers = {model: [""] * len(prompts) for model in models}
    for (model, i), handle in handles.items():
        if should_stop is not None and should_stop():
            for other in handles.values():
                other.cancel()
            break
        try:
            answers[model][i] = handle.result().text
        except ServingError:
            answers[model][i] = ""
    return answers


@dataclass
class EvaluationResult:
    """Per-example answers and scores and per-model summaries.

    Attributes:
        metrics: the metrics, in the order asked for.
        models: the labels of the compared models (the first is the reference of ``delta``, e.g. ``base``).
        examples: ``{"prompt", "expected", <label>: answer, "scores": {label: {metric: score or None}}}``.
        summary: label -> metric -> ``{"mean", "ci95", "n_scored"}`` (+ judge outcome counts for ``llm_judge``).
        delta: label -> metric -> ``{"mean", "ci95"}``: this model minus the first, over examples both scored.
    """

    metrics: list[str]
    models: list[str]
    examples: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, Any]]]
    delta: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def mean(self, model: str, metric: str | None = None) -> float | None:
        return self.summary[model][metric or self.metrics[0]]["mean"]

    def to_dict(self, *, with_examples: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {"metrics": self.metrics, "models": self.models, "n_examples": len(self.examples),
                                "summary": self.summary, "delta": self.delta}
        if with_examples:
            data["examples"] = self.examples
        return data


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    scored = [v for v in values if v is not None]
    return {"mean": sum(scored) / len(scored) if scored else None, "ci95": mean_interval(scored),
            "n_scored": len(scored)}


def score_answers(
    examples: Sequence[EvalExample],
    answers: Mapping[str, Sequence[str]],
    metrics: Sequence[str],
    *,
    judge: JudgeClient | None = None,
) -> EvaluationResult:
    """Score each model's answers (``answers``: label -> one answer per example) with every metric."""
    metrics = check_metrics(list(metrics))
    if LLM_JUDGE in metrics and judge is None:
        from esft.errors import ConfigError

        raise ConfigError("metric 'llm_judge' needs a judge endpoint (url and model)", param="evaluation.judge")
    models = list(answers)
    scores: dict[str, dict[str, list[float | None]]] = {m: {} for m in models}
    summary: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in models}
    for model in models:
        given = answers[model]
        for metric in metrics:
            if metric == LLM_JUDGE:
                verdicts = judge.grade([e.question for e in examples], [e.reference for e in examples], given)
                scores[model][metric] = [None if v.score is None else float(v.score) for v in verdicts]
                summary[model][metric] = {**_summary(scores[model][metric]), **outcome_counts(verdicts)}
            else:
                fn = TEXT_METRICS[metric]
                scores[model][metric] = [fn(a, e.reference) for a, e in zip(given, examples, strict=True)]
                summary[model][metric] = _summary(scores[model][metric])
    delta: dict[str, dict[str, dict[str, Any]]] = {}
    for model in models[1:]:
        delta[model] = {}
        for metric in metrics:
            pairs = [(b, t) for b, t in zip(scores[models[0]][metric], scores[model][metric], strict=True)
                     if b is not None and t is not None]
            base, tuned = [b for b, _ in pairs], [t for _, t in pairs]
            mean = (sum(tuned) - sum(base)) / len(pairs) if pairs else None
            delta[model][metric] = {"mean": mean, "ci95": paired_difference_interval(base, tuned)}
    rows = [
        {"prompt": e.prompt, "expected": e.reference, **{m: answers[m][i] for m in models},
         "scores": {m: {k: scores[m][k][i] for k in metrics} for m in models}}
        for i, e in enumerate(examples)
    ]
    return EvaluationResult(metrics, models, rows, summary, delta)


def evaluate_task(
    engine,
    examples: Sequence[EvalExample],
    metrics: Sequence[str],
    *,
    models: Mapping[str, str] | None = None,
    judge: JudgeClient | None = None,
    max_new_tokens: int = 64,
    should_stop: Callable[[], bool] | None = None,
) -> EvaluationResult:
    """Generate every model's answers through ``engine`` and score them.

    Args:
        engine: an ``esft.serving.Engine`` (started or not; it is started here).
        examples: prompts and references (``load_examples``).
        metrics: names from ``esft.evaluation.metrics.METRIC_NAMES``.
        models: label -> the engine's model name; default ``{"base": engine.base_name}``.
        judge: required for ``llm_judge``.
        max_new_tokens: the longest answer.

    >>> result = evaluate_task(engine, load_examples("valid.jsonl"), ["bleu"],  # doctest: +SKIP
    ...                        models={"base": engine.base_name, "adapter": "math"})
    >>> result.delta["adapter"]["bleu"]["mean"]  # doctest: +SKIP
    """
    check_metrics(list(metrics))
    models = dict(models or {"base": engine.base_name})
    engine.start()
    generated = generate_answers(engine, [e.prompt for e in examples], list(models.values()),
                                 max_new_tokens=max_new_tokens, should_stop=should_stop)
    return score_answers(examples, {label: generated[name] for label, name in models.items()}, metrics, judge=judge)
