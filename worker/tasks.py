"""One thin Celery task per pipeline step; each takes ``(job_id, dispatch_id)``; see ``runner.run_step``."""

from __future__ import annotations

from worker.app import app, queue, settings
from worker.runner import TransientError, run_step

_RETRY = {"autoretry_for": (TransientError,), "retry_backoff": 2, "retry_jitter": True, "max_retries": 5}


def _run(step: str, job_id: str, dispatch_id: str) -> str:
    return run_step(step, job_id, dispatch_id, settings=settings, queue=queue)


@app.task(name="esft.validate", **_RETRY)
def validate(job_id: str, dispatch_id: str) -> str:
    return _run("validate", job_id, dispatch_id)


@app.task(name="esft.score", **_RETRY)
def score(job_id: str, dispatch_id: str) -> str:
    return _run("score", job_id, dispatch_id)


@app.task(name="esft.select", **_RETRY)
def select(job_id: str, dispatch_id: str) -> str:
    return _run("select", job_id, dispatch_id)


@app.task(name="esft.train", **_RETRY)
def train(job_id: str, dispatch_id: str) -> str:
    return _run("train", job_id, dispatch_id)


@app.task(name="esft.evaluate", **_RETRY)
def evaluate(job_id: str, dispatch_id: str) -> str:
    return _run("evaluate", job_id, dispatch_id)


@app.task(name="esft.register", **_RETRY)
def register(job_id: str, dispatch_id: str) -> str:
    return _run("register", job_id, dispatch_id)
