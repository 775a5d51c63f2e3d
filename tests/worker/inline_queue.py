"""An in-process stand-in for the broker: ``InlineQueue`` records sends and ``drain()`` runs them in order.

It calls the same ``runner.run_step`` the Celery tasks call, with the library ``worker.library`` holds.
"""

from __future__ import annotations

from api.core.settings import Settings
from worker.runner import run_step


class InlineQueue:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.sent: list[tuple[str, str, str]] = []
        self.outcomes: list[tuple[str, str]] = []

    def send(self, step: str, job_id: str, dispatch_id: str) -> None:
        self.sent.append((step, job_id, dispatch_id))

    def run_next(self) -> str:
        step, job_id, dispatch_id = self.sent.pop(0)
        outcome = run_step(step, job_id, dispatch_id, settings=self.settings, queue=self)
        self.outcomes.append((step, outcome))
        return outcome

    def drain(self, max_steps: int = 50) -> list[tuple[str, str]]:
        for _ in range(max_steps):
            if not self.sent:
                break
            self.run_next()
        return self.outcomes
