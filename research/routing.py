"""Routing analysis of a model on tasks: concentration per task and top-expert overlap across tasks.

These are the paper's Figures 2 and 3. For a task, each MoE layer's experts are ranked by their score
(token or gate, ``esft.scoring``); *concentration* is the share of the layer's score carried by its top
``fraction`` of experts (uniform routing gives ``fraction``), averaged over layers. *Overlap* of two
tasks is ``|top(A) & top(B)| / k`` per layer, averaged; same-task overlap compares two disjoint halves
of one task's data, so it says how stable the ranking is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from esft.config import ScoringConfig  # noqa: E402
from esft.evaluation import tokenize_rows  # noqa: E402
from esft.scoring.scores import ExpertScores, score_experts  # noqa: E402
from esft.synthetic.tasks import TASKS, Row  # noqa: E402


def task_scores(model: nn.Module, tokenizer, rows: Sequence[Row], *, response_only: bool = False) -> ExpertScores:
    """Token and gate scores of every expert on ``rows`` (all tokens, or answer tokens only)."""
    config = ScoringConfig(n_sample_tokens=10**9, batch_size=64, seq_len=256, response_only=response_only)
    return score_experts(model, tokenize_rows(rows, tokenizer), config, pad_token_id=tokenizer.pad_token_id)


def top_count(num_experts: int, fraction: float) -> int:
    """How many experts the top ``fraction`` holds (at least one)."""
    return max(1, math.floor(num_experts * fraction + 1e-9))


def _top(values: Sequence[float], k: int) -> list[int]:
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


def concentration(scores: ExpertScores, fraction: float = 0.2, score_function: str = "gate") -> list[float]:
    """Per layer, the share of the layer's normalised score held by its top ``fraction`` of experts."""
    shares = []
    for _, layer in sorted(scores.layers.items()):
        values = layer.get(score_function)
        shares.append(sum(values[i] for i in _top(values, top_count(len(values), fraction))))
    return shares


def overlap(a: ExpertScores, b: ExpertScores, fraction: float = 0.2, score_function: str = "gate") -> float:
    """Mean over layers of ``|top(a) & top(b)| / k`` with ``k`` the top ``fraction`` of experts."""
    values = []
    for index, layer_a in sorted(a.layers.items()):
        va, vb = layer_a.get(score_function), b.layers[index].get(score_function)
        k = top_count(len(va), fraction)
        values.append(len(set(_top(va, k)) & set(_top(vb, k))) / k)
    return float(np.mean(values))


@dataclass
class RoutingReport:
    """Concentration per task and the task x task overlap matrix (diagonal: half vs half of one task)."""

    tasks: list[str]
    fraction: float
    uniform: float
    concentration: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> {"token", "gate"}
    overlap: list[list[float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """See ``routing_summary``."""
        return routing_summary(asdict(self))


def routing_summary(report: dict[str, Any]) -> dict[str, float]:
    """Means of a ``RoutingReport`` (as a dict): concentration, same-task overlap and cross-task overlap.

    Cross-task overlap is taken over pairs of *general* (pretraining) tasks only: a fine-tuning task such as
    ``reverse_plus`` is the same skill as ``reverse``, and its high overlap with it is expected, not cross-task.
    """
    tasks, matrix = report["tasks"], report["overlap"]
    general = [i for i, t in enumerate(tasks) if TASKS[t].kind == "general"]
    off = [matrix[i][j] for i in general for j in general if i != j]
    conc = report["concentration"].values()
    return {
        "uniform": report["uniform"],
        "concentration_gate": float(np.mean([c["gate"] for c in conc])),
        "concentration_token": float(np.mean([c["token"] for c in conc])),
        "same_task_overlap": float(np.mean([matrix[i][i] for i in range(len(tasks))])),
        "cross_task_overlap": float(np.mean(off)) if off else float("nan"),
    }


def analyse(model: nn.Module, tokenizer, rows: dict[str, list[Row]], fraction: float = 0.2) -> RoutingReport:
    """Score every task on two disjoint halves of its rows, and measure concentration and overlap."""
    halves = {name: (task_scores(model, tokenizer, r[::2]), task_scores(model, tokenizer, r[1::2]))
              for name, r in rows.items()}
    names = list(rows)
    num_experts = len(next(iter(halves[names[0]][0].layers.values())).token)
    report = RoutingReport(names, fraction, top_count(num_experts, fraction) / num_experts)
    for name, (first, _) in halves.items():
        report.concentration[name] = {
            fn: float(np.mean(concentration(first, fraction, fn))) for fn in ("token", "gate")
        }
    report.overlap = [[overlap(halves[a][0], halves[b][1], fraction) for b in names] for a in names]
    return report


def plot_concentration(report: RoutingReport, out_png: str | Path) -> Path:
    """Bars: share of token choices and of gate mass in each task's top experts, against uniform."""
    x = np.arange(len(report.tasks))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(x)), 3.6))
    for offset, fn in ((-0.2, "token"), (0.2, "gate")):
        ax.bar(x + offset, [report.concentration[t][fn] for t in report.tasks], 0.4, label=f"{fn} score")
    ax.axhline(report.uniform, color="k", ls="--", lw=1, label=f"uniform ({report.uniform:.2f})")
    ax.set_xticks(x, report.tasks, rotation=30, ha="right")
    ax.set_ylabel(f"share held by top {report.fraction:.0%} experts")
    ax.set_title("Routing concentration per task (mean over MoE layers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def plot_overlap(report: RoutingReport, out_png: str | Path) -> Path:
    """Heatmap of top-expert overlap between tasks (rows: first half, columns: second half of the data)."""
    matrix = np.array(report.overlap)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(report.tasks), 0.6 * len(report.tasks) + 0.8))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(report.tasks)), report.tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(report.tasks)), report.tasks)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w" if value < 0.6 else "k")
    ax.set_title(f"Top-{report.fraction:.0%} expert overlap (gate score)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)
