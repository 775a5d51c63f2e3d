"""The evaluate step: plots, metrics CSV, base vs adapter on the task with the job's metrics, and retention on
general-ability files (artifacts, events and the job's ``evaluation_result``)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.core.artifacts import (
    EVAL_RESULTS,
    EXPERT_CONFIG,
    LOSS_PNG,
    METRICS_CSV,
    METRICS_JSONL,
    RETENTION,
    RETENTION_PNG,
    SCORES,
    SCORES_PNG,
    TRAIN_DIR,
    TRAIN_REPORT,
)
from esft.errors import ESFTError
from esft.io import copy_file_atomic, write_json_atomic, write_text_atomic
from worker.progress import Cancelled

if TYPE_CHECKING:
    from worker.steps import StepContext

log = logging.getLogger(__name__)


ADAPTER = "adapter"  # the adapter's name inside the evaluation engine
GENERAL_FILE_PREFIX = "job:"  # names of the job's own general files (the base model's suite names have no colon)


def general_files(session, storage, job, suite: list[dict[str, Any]] | None) -> list[Any]:
    """The base model's suite, then the job's ``general_files`` (named ``job:<filename>``), as ``GeneralFile``.

    Raises ``StepFailed`` (param ``general_files[i].file``) when a job file was deleted meanwhile.
    """
    from api.core.db.models import File
    from esft.evaluation.retention import GeneralFile
    from worker.steps import StepFailed

    found = [GeneralFile(f["name"], Path(f["path"]), f["metric"]) for f in suite or []]
    for i, spec in enumerate(job.general_files or []):
        row = session.get(File, spec["file"])
        if row is None or not storage.exists(row.storage_key):
            param = f"general_files[{i}].file"
            raise StepFailed("file_not_found", f"The {param} {spec['file']} was deleted.", param=param)
        found.append(GeneralFile(f"{GENERAL_FILE_PREFIX}{row.filename}#{i}", storage.path(row.storage_key),
                                 spec["metric"]))
    return found


def _answers(
    model_dir: Path, adapter_dir: Path, prompts: list[Any], *, max_new_tokens: int,
    should_stop: Callable[[], bool] | None,
) -> dict[str, list[str]]:
    """Greedy answers of the base model and of the trained result, batched through serving engines.

    Results the engine serves as adapters (ESFT) are hot-swapped in the base model's engine (no expert
    slots: evaluation mixes no adapters). Any other method's result (full fine-tune, LoRA) is folded into a
    second copy of the model served by an engine of its own.
    """
    from esft.errors import ESFTError
    from esft.evaluation.task import generate_answers
    from esft.serving import Engine, EngineConfig, ServingError, dict_resolver

    weights = sum(p.stat().st_size for p in adapter_dir.glob("*.safetensors"))
    config = EngineConfig(batching="swap", max_batch_size=16, max_new_tokens=max_new_tokens,
                          cache_bytes=max(EngineConfig.cache_bytes, 2 * weights))
    with Engine.from_pretrained(model_dir, resolver=dict_resolver({ADAPTER: adapter_dir}), config=config,
                                base_name="base") as engine:
        try:
            engine.load_adapter(ADAPTER)
            models = ["base", ADAPTER]
        except (ServingError, ESFTError):
            models = ["base"]
        answers = generate_answers(engine, prompts, models, max_new_tokens=max_new_tokens, should_stop=should_stop)
    if ADAPTER not in answers:
        from esft.methods import load_adapter
        from esft.models.loading import load_model

        model, tokenizer = load_model(model_dir, device=config.device)
        tuned = load_adapter(model, adapter_dir).fold()
        with Engine(tuned, tokenizer, config=config, base_name=ADAPTER) as engine:
            answers.update(generate_answers(engine, prompts, [ADAPTER], max_new_tokens=max_new_tokens,
                                            should_stop=should_stop))
    return {"base": answers["base"], "adapter": answers[ADAPTER]}


def compare_models(
    model_dir: Path,
    adapter_dir: Path,
    examples: Sequence[Any],
    metrics: Sequence[str],
    general_files: Sequence[Any] = (),
    *,
    judge: Any = None,
    max_new_tokens: int,
    max_examples: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    """Base vs trained result on the task and the general-ability files: the task result, the retention
    report (None without general files) and each general file's full result. All prompts (task and
    general) are generated in one submission per model."""
    from esft.evaluation.retention import load_general, score_retention
    from esft.evaluation.task import score_answers

    general = load_general(general_files, max_examples)
    prompts = [e.prompt for e in examples] + [e.prompt for f in general_files for e in general[f.name]]
    answers = _answers(model_dir, adapter_dir, prompts, max_new_tokens=max_new_tokens, should_stop=should_stop)
    n = len(examples)
    task = score_answers(examples, {label: given[:n] for label, given in answers.items()}, metrics, judge=judge)
    if not general_files:
        return task, None, {}
    report, per_file = score_retention(general_files, general, {label: given[n:] for label, given in answers.items()})
    return task, report, per_file


def metrics_csv(metrics_jsonl: Path, out: Path) -> None:
    """One row per logged step, columns in a stable order (step first)."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    columns = sorted({key for row in rows for key in row if key != "checkpoint"} - {"step"})
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=["step", *columns], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out, buffer.getvalue())


