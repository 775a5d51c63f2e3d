"""Progress and liveness of a running step: events and job fields from ProgressEvent; lease and stop requests.

The heartbeat thread renews the job's lease and turns a stop request (cancel, pause, worker shutdown: the
job's ``stop_reason``) or a lost lease into ``should_stop()``; the training loop polls it every step, saves a
checkpoint and stops, so the device is free within about one heartbeat interval.

Every write of a step that is not on the jobs row carries the step's fencing token (``runs.fenced``): metrics
events, checkpoint rows and log events; and before each training step's checkpoint the token is checked, so a
stalled worker whose lease was taken over raises ``LeaseLost`` instead of writing beside its replacement.
Metrics events of a step number already recorded (by a run that crashed after its last checkpoint) are not
written again: each step appears at most once among a job's metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.core import runs
from api.core.db.models import Checkpoint, Job, JobEvent
from api.core.db.session import session_scope
from api.services.common import new_id

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """A stop was requested (cancel, pause, shutdown) or this worker lost its lease while a step was running."""


class LeaseLost(Cancelled):
    """Another claim holds the job now (this worker stalled past its lease): write nothing more."""


class Heartbeat:
    """Context manager: a daemon thread that renews the lease every ``interval`` seconds."""

    def __init__(self, url: str, job_id: str, owner: str, *, token: int, ttl_s: float, interval_s: float):
        self.url, self.job_id, self.owner, self.token = url, job_id, owner, token
        self.ttl_s, self.interval_s = ttl_s, interval_s
        self.stop_requested = threading.Event()
        self.lease_lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()

    def fenced_should_stop(self) -> bool:
        """``should_stop`` for training, polled before each checkpoint: raises ``LeaseLost`` on a stale token."""
        with session_scope(self.url) as session:
            holds = runs.holds_token(session, self.job_id, self.token)
        if not holds:
            with session_scope(self.url) as session:
                status = session.scalar(select(Job.status).where(Job.id == self.job_id))
            if status not in runs.TERMINAL:  # cancelled: stop (and checkpoint) as asked, not as a lost lease
                self.lease_lost.set()
                raise LeaseLost(f"job {self.job_id}: fencing token {self.token} is stale")
        return self.should_stop()

    def beat(self) -> None:
        with session_scope(self.url) as session:
            beat = runs.heartbeat(session, self.job_id, self.owner, self.ttl_s)
        if not beat.holds_lease:
            self.lease_lost.set()
        if beat.stop_reason or not beat.holds_lease:
            self.stop_requested.set()

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # a flaky DB must not kill the step; the lease just ages
                log.exception("heartbeat for %s failed", self.job_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join(timeout=self.interval_s + 5)


class ProgressReporter:
    """Callable for ``progress=``: writes throttled metrics events, job progress and checkpoint rows."""

    def __init__(self, url: str, job_id: str, owner: str, heartbeat: Heartbeat, *, throttle_s: float):
        self.url, self.job_id, self.owner = url, job_id, owner
        self.heartbeat = heartbeat
        self.throttle_s = throttle_s
        self._last = 0.0
        self._recorded: dict[str, int] | None = None  # highest step number with a metrics event, by phase

    @property
    def token(self) -> int:
        return self.heartbeat.token

    def _already_recorded(self, session, phase: str, step: int) -> bool:
        if self._recorded is None:
            self._recorded = {}
            query = select(JobEvent.data).where(JobEvent.job_id == self.job_id, JobEvent.type == "metrics")
            rows = session.scalars(query)
            for data in rows:
                if data and isinstance(data.get("step"), int):
                    name = data.get("phase", "")
                    self._recorded[name] = max(self._recorded.get(name, 0), data["step"])
        return step <= self._recorded.get(phase, 0)

    def __call__(self, event: Any) -> None:
        if event.phase != "training" and self.heartbeat.should_stop():
            raise Cancelled(f"stopped during {event.phase}")  # scoring has no should_stop of its own
        checkpoint = getattr(event, "checkpoint", None)
        if checkpoint:
            self.record_checkpoint(event.step, checkpoint, event.to_dict())
        final = event.step >= event.total_steps
        if not final and not checkpoint and time.monotonic() - self._last < self.throttle_s:
            return
        self._last = time.monotonic()
        self.write(event)

    def write(self, event: Any) -> None:
        data = metrics_data(event)
        with session_scope(self.url) as session:
            values: dict[str, Any] = {}
            if event.phase == "training":
                values = {
                    "progress": round(event.step / max(event.total_steps, 1), 4),
                    "seconds_remaining": event.eta_s,
                    "trained_tokens": event.trained_tokens,
                }
            if not runs.fenced(session, self.job_id, self.token, **values):
                return
            if self._already_recorded(session, event.phase, event.step):
                session.commit()
                return
            message = f"{event.phase.capitalize()} step {event.step}/{event.total_steps}"
            if event.loss is not None:
                message += f": loss {event.loss:.4f}"
            runs.add_event(session, self.job_id, message, type="metrics", data=data)
            session.commit()
            self._recorded[event.phase] = event.step

    def record_checkpoint(self, step: int, path: str, metrics: dict[str, Any]) -> None:
        try:
            with session_scope(self.url) as session:
                if not runs.fenced(session, self.job_id, self.token, ended_ok=True):
                    return
                session.add(
                    Checkpoint(
                        id=new_id("ftckpt"),
                        job_id=self.job_id,
                        step_number=step,
                        path=path,
                        metrics=metrics_data_from_dict(metrics),
                    )
                )
        except IntegrityError:
            pass  # recorded before a restart; checkpoints of a step are identical


def metrics_data_from_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's metrics vocabulary (step, train_loss, valid_loss, ...) plus ours."""
    names = {"loss": "train_loss", "val_loss": "valid_loss"}
    skip = {"checkpoint", "phase"}
    return {names.get(k, k): v for k, v in raw.items() if k not in skip}


def metrics_data(event: Any) -> dict[str, Any]:
    return {"phase": event.phase, **metrics_data_from_dict(event.to_dict())}
