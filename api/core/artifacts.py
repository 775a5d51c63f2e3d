"""The files a job leaves in its folder (``jobs/<job id>/`` in storage): their names and content types.

Names the library writes (metrics, train report) come from ``esft.constants``; the rest are the service's own.
The worker writes these files and the API serves exactly these names, so a download never names another path.
"""

from __future__ import annotations

from esft.constants import METRICS_NAME, TRAIN_REPORT_NAME

VALIDATION_REPORT = "validation_report.json"
SCORES = "expert_scores.json"
EXPERT_CONFIG = "expert_config.json"
TRAIN_DIR = "train"
EVAL_RESULTS = "eval_results.json"
RETENTION = "retention.json"
RETENTION_PNG = "retention.png"
SCORES_PNG = "scores_heatmap.png"
LOSS_PNG = "loss_curve.png"
METRICS_CSV = "metrics.csv"
METRICS_JSONL = METRICS_NAME
TRAIN_REPORT = TRAIN_REPORT_NAME

CONTENT_TYPES = {
    VALIDATION_REPORT: "application/json",
    SCORES: "application/json",
    EXPERT_CONFIG: "application/json",
    SCORES_PNG: "image/png",
    LOSS_PNG: "image/png",
    METRICS_CSV: "text/csv",
    METRICS_JSONL: "application/x-ndjson",
    TRAIN_REPORT: "application/json",
    EVAL_RESULTS: "application/json",
    RETENTION: "application/json",
    RETENTION_PNG: "image/png",
}


def job_key(job_id: str) -> str:
    """The storage key of a job's folder."""
    return f"jobs/{job_id}"


def adapter_key(job_id: str) -> str:
    """The storage key of the adapter a job registered."""
    return f"adapters/{job_id}"