def _reports(ctx: StepContext) -> None:
    """Copy the run's metrics next to the other artifacts and draw the pictures (best effort)."""
    train_dir = ctx.work / TRAIN_DIR
    for name in (METRICS_JSONL, TRAIN_REPORT):
        if (train_dir / name).is_file():
            copy_file_atomic(train_dir / name, ctx.work / name)
    if (ctx.work / METRICS_JSONL).is_file():
        metrics_csv(ctx.work / METRICS_JSONL, ctx.work / METRICS_CSV)
    drawings = (
        (ctx.lib.plot_scores, (ctx.work / SCORES, ctx.work / SCORES_PNG, ctx.work / EXPERT_CONFIG)),
        (ctx.lib.plot_loss, (ctx.work / METRICS_JSONL, ctx.work / LOSS_PNG)),
    )
    for draw, args in drawings:
        if not args[0].is_file():  # no expert scores for methods that select no experts
            continue
        try:
            draw(*args)
        except Exception as exc:  # a missing picture must not fail a trained job
            log.exception("plot failed")
            ctx.log(f"Could not draw {args[1].name}: {exc}", level="warn")


def _judge(ctx: StepContext, spec: dict[str, Any], metrics: list[str]):
    """The judge client, or None (and ``llm_judge`` dropped) when the URL is no longer allowed here."""
    from esft.evaluation.judge import JudgeClient
    from esft.outbound import check_outbound_url

    if "llm_judge" not in metrics or not spec.get("judge"):
        return None
    url = spec["judge"]["url"]
    try:
        check_outbound_url(url, ctx.settings.outbound_url_allowlist, param="evaluation.judge.url")
    except ESFTError as exc:
        metrics.remove("llm_judge")
        ctx.log(f"LLM judge skipped: {exc.message}", level="warn")
        return None
    from api.core import job_secrets

    api_key = job_secrets.load(ctx.settings, ctx.job.id).get("evaluation.judge.api_key") or ctx.settings.judge_api_key
    return JudgeClient(url, spec["judge"]["model"], api_key=api_key, timeout_s=ctx.settings.judge_timeout_s)


def _summary(task, retention_report: dict[str, Any] | None) -> dict[str, Any]:
    """What the job object shows: the headline, task means/intervals/deltas, and retention."""
    from esft.evaluation.retention import headline

    first = task.metrics[0]
    delta = task.delta["adapter"][first]["mean"]
    kept = retention_report["average"]["ratio"] if retention_report else None
    return {
        "headline": headline(delta, first, kept),
        "task": task.to_dict(with_examples=False),
        "retention": retention_report,
    }


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """Base vs adapter on the task (validation file, else training file) with the job's metrics, and on the
    general-ability files (base model's suite + the job's) for retention."""
    from esft.evaluation.metrics import exact_match
    from esft.evaluation.task import load_examples

    out = ctx.work / EVAL_RESULTS
    if out.exists():
        return {"evaluation_result": json.loads(out.read_text()).get("result")}
    _reports(ctx)
    spec = dict(ctx.job.evaluation or {})
    metrics = list(spec.get("metrics") or ["exact_match"])
    judge = _judge(ctx, spec, metrics)
    if not metrics:
        metrics = ["exact_match"]
    max_examples = spec.get("max_examples") or ctx.settings.eval_max_examples
    source = ctx.validation_path or ctx.training_path
    examples = load_examples(source, max_examples)
    task, retention_report, per_file = ctx.lib.compare(
        ctx.model_dir,
        ctx.work / TRAIN_DIR,
        examples,
        metrics,
        ctx.general_files,
        judge=judge,
        max_new_tokens=spec.get("max_new_tokens") or ctx.settings.eval_max_new_tokens,
        max_examples=max_examples,
        should_stop=ctx.should_stop,
    )
    if ctx.should_stop():
        raise Cancelled("stopped during evaluation")
    summary = _summary(task, retention_report)
    rows = task.examples
    n = max(len(rows), 1)
    legacy = {  # exact match is always reported, whatever the metrics (older clients read it)
        "n_examples": len(rows),
        "source": "validation_file" if ctx.validation_path else "training_file",
        "accuracy_base": sum(exact_match(r["base"], r["expected"]) for r in rows) / 100 / n,
        "accuracy_adapter": sum(exact_match(r["adapter"], r["expected"]) for r in rows) / 100 / n,
    }
    if retention_report is not None:
        write_json_atomic(ctx.work / RETENTION, {**retention_report, "results": {
            name: result.to_dict() for name, result in per_file.items()}})
        try:
            ctx.lib.plot_retention(retention_report, ctx.work / RETENTION_PNG)
        except Exception as exc:  # a missing picture must not fail a trained job
            log.exception("plot failed")
            ctx.log(f"Could not draw {RETENTION_PNG}: {exc}", level="warn")
    write_json_atomic(out, {**legacy, **task.to_dict(), "result": summary})
    judged = task.summary["adapter"].get("llm_judge")
    if judged and judged["n_scored"] < len(rows):
        unscored = {k: v for k, v in judged.items() if k.startswith("n_") and k not in ("n_ok", "n_scored") and v}
        ctx.log(f"LLM judge: {judged['n_scored']} of {len(rows)} adapter answers scored ({unscored}).", level="warn")
    ctx.log(
        f"Evaluation on {len(rows)} examples: {summary['headline'] or 'no scores'}.",
        type="metrics",
        data={"phase": "evaluating", **legacy, "headline": summary["headline"],
              "task": {"summary": task.summary, "delta": task.delta}, "retention": retention_report},
    )
    return {"evaluation_result": summary}
