"""Pictures people would rather look at than read: the expert-score heatmap, the loss curve and retention bars."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from esft.expert_config import ExpertConfig  # noqa: E402
from esft.scoring.scores import ExpertScores  # noqa: E402


def plot_scores(
    scores_path: str | Path,
    out_png: str | Path,
    expert_config_path: str | Path | None = None,
    *,
    score_function: str | None = None,
) -> Path:
    """Heatmap of per-layer expert scores (rows: MoE layers, columns: experts); selected experts boxed.

    Concentrated routing shows as a few bright cells per row: that is what ESFT exploits.
    """
    scores = ExpertScores.load(scores_path)
    config = ExpertConfig.load(expert_config_path) if expert_config_path else None
    fn = score_function or (config.score_function if config and config.score_function else "token")
    layers = sorted(scores.layers)
    width = max(len(scores.layers[i].get(fn)) for i in layers)
    grid = np.full((len(layers), width), np.nan)
    for row, i in enumerate(layers):
        values = scores.layers[i].get(fn)
        grid[row, : len(values)] = values
    fig, ax = plt.subplots(figsize=(min(max(6.5, 2 + width * 0.22), 24), 2.2 + len(layers) * 0.35))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=f"{fn} score (share of layer)")
    if config is not None:
        for row, i in enumerate(layers):
            for e in config.experts.get(i, []):
                ax.add_patch(plt.Rectangle((e - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
        n_total = sum(len(scores.layers[i].get(fn)) for i in layers)
        ax.set_title(f"Expert {fn} scores; red: {config.n_selected}/{n_total} selected (top_p={config.top_p})",
                     fontsize=10)
    else:
        ax.set_title(f"Expert {fn} scores per MoE layer ({scores.n_tokens} tokens)", fontsize=10)
    ax.set_xlabel("expert")
    ax.set_ylabel("decoder layer")
    ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    return _save(fig, out_png)


def plot_loss(metrics_path: str | Path, out_png: str | Path) -> Path:
    """Training loss per step, with validation loss where it was measured."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows if "loss" in r], [r["loss"] for r in rows if "loss" in r], label="train")
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("ESFT training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out_png)


def plot_retention(report: dict, out_png: str | Path) -> Path:
    """Base vs adapter score per general-ability file and on average (``esft.evaluation.retention`` report)."""
    rows = [*report["files"], {"name": "average", **report["average"]}]
    names = _short_labels([row["name"] for row in rows])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2), 4))
    for offset, key, colour in ((-0.2, "base", "#999999"), (0.2, "adapter", "#1f77b4")):
        ax.bar(x + offset, [row[key] or 0.0 for row in rows], width=0.4, label=key, color=colour)
    for i, row in enumerate(rows):
        if row.get("ratio") is not None:
            top = max(row["base"] or 0.0, row["adapter"] or 0.0)
            ax.annotate(f"{row['ratio']:.0%}", (i, top), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("score (0-100)")
    ratio = report["average"].get("ratio")
    ax.set_title("General ability: base vs adapter" + (f" ({ratio:.0%} kept)" if ratio is not None else ""))
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_png)


def _short_labels(names: list[str]) -> list[str]:
    """Names without a ``.jsonl`` extension and ``#index`` suffix, where the short names stay unique."""
    short = [re.sub(r"\.jsonl?(#\d+)?$", "", name) for name in names]
    return short if len(set(short)) == len(short) else names


def _save(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out
