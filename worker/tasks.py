"""The Celery tasks: one per pipeline step, each ``esft.<step>(job_id, dispatch_id)`` -> ``runner.run_step``.

Tasks are thin adapters registered in one loop; retries cover only ``TransientError`` (database unavailable),
with exponential backoff and jitter.
"""

from __future__ import annotations

from celery import Task

from api.core.logs import job_context
from api.core.queue import STEPS, TASK_NAMES
from worker.app import app, queue, settings
from worker.runner import TransientError, run_step

_RETRY = {"autoretry_for": (TransientError,), "retry_backoff": 2, "retry_jitter": True, "max_retries": 5}


def _register(step: str) -> Task:
    def run(job_id: str, dispatch_id: str) -> str:
        with job_context(job_id):  # every log line of the step carries the job id
            return run_step(step, job_id, dispatch_id, settings=settings, queue=queue)

    run.__name__ = run.__qualname__ = step
    run.__doc__ = f"Run the {step!r} step of a job (skipped unless this dispatch is current)."
    return app.task(name=TASK_NAMES[step], **_RETRY)(run)


TASKS: dict[str, Task] = {step: _register(step) for step in STEPS}
