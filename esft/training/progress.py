"""Progress events shared by the CLI progress bar and the service's job events, and the JSONL file that
carries them out of a multi-process run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Phase = Literal["scoring", "training", "evaluating"]


@dataclass
class ProgressEvent:
    """One progress report. Optional fields are None when they do not apply to the phase."""

    phase: Phase
    step: int
    total_steps: int
    loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    trained_tokens: int | None = None
    grad_norm: float | None = None
    checkpoint: str | None = None  # path of a checkpoint written at this step

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


ProgressCallback = Callable[[ProgressEvent], None]
StopCallback = Callable[[], bool]


class ProgressFile:
    """Rank 0's training progress as JSON lines, for a process that follows the run from outside.

    The service's worker launches multi-process training (``esft train --progress-jsonl PATH`` under torchrun)
    and streams it into the job's events from this file: one object per optimizer step (``step``,
    ``total_steps``, ``loss``, ``tokens_per_s``, and the other ``ProgressEvent`` fields that are set), then
    ``{"event": "checkpoint", "step", "path"}`` after a checkpoint, and ``{"event": "done", "step"}`` or
    ``{"event": "stopped", "step"}`` at the end. Each record is one ``write`` of a whole line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.step = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase != "training":
            return
        self.step = event.step
        self._append({k: v for k, v in event.to_dict().items() if k not in ("phase", "checkpoint")})
        if event.checkpoint:
            self._append({"event": "checkpoint", "step": event.step, "path": event.checkpoint})

    def done(self) -> None:
        self._append({"event": "done", "step": self.step})

    def stopped(self) -> None:
        self._append({"event": "stopped", "step": self.step})

    def _append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


class ProgressFileReader:
    """Follows a ``ProgressFile`` as it grows: ``read()`` returns the records completed since the last call.

    A line still being written (no newline yet) waits for the next call; a line that is not a JSON object
    is skipped, so a damaged file never stops the follower.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records
