"""In-process stand-ins for the broker, for tests and notebooks: run pipeline steps without Celery.

``InlineQueue`` records sends and ``drain()`` runs them in order; ``ThreadQueue`` runs them on a background
thread as a one-process worker would. Both call the same ``runner.run_step`` the Celery tasks call.
"""

from __future__ import annotations

import queue as queue_module
import threading

from api.core.settings import Settings
from worker.library import Library
from worker.runner import run_step


class InlineQueue:
    def __init__(self, settings: Settings, lib: Library | None = None):
        self.settings, self.lib = settings, lib
        self.sent: list[tuple[str, str, str]] = []
        self.outcomes: list[tuple[str, str]] = []

    def send(self, step: str, job_id: str, dispatch_id: str) -> None:
        self.sent.append((step, job_id, dispatch_id))

    def run_next(self) -> str:
        step, job_id, dispatch_id = self.sent.pop(0)
        outcome = run_step(step, job_id, dispatch_id, settings=self.settings, queue=self, lib=self.lib)
        self.outcomes.append((step, outcome))
        return outcome

    def drain(self, max_steps: int = 50) -> list[tuple[str, str]]:
        for _ in range(max_steps):
            if not self.sent:
                break
            self.run_next()
        return self.outcomes


class ThreadQueue:
    """A single background consumer thread; ``close()`` stops it."""

    def __init__(self, settings: Settings, lib: Library | None = None):
        self.settings, self.lib = settings, lib
        self._items: queue_module.Queue = queue_module.Queue()
        self._thread = threading.Thread(target=self._consume, name="esft-thread-queue", daemon=True)
        self._thread.start()

    def send(self, step: str, job_id: str, dispatch_id: str) -> None:
        self._items.put((step, job_id, dispatch_id))

    def _consume(self) -> None:
        while (item := self._items.get()) is not None:
            run_step(*item, settings=self.settings, queue=self, lib=self.lib)

    def close(self) -> None:
        self._items.put(None)
        self._thread.join(timeout=60)
