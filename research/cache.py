"""A results cache for comparison runs, so an interrupted or extended comparison only runs what is new.

Each finished run is appended to a JSONL file under a key that names everything that determines its result:
the base model's pretraining config, the method (less its learning-rate grid), task, rate, seed, budget,
data sizes, experts and the evaluation (``research.runs.EVALUATION``). Widening a grid or adding a seed
therefore reruns only the new runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from research.runs import EVALUATION, Job


def job_key(job: Job, model_key: str) -> str:
    """A stable hash of what determines a run's result (not where the model lives or how many threads)."""
    data = dataclasses.asdict(job)
    data.pop("model_dir")
    data.pop("threads")
    data["method"].pop("learning_rates")
    data["experts"] = {str(k): sorted(v) for k, v in sorted(job.experts.items())}
    data["model"] = model_key
    data["evaluation"] = EVALUATION
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


class RunCache:
    """Finished runs by ``job_key``, persisted one JSON line per run (``path=None``: nothing is kept)."""

    def __init__(self, path: str | Path | None, model_key: str):
        self.path = Path(path) if path is not None else None
        self.model_key = model_key
        self.results: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.results[entry["key"]] = entry["result"]

    def get(self, job: Job) -> dict[str, Any] | None:
        return self.results.get(job_key(job, self.model_key))

    def put(self, job: Job, result: dict[str, Any]) -> dict[str, Any]:
        key = job_key(job, self.model_key)
        self.results[key] = result
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, "result": result}, sort_keys=True) + "\n")
        return result
