"""The evaluate step: plots, metrics CSV, and base-vs-adapter answers with exact-match accuracy."""

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
    SCORES,
    SCORES_PNG,
    TRAIN_DIR,
    TRAIN_REPORT,
)
from esft.data.formats import iter_examples
from esft.io import copy_file_atomic, write_json_atomic, write_text_atomic
from worker.progress import Cancelled

if TYPE_CHECKING:
    from worker.steps import StepContext

log = logging.getLogger(__name__)


def eval_examples(path: Path, limit: int) -> list[tuple[Any, str]]:
    """``(prompt, expected)`` pairs: chat prompts end before the last assistant turn; completions split."""
    pairs: list[tuple[Any, str]] = []
    for example in iter_examples(path):
        if len(pairs) >= limit:
            break
        if example.kind == "chat":
            messages = [{"role": m["role"], "content": m["content"]} for m in example.messages or ()]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            if last > 0:
                pairs.append((messages[:last], messages[last]["content"]))
        elif example.kind == "completion" and example.prompt:
            pairs.append((example.prompt, example.completion or ""))
    return pairs


def compare_answers(
    model_dir: Path,
    adapter_dir: Path,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[str], list[str]]:
    """Answers of the base model and of the trained result (any method's) to each prompt, loading the model once."""
    from esft.generation import generate_text
    from esft.methods import load_adapter
    from esft.models.loading import load_model

    model, tokenizer = load_model(model_dir)

    def answers(net) -> list[str]:
        out = []
        for prompt in prompts:
            if should_stop is not None and should_stop():
                break
            out.append(generate_text(net, tokenizer, prompt, max_new_tokens=max_new_tokens))
        return out

    base = answers(model)
    tuned_answers = answers(load_adapter(model, adapter_dir).fold())  # in place: the base answers came first
    return base, tuned_answers


def _same(answer: str, expected: str) -> bool:
    return answer.strip().lower() == expected.strip().lower()


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


def evaluate(ctx: StepContext) -> dict[str, Any]:
    out = ctx.work / EVAL_RESULTS
    if out.exists():
        return {}
    _reports(ctx)
    source = ctx.validation_path or ctx.training_path
    pairs = eval_examples(source, ctx.settings.eval_max_examples)
    prompts = [prompt for prompt, _ in pairs]
    base, tuned = ctx.lib.compare(
        ctx.model_dir,
        ctx.work / TRAIN_DIR,
        prompts,
        max_new_tokens=ctx.settings.eval_max_new_tokens,
        should_stop=ctx.should_stop,
    )
    if ctx.should_stop():
        raise Cancelled("stopped during evaluation")
    rows = [
        {"prompt": p, "expected": e, "base": b, "adapter": a} for (p, e), b, a in zip(pairs, base, tuned, strict=False)
    ]
    n = max(len(rows), 1)
    summary = {
        "n_examples": len(rows),
        "source": "validation_file" if ctx.validation_path else "training_file",
        "accuracy_base": sum(_same(r["base"], r["expected"]) for r in rows) / n,
        "accuracy_adapter": sum(_same(r["adapter"], r["expected"]) for r in rows) / n,
    }
    write_json_atomic(out, {**summary, "examples": rows})
    ctx.log(
        f"Evaluation on {len(rows)} examples: exact match"
        f" {summary['accuracy_adapter']:.0%} with the adapter, "
        f"{summary['accuracy_base']:.0%} without.",
        type="metrics",
        data={"phase": "evaluating", **summary},
    )
    return {}
