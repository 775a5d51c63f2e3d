"""Enqueueing pipeline steps by task name (``send_task``), so the control plane never imports the worker.

The Celery configuration lives here too (``celery_config``): the worker builds its app from the same dict, so
producer and consumer always agree on broker, queue and serializer.
"""

from __future__ import annotations

from typing import Any, Protocol

from api.core.private import private_dir
from api.core.settings import Settings

STEPS = ("validate", "score", "select", "train", "evaluate", "register")
TASK_NAMES = {step: f"esft.{step}" for step in STEPS}


class Queue(Protocol):
    def send(self, step: str, job_id: str, dispatch_id: str) -> None: ...


def ensure_broker_dirs(settings: Settings) -> None:
    """kombu's filesystem transport does not create its folders; do it (private: 0700) before anyone connects."""
    if settings.broker_url.startswith("filesystem"):
        private_dir(settings.broker_dir)
        for name in ("queue", "control", "processed"):
            private_dir(settings.broker_dir / name)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Broker, serialization and delivery policy shared by the API (producer) and workers (consumers)."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_default_queue": settings.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "broker_transport_options": {},
    }
    if settings.broker_url.startswith("filesystem"):
        ensure_broker_dirs(settings)
        queue_dir = str(settings.broker_dir / "queue")
        config["broker_transport_options"] = {
            "data_folder_in": queue_dir,
            "data_folder_out": queue_dir,
            "control_folder": str(settings.broker_dir / "control"),
            "processed_folder": str(settings.broker_dir / "processed"),
            "store_processed": False,
            "polling_interval": settings.broker_polling_interval,
        }
    elif settings.broker_url.startswith(("redis", "rediss")):
        # Above the longest step, so Redis never redelivers a running task; the DB lease guards the rest.
        config["broker_transport_options"] = {"visibility_timeout": settings.redis_visibility_timeout}
    return config


class CeleryQueue:
    """Sends ``esft.<step>(job_id, dispatch_id)`` to the configured queue: the one sender of the API and workers.

    The API builds a producer-only Celery app on first send; a worker passes its own ``app`` so the next
    step leaves through the worker's broker connection.
    """

    def __init__(self, settings: Settings, app=None):
        self.settings = settings
        self._app = app

    @property
    def app(self):
        if self._app is None:
            from celery import Celery

            self._app = Celery("esft-producer")
            self._app.conf.update(celery_config(self.settings))
        return self._app

    def send(self, step: str, job_id: str, dispatch_id: str) -> None:
        self.app.send_task(TASK_NAMES[step], args=[job_id, dispatch_id], queue=self.settings.queue)


class RecordingQueue:
    """A queue that only records what was sent (for tests and dry runs)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, step: str, job_id: str, dispatch_id: str) -> None:
        self.sent.append((step, job_id, dispatch_id))
