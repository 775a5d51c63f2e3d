"""Turns the comparison's results into ``docs/results.md``: tables, verdicts on the paper's claims, PNG plots.

Every sentence that states a result is computed from the numbers, so a rerun rewrites the page truthfully.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from esft.evaluation.retention import headline  # noqa: E402
from esft.synthetic.tasks import TASKS  # noqa: E402
from research.routing import routing_summary  # noqa: E402

ESFT_MAIN = ("ESFT-Token", "ESFT-Gate")
SCORING = ("ESFT-Token", "ESFT-Gate", "ESFT-Token (answer)", "ESFT-Gate (answer)")


def _row(results: dict[str, Any], task: str, method: str) -> dict[str, Any] | None:
    return next((r for r in results["table"] if r["task"] == task and r["method"] == method), None)


def _m(row: dict[str, Any] | None, key: str) -> float:
    return float("nan") if row is None or key not in row else row[key]["mean"]


def _pm(row: dict[str, Any] | None, key: str, scale: float = 100.0, digits: int = 1) -> str:
    if row is None or key not in row:
        return "–"
    return f"{row[key]['mean'] * scale:.{digits}f} ± {row[key]['std'] * scale:.{digits}f}"


def _base(results: dict[str, Any], task: str) -> dict[str, Any]:
    return next(b for b in results["base"] if b["task"] == task)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.2f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"


def _model_bytes(results: dict[str, Any]) -> float:
    return 4.0 * results["pretrain"]["parameters"]  # fp32


def method_table(results: dict[str, Any], task: str) -> list[str]:
    """Markdown table of one task: every method at its chosen rate, mean ± std over seeds."""
    base = _base(results, task)
    lines = [
        f"Base model: task {base['test_accuracy'] * 100:.1f}, general {base['general_mean'] * 100:.1f}.",
        "",
        "| Method | LR | Task EM | Task gain | General EM | General drop | Train s | Trainable | Adapter | "
        "Optim. state | Peak RSS Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    model_bytes = _model_bytes(results)
    for row in (r for r in results["table"] if r["task"] == task):
        gain = (_m(row, "test_accuracy") - base["test_accuracy"]) * 100
        drop = (base["general_mean"] - _m(row, "general_mean")) * 100
        trainable = _m(row, "trainable_parameters")
        lines.append(
            f"| {row['method']} | {row['learning_rate']:.0e} | {_pm(row, 'test_accuracy')} | {gain:+.1f} | "
            f"{_pm(row, 'general_mean')} | {drop:+.1f} | {_m(row, 'train_seconds'):.0f} | "
            f"{trainable:,.0f} ({trainable / results['pretrain']['parameters']:.1%}) | "
            f"{_size(_m(row, 'adapter_bytes'))} ({_m(row, 'adapter_bytes') / model_bytes:.1%}) | "
            f"{_size(_m(row, 'optimizer_state_bytes'))} | {_size(_m(row, 'peak_rss_delta_bytes'))} |"
        )
    return lines


def general_breakdown(results: dict[str, Any], task: str) -> list[str]:
    """Exact match on each pretraining task after fine-tuning on ``task`` (mean over seeds, chosen rate)."""
    base = _base(results, task)["general"]
    names = list(base)
    lines = ["| Method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
             "| Base | " + " | ".join(f"{base[n] * 100:.0f}" for n in names) + " |"]
    for row in (r for r in results["table"] if r["task"] == task):
        runs = [x for x in results["runs"] if x["task"] == task and x["method"] == row["method"]
                and x["learning_rate"] == row["learning_rate"]]
        means = [np.mean([x["general"][n] for x in runs]) * 100 for n in names]
        lines.append(f"| {row['method']} | " + " | ".join(f"{v:.0f}" for v in means) + " |")
    return lines


def retention_table(results: dict[str, Any], task: str) -> list[str]:
    """General ability kept per method: each run's report from the service's ``esft.evaluation.retention``
    (general tasks other than ``task``'s own skill, exact match 0-100), averaged over seeds at the chosen rate."""
    lines = ["| Method | Task gain | General: base → method | Difference | Kept (ratio) | Headline |",
             "|---|---|---|---|---|---|"]
    base_task = _base(results, task)["test_accuracy"]
    for row in (r for r in results["table"] if r["task"] == task):
        reports = [x["retention"]["average"] for x in results["runs"] if x["task"] == task
                   and x["method"] == row["method"] and x["learning_rate"] == row["learning_rate"]]
        average = {key: None if any(a[key] is None for a in reports) else float(np.mean([a[key] for a in reports]))
                   for key in ("base", "adapter", "difference", "ratio")}
        gain = (_m(row, "test_accuracy") - base_task) * 100
        kept = "–" if average["ratio"] is None else f"{average['ratio']:.0%}"
        lines.append(f"| {row['method']} | {gain:+.1f} | {average['base']:.1f} → {average['adapter']:.1f} | "
                     f"{average['difference']:+.1f} | {kept} | "
                     f"{headline(gain, 'exact_match_strict', average['ratio'])} |")
    return lines


def _gain(results: dict[str, Any], task: str, method: str) -> float:
    return _m(_row(results, task, method), "test_accuracy") - _base(results, task)["test_accuracy"]


def _drop(results: dict[str, Any], task: str, method: str) -> float:
    return _base(results, task)["general_mean"] - _m(_row(results, task, method), "general_mean")


def _std(results: dict[str, Any], task: str, method: str, key: str) -> float:
    row = _row(results, task, method)
    return float("nan") if row is None or key not in row else row[key]["std"]


def _verdict(better: float, noise: float) -> str:
    """``better`` > 0 means the claim's side wins; within ``noise`` (the larger seed std) it is a tie."""
    if abs(better) <= noise:
        return "within noise"
    return "holds" if better > 0 else "**does not hold**"


def _claim_rows(results: dict[str, Any], task: str) -> list[str]:
    fft_gain, lines = _gain(results, task, "FFT"), []
    for method in ESFT_MAIN:
        if _row(results, task, method) is None:
            continue
        gain = _gain(results, task, method)
        noise = max(_std(results, task, method, "test_accuracy"), _std(results, task, "FFT", "test_accuracy"))
        verdict = "not testable (FFT gains nothing)" if fft_gain <= 0 else _verdict(gain - 0.9 * fft_gain, noise)
        ratio = f" ({gain / fft_gain:.0%})" if fft_gain > 0 else ""
        lines.append(f"| {task} | {method} reaches ≥ 90% of FFT's task gain | {verdict} | "
                     f"gain {gain * 100:+.1f} vs FFT {fft_gain * 100:+.1f}{ratio} |")
        margins = [(_drop(results, task, b) - _drop(results, task, method),
                    max(_std(results, task, method, "general_mean"), _std(results, task, b, "general_mean")))
                   for b in ("FFT", "LoRA")]
        verdicts = [_verdict(margin, noise) for margin, noise in margins]
        verdict = next((v for v in verdicts if "not" in v), next((v for v in verdicts if "noise" in v), "holds"))
        lines.append(f"| {task} | {method} loses less general ability than FFT and LoRA | {verdict} | "
                     f"drop {_drop(results, task, method) * 100:+.1f} vs FFT {_drop(results, task, 'FFT') * 100:+.1f},"
                     f" LoRA {_drop(results, task, 'LoRA') * 100:+.1f} |")
    rand = _gain(results, task, "Random experts")
    best = max(ESFT_MAIN, key=lambda m: _gain(results, task, m))
    noise = max(_std(results, task, best, "test_accuracy"), _std(results, task, "Random experts", "test_accuracy"))
    lines.append(f"| {task} | scored experts beat random experts (same count) | "
                 f"{_verdict(_gain(results, task, best) - rand, noise)} | "
                 f"{best} gain {_gain(results, task, best) * 100:+.1f} vs random {rand * 100:+.1f} |")
    return lines


def claims(results: dict[str, Any]) -> list[str]:
    """The acceptance claims, one verdict per task and method, with the numbers behind it.

    A verdict is "within noise" when the margin is no larger than the larger of the two seed stds.
    """
    lines = ["| Task | Claim | Verdict | Evidence (exact-match points) |", "|---|---|---|---|"]
    for task in results["config"]["tasks"]:
        lines += _claim_rows(results, task)
    share = max(_m(_row(results, t, m), "adapter_bytes") for t in results["config"]["tasks"] for m in ESFT_MAIN)
    share /= _model_bytes(results)
    verdict = "holds" if share <= 0.15 else "**does not hold**"
    lines.append(f"| all | ESFT adapter ≤ 15% of the model's bytes | {verdict} | "
                 f"largest ESFT-Token/Gate adapter {share:.1%} of the fp32 model |")
    return lines


def scoring_finding(results: dict[str, Any]) -> tuple[list[str], str]:
    """Compare token/gate x all/answer scoring per task; returns table lines and the best method on average.

    The best is the highest mean task exact match over tasks; ties (to 0.1 point) go to the lower val. loss.
    """
    tasks = results["config"]["tasks"]
    lines = ["| Scoring | " + " | ".join(f"{t} task EM" for t in tasks) + " | Mean task EM | Mean general EM | "
             "Mean val. loss | Experts trained |", "|---" * (len(tasks) + 5) + "|"]
    summary = {}
    for method in SCORING:
        rows = [_row(results, t, method) for t in tasks]
        if any(r is None for r in rows):
            continue
        summary[method] = [float(np.mean([_m(r, k) for r in rows]))
                           for k in ("test_accuracy", "general_mean", "val_loss", "n_experts")]
        task_em, general, val_loss, n_experts = summary[method]
        per_task = " | ".join(_pm(r, "test_accuracy") for r in rows)
        lines.append(f"| {method} | {per_task} | {task_em * 100:.1f} | {general * 100:.1f} | {val_loss:.3f} | "
                     f"{n_experts:.0f} |")
    best = max(summary, key=lambda m: (round(summary[m][0], 3), -summary[m][2])) if summary else ""
    return lines, best


def plot_methods(results: dict[str, Any], out_png: str | Path) -> Path:
    """Per task: task and general exact match of every method (mean ± std), base levels dashed."""
    tasks = results["config"]["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in results["table"] if r["task"] == task]
        x = np.arange(len(rows))
        for offset, key, label in ((-0.2, "test_accuracy", "task"), (0.2, "general_mean", "general")):
            ax.bar(x + offset, [_m(r, key) for r in rows], 0.4, yerr=[r[key]["std"] for r in rows], label=label,
                   capsize=2)
        base = _base(results, task)
        ax.axhline(base["test_accuracy"], color="C0", ls="--", lw=1)
        ax.axhline(base["general_mean"], color="C1", ls="--", lw=1)
        ax.set_xticks(x, [r["method"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{task} ({TASKS[task].kind})")
    axes[0][0].set_ylabel("exact match (dashed: base model)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def plot_tradeoff(results: dict[str, Any], out_png: str | Path) -> Path:
    """Task gain against general-ability drop, one point per (task, method), with std error bars."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = dict(zip(results["config"]["tasks"], "osD^v", strict=False))
    names = list(dict.fromkeys(r["method"] for r in results["table"]))
    for row in results["table"]:
        gain, drop = _gain(results, row["task"], row["method"]), _drop(results, row["task"], row["method"])
        ax.errorbar(drop, gain, xerr=row["general_mean"]["std"], yerr=row["test_accuracy"]["std"],
                    marker=markers[row["task"]], color=f"C{names.index(row['method']) % 10}", ls="none", ms=6)
    for i, name in enumerate(names):
        ax.plot([], [], "s", color=f"C{i % 10}", label=name)
    for task, marker in markers.items():
        ax.plot([], [], marker, color="gray", label=task)
    ax.set_xlabel("general-ability drop (exact match, lower is better)")
    ax.set_ylabel("task gain over base (exact match)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def plot_sweep(results: dict[str, Any], out_png: str | Path) -> Path:
    """Seed-0 sweep: task gain against general drop for every learning rate, one line per method."""
    tasks = results["config"]["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False)
    names = list(dict.fromkeys(r["method"] for r in results["sweep"]))
    for ax, task in zip(axes[0], tasks, strict=True):
        base = _base(results, task)
        for i, name in enumerate(names):
            runs = sorted((r for r in results["sweep"] if r["task"] == task and r["method"] == name),
                          key=lambda r: r["learning_rate"])
            drops = [base["general_mean"] - r["general_mean"] for r in runs]
            gains = [r["test_accuracy"] - base["test_accuracy"] for r in runs]
            ax.plot(drops, gains, "-o", color=f"C{i % 10}", ms=3, label=name, lw=1)
            ax.annotate(f"{runs[-1]['learning_rate']:.0e}", (drops[-1], gains[-1]), fontsize=5)
        ax.set_title(f"{task}: each LR of the sweep (seed 0)")
        ax.set_xlabel("general-ability drop")
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
    axes[0][0].set_ylabel("task gain over base")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def sweep_table(results: dict[str, Any]) -> list[str]:
    """Every seed-0 run of the learning-rate sweep (chosen rates in bold)."""
    chosen = {(r["task"], r["method"]): r["learning_rate"] for r in results["table"]}
    lines = ["| Task | Method | LR | Val. EM | Val. loss | Test EM | General EM |", "|---|---|---|---|---|---|---|"]
    for r in results["sweep"]:
        lr = f"{r['learning_rate']:.0e}"
        lr = f"**{lr}**" if chosen.get((r["task"], r["method"])) == r["learning_rate"] else lr
        lines.append(f"| {r['task']} | {r['method']} | {lr} | {r['val_accuracy'] * 100:.1f} | {r['val_loss']:.3f} | "
                     f"{r['test_accuracy'] * 100:.1f} | {r['general_mean'] * 100:.1f} |")
    return lines


def _init_control(results: dict[str, Any]) -> list[str]:
    if "routing_init" not in results:
        return []
    s = routing_summary(results["routing_init"])
    return ["", f"Control: the same model *before* pretraining (random routers) gives concentration "
            f"{s['concentration_gate']:.0%} (gate) and same-task overlap {s['same_task_overlap']:.2f}, but cross-task "
            f"overlap {s['cross_task_overlap']:.2f}: random routers already concentrate by character identity, so "
            "concentration alone is not evidence of specialisation; the drop in cross-task overlap is."]


def routing_section(results: dict[str, Any], image: Callable[[str], str]) -> list[str]:
    """Concentration per task and the overlap summary, with the two figures."""
    routing = results["routing"]
    s = routing_summary(routing)
    lines = [
        f"Top {routing['fraction']:.0%} of experts per layer carry **{s['concentration_gate']:.0%} of the gate "
        f"mass** ({s['concentration_token']:.0%} of token choices) on average over tasks, against "
        f"{s['uniform']:.0%} for uniform routing. Top-expert overlap between two halves of the same task's data: "
        f"**{s['same_task_overlap']:.2f}**; between different pretraining tasks: **{s['cross_task_overlap']:.2f}**. "
        "A fine-tuning task that reuses a pretraining skill routes like it (see the heatmap rows).",
        *_init_control(results),
        "",
        "| Task | Kind | Top-20% share (gate) | Top-20% share (token) | Same-task overlap |",
        "|---|---|---|---|---|",
    ]
    for i, task in enumerate(routing["tasks"]):
        c = routing["concentration"][task]
        lines.append(f"| {task} | {TASKS[task].kind} | {c['gate']:.1%} | {c['token']:.1%} | "
                     f"{routing['overlap'][i][i]:.2f} |")
    return lines + ["", image("routing_concentration.png"), "", image("routing_overlap.png")]
