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

from esft.experiments.tasks import TASKS  # noqa: E402

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


def _gain(results: dict[str, Any], task: str, method: str) -> float:
    return _m(_row(results, task, method), "test_accuracy") - _base(results, task)["test_accuracy"]


def _drop(results: dict[str, Any], task: str, method: str) -> float:
    return _base(results, task)["general_mean"] - _m(_row(results, task, method), "general_mean")


def _verdict(ok: bool) -> str:
    return "holds" if ok else "**does not hold**"


def _claim_rows(results: dict[str, Any], task: str) -> list[str]:
    fft_gain, lines = _gain(results, task, "FFT"), []
    for method in ESFT_MAIN:
        if _row(results, task, method) is None:
            continue
        ratio = _gain(results, task, method) / fft_gain if fft_gain > 0 else float("nan")
        lines.append(f"| {task} | {method} reaches ≥ 90% of FFT's task gain | {_verdict(ratio >= 0.9)} | "
                     f"gain {_gain(results, task, method) * 100:+.1f} vs FFT {fft_gain * 100:+.1f} ({ratio:.0%}) |")
        worse = [b for b in ("FFT", "LoRA") if _drop(results, task, method) >= _drop(results, task, b)]
        lines.append(f"| {task} | {method} loses less general ability than FFT and LoRA | {_verdict(not worse)} | "
                     f"drop {_drop(results, task, method) * 100:+.1f} vs FFT {_drop(results, task, 'FFT') * 100:+.1f},"
                     f" LoRA {_drop(results, task, 'LoRA') * 100:+.1f} |")
    rand = _gain(results, task, "Random experts")
    best = max(_gain(results, task, m) for m in ESFT_MAIN)
    lines.append(f"| {task} | scored experts beat random experts (same count) | {_verdict(best > rand)} | "
                 f"best ESFT gain {best * 100:+.1f} vs random {rand * 100:+.1f} |")
    return lines


def claims(results: dict[str, Any]) -> list[str]:
    """The acceptance claims, one verdict per task and method, with the numbers behind it."""
    lines = ["| Task | Claim | Verdict | Evidence |", "|---|---|---|---|"]
    for task in results["config"]["tasks"]:
        lines += _claim_rows(results, task)
    share = max(_m(_row(results, t, m), "adapter_bytes") for t in results["config"]["tasks"] for m in ESFT_MAIN)
    share /= _model_bytes(results)
    lines.append(f"| all | ESFT adapter ≤ 15% of the model's bytes | {_verdict(share <= 0.15)} | "
                 f"largest ESFT-Token/Gate adapter {share:.1%} of the fp32 model |")
    return lines


def scoring_finding(results: dict[str, Any]) -> tuple[list[str], str]:
    """Compare token/gate x all/answer scoring across tasks; returns table lines and the recommended method."""
    tasks = results["config"]["tasks"]
    lines = ["| Scoring | Mean task EM | Mean general EM | Mean val. loss | Experts trained (all layers) |",
             "|---|---|---|---|---|"]
    summary = {}
    for method in SCORING:
        rows = [_row(results, t, method) for t in tasks]
        if any(r is None for r in rows):
            continue
        summary[method] = [float(np.mean([_m(r, k) for r in rows]))
                           for k in ("test_accuracy", "general_mean", "val_loss", "n_experts")]
        task_em, general, val_loss, n_experts = summary[method]
        lines.append(f"| {method} | {task_em * 100:.1f} | {general * 100:.1f} | {val_loss:.3f} | {n_experts:.1f} |")
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


def routing_section(results: dict[str, Any], image: Callable[[str], str]) -> list[str]:
    """Concentration per task and the overlap summary, with the two figures."""
    s, routing = results["routing_summary"], results["routing"]
    lines = [
        f"Top {routing['fraction']:.0%} of experts per layer carry **{s['concentration_gate']:.0%} of the gate "
        f"mass** ({s['concentration_token']:.0%} of token choices) on average over tasks, against "
        f"{s['uniform']:.0%} for uniform routing. Top-expert overlap between two halves of the same task's data: "
        f"**{s['same_task_overlap']:.2f}**; between different tasks: **{s['cross_task_overlap']:.2f}**.",
        "",
        "| Task | Kind | Top-20% share (gate) | Top-20% share (token) | Same-task overlap |",
        "|---|---|---|---|---|",
    ]
    for i, task in enumerate(routing["tasks"]):
        c = routing["concentration"][task]
        lines.append(f"| {task} | {TASKS[task].kind} | {c['gate']:.1%} | {c['token']:.1%} | "
                     f"{routing['overlap'][i][i]:.2f} |")
    return lines + ["", image("routing_concentration.png"), "", image("routing_overlap.png")]
