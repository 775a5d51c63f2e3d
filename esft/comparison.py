"""Side-by-side comparison of fine-tuning methods on the same data and budget: one report, one winner per column.

A report is built from one result per method, whatever produced it (``esft compare`` here, or the service's
comparison jobs): ``{"method", "task": {metric: value}, "retention": {name: value}, "adapter_bytes",
"optimizer_state_bytes", "train_seconds"}``. Task metrics and retention are taken as they come (any names the
evaluation returns), so new metrics appear as new columns without changes here. Higher task and retention
values win; fewer bytes and seconds win. Importing this module loads neither torch nor matplotlib.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esft.io import write_json_atomic, write_text_atomic

REPORT_JSON, REPORT_MD, REPORT_PNG = "comparison.json", "comparison.md", "comparison.png"
COST_COLUMNS = ("adapter_bytes", "optimizer_state_bytes", "train_seconds")  # lower wins
REPORT_SCHEMA = "esft.comparison/1"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def columns_of(results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(column, "max" | "min")`` in display order: task metrics, retention, then the costs."""
    cols: list[tuple[str, str]] = []
    for group in ("task", "retention"):
        names = sorted({name for r in results for name in (r.get(group) or {})})
        cols += [(f"{group}.{name}", "max") for name in names]
    return cols + [(name, "min") for name in COST_COLUMNS]


def value_of(result: dict[str, Any], column: str) -> float | None:
    group, _, name = column.partition(".")
    return _number((result.get(group) or {}).get(name)) if name else _number(result.get(column))


def build_report(results: Sequence[dict[str, Any]], **context: Any) -> dict[str, Any]:
    """The side-by-side report: each method's value per column and the winner(s) per column.

    >>> r = build_report([{"method": "esft", "task": {"exact_match": 0.5}, "adapter_bytes": 10},
    ...                   {"method": "fft", "task": {"exact_match": 0.75}, "adapter_bytes": 100}])
    >>> r["winners"]["task.exact_match"], r["winners"]["adapter_bytes"]
    (['fft'], ['esft'])
    """
    columns = columns_of(results)
    rows = [{"method": r["method"], "values": {c: value_of(r, c) for c, _ in columns}} for r in results]
    winners: dict[str, list[str]] = {}
    for column, best in columns:
        known = [(row["values"][column], row["method"]) for row in rows if row["values"][column] is not None]
        if known:
            top = (max if best == "max" else min)(v for v, _ in known)
            winners[column] = [m for v, m in known if v == top]
    return {"schema": REPORT_SCHEMA, **context, "methods": [r["method"] for r in results],
            "columns": [{"name": c, "better": "higher" if b == "max" else "lower"} for c, b in columns],
            "rows": rows, "winners": winners}


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "-"
    if column.endswith("_bytes"):
        return f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value / 2**10:.1f} KiB"
    if column.endswith("_seconds"):
        return f"{value:.1f} s"
    return f"{value:.3g}"


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table; each column's winner in bold."""
    names = [c["name"] for c in report["columns"]]
    lines = ["| method | " + " | ".join(f"{n} ({c['better']} wins)" for n, c in zip(names, report["columns"],
                                                                                       strict=True)) + " |",
             "|---" * (len(names) + 1) + "|"]
    for row in report["rows"]:
        cells = []
        for name in names:
            text = _cell(name, row["values"][name])
            cells.append(f"**{text}**" if row["method"] in report["winners"].get(name, []) else text)
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    winners = "; ".join(f"{n}: {', '.join(w)}" for n, w in report["winners"].items())
    return "\n".join(["# Method comparison", "", *lines, "", f"Winners: {winners}", ""])


def plot_report(report: dict[str, Any], out_png: str | Path) -> Path:
    """One bar chart per column (the winner's bar darker), side by side in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in report["columns"]]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        methods = [row["method"] for row in report["rows"]]
        values = [row["values"][name] or 0.0 for row in report["rows"]]
        colours = ["#1f5f99" if m in report["winners"].get(name, []) else "#9ecae1" for m in methods]
        ax.bar(methods, values, color=colours)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def write_report(results: Sequence[dict[str, Any]], out_dir: str | Path, **context: Any) -> dict[str, Any]:
    """Write the report as JSON, Markdown and PNG into ``out_dir``; returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(results, **context)
    plot_report(report, out_dir / REPORT_PNG)
    write_text_atomic(out_dir / REPORT_MD, to_markdown(report))
    write_json_atomic(out_dir / REPORT_JSON, report)  # last: its presence means the report is complete
    return report


def result_files_bytes(result_dir: str | Path) -> int:
    """Bytes of a trained result's weights (``*.safetensors`` at its top level: the adapter, or the whole model)."""
    return sum(p.stat().st_size for p in Path(result_dir).glob("*.safetensors"))


# --- ``esft compare``: every method on the same files and budget, in this process --------------------------


def compare(
    model_dir: str | Path,
    data_path: str | Path,
    methods: Sequence[str],
    out_dir: str | Path,
    config: Any = None,
    *,
    validation_path: str | Path | None = None,
    scoring: Any = None,
    selection: Any = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    max_examples: int = 64,
) -> dict[str, Any]:
    """Train each of ``methods`` on ``data_path`` with the same ``TrainingConfig`` and write the report.

    Experts are scored and selected once for the methods that train a selection (esft, esft_lora). Task
    exact match (``esft.evaluation.exact_match``, teacher forced) is measured on ``validation_path`` (else the
    training data, up to ``max_examples`` rows) for the base model and each result.
    """
    from esft import workflows
    from esft.data.formats import read_examples
    from esft.data.tokenize import tokenize_examples
    from esft.evaluation import exact_match
    from esft.generation import stop_token_ids
    from esft.methods import get_method, load_adapter
    from esft.models.loading import load_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = list(read_examples(validation_path or data_path))[:max_examples]

    def accuracy(adapter_dir: Path | None) -> float:
        model, tokenizer = load_model(model_dir)
        if adapter_dir is not None:
            model = load_adapter(model, adapter_dir).fold()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        data, _ = tokenize_examples(examples, tokenizer, seq_len=256, overflow="truncate")
        stop = stop_token_ids(tokenizer, model.generation_config)
        return exact_match(model, data, pad_id=pad, stop_ids=stop).accuracy

    expert_config = None
    if any(get_method(m).needs_expert_config for m in methods):
        workflows.score(model_dir, data_path, out_dir / "expert_scores.json", scoring)
        expert_config = workflows.select(out_dir / "expert_scores.json", selection, out_dir / "expert_config.json")
    results = []
    for name in methods:
        spec = get_method(name)
        started = time.perf_counter()
        trained = workflows.train(model_dir, data_path, out_dir / "expert_config.json" if spec.needs_expert_config
                                  else None, out_dir / name, config, validation_path=validation_path, method=name,
                                  method_options=(method_options or {}).get(name))
        seconds = time.perf_counter() - started
        results.append({"method": name, "task": {"exact_match": accuracy(trained.adapter_dir)},
                        "adapter_bytes": result_files_bytes(trained.adapter_dir),
                        "optimizer_state_bytes": trained.report.get("optimizer_state_bytes"),
                        "train_seconds": seconds})
    context = {"base": {"task": {"exact_match": accuracy(None)}},
               "experts_selected": expert_config.n_selected if expert_config is not None else None}
    return write_report(results, out_dir, **context)
