"""Names and writers of the files a job leaves in its folder (``jobs/<job id>/`` in storage)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

VALIDATION_REPORT = "validation_report.json"
SCORES = "expert_scores.json"
EXPERT_CONFIG = "expert_config.json"
TRAIN_DIR = "train"
EVAL_RESULTS = "eval_results.json"
SCORES_PNG = "scores_heatmap.png"
LOSS_PNG = "loss_curve.png"
METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
TRAIN_REPORT = "train_report.json"


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: a reader sees the old file or the whole new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(source.read_bytes())
    os.replace(tmp, target)


def metrics_csv(metrics_jsonl: Path, out: Path) -> None:
    """One row per logged step, columns in a stable order (step first)."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    columns = sorted({key for row in rows for key in row if key != "checkpoint"} - {"step"})
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", *columns], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
