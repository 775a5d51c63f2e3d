"""Multi-device training for a job: torchrun as a subprocess that the job's step watches, streams and stops.

A job with ``resources.gpus`` N > 1 trains in N processes on this node: the step launches
``python -m torch.distributed.run --standalone --nproc-per-node N -m esft.cli train ... --progress-jsonl F``
in a session of its own, with the worker's first N devices (gloo processes on a CPU worker). While it runs,
the step keeps the job's lease (the runner's heartbeat), copies rank 0's progress file into the job's events
and checkpoints (the ``ProgressReporter`` of in-process jobs), and polls ``should_stop``: on cancel, pause,
worker shutdown or a lost lease it sends SIGTERM to every process of the run (the ranks checkpoint at the end
of their step and exit), then SIGKILL after ``stop_grace_s``, and returns only when none is left.

torchrun starts each rank in a session (process group) of its own, so killing the agent's group alone would
orphan the ranks: the launcher keeps track of every process the run has started instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from esft.cli_options import cli_args
from esft.constants import ADAPTER_CONFIG_NAME, TRAIN_REPORT_NAME
from esft.training.progress import ProgressEvent, ProgressFileReader
from worker.devices import visible_gpus
from worker.progress import Cancelled, ProgressReporter

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.jsonl"
LAUNCH_LOG = "launch.log"
_CLI_ERROR = re.compile(r"^error(?: \[(?P<param>[^\]]+)\])?: (?P<message>.+)$")


class LaunchFailed(Exception):
    """The run exited with an error; ``message`` is the CLI's own error line when it printed one."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


@dataclass
class Launch:
    """One torchrun invocation: the command, its environment and the files it writes in ``out_dir``'s parent."""

    nproc: int
    command: list[str]
    env: dict[str, str]
    progress_path: Path
    log_path: Path
    out_dir: Path


# Run a Python module with PR_SET_PDEATHSIG (Linux): when the step's process dies without stopping the run (its
# worker was SIGKILLed), the agent gets SIGTERM and stops its ranks as on a cancel, so a run never outlives the
# process that holds its job's lease (the reaper gives the job to another worker, which resumes it).
_ORPHAN_GUARD = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit("esft: the launching process is gone")
os.execv(sys.executable, [sys.executable, "-m", *sys.argv[2:]])
"""


def guarded(module: str, *args: str) -> list[str]:
    """The command ``python -m module args...``, ended by SIGTERM when this process dies (on Linux)."""
    if not sys.platform.startswith("linux"):
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-c", _ORPHAN_GUARD, str(os.getpid()), module, *args]


def device_env(nproc: int) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for the run: this worker's first ``nproc`` GPUs, or none (gloo ranks on CPU).

    Raises:
        LaunchFailed: the worker has GPUs but fewer than ``nproc``.
    """
    owned = visible_gpus()
    if not owned:
        return {"CUDA_VISIBLE_DEVICES": ""}
    if nproc > len(owned):
        raise LaunchFailed(
            f"The job asks for {nproc} devices but this worker has {len(owned)}; lower `resources.gpus` or "
            "run a worker with more devices (ESFT_DEVICE=cuda:0,1,...).",
            param="resources.gpus",
        )
    return {"CUDA_VISIBLE_DEVICES": ",".join(owned[:nproc])}


def train_launch(
    nproc: int,
    model_dir: Path,
    training_path: Path,
    expert_config: Path,
    out_dir: Path,
    config: Any,
    *,
    validation_path: Path | None = None,
    resume: bool = False,
    ep_size: int | None = None,
) -> Launch:
    """The ``esft train`` run under torchrun for a job; progress and the run's output go next to ``out_dir``."""
    progress_path, log_path = out_dir.parent / PROGRESS_FILE, out_dir.parent / LAUNCH_LOG
    command = guarded(
        "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "esft.cli", "train",
        "--model", str(model_dir), "--data", str(training_path), "--expert-config", str(expert_config),
        "--out", str(out_dir), "--progress-jsonl", str(progress_path), *cli_args(config),
    )  # fmt: skip
    if validation_path is not None:
        command += ["--validation-file", str(validation_path)]
    if resume:
        command.append("--resume")
    if ep_size is not None:
        command += ["--ep-size", str(ep_size)]  # experts sharded over ep_size ranks (esft.parallel.expert_parallel)
    env = {**os.environ, **device_env(nproc), "COLUMNS": "400"}  # COLUMNS: error lines unwrapped in the log
    return Launch(nproc, command, env, progress_path, log_path, out_dir)


@dataclass
class ProcessTree:
    """The processes of one run: the agent (leader of its own group) and every descendant seen so far.

    ``psutil.Process`` remembers each process's start time, so a pid reused after a rank exited is never
    signalled.
    """

    agent: subprocess.Popen
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def refresh(self) -> None:
        try:
            root = psutil.Process(self.agent.pid)
            for proc in [root, *root.children(recursive=True)]:
                self.seen.setdefault(proc.pid, proc)
        except psutil.NoSuchProcess:
            pass

    def alive(self) -> list[psutil.Process]:
        self.agent.poll()  # reap the agent: a zombie would still count as a member of its group
        return [p for p in self.seen.values() if _running(p)]

    def signal(self, sig: signal.Signals) -> None:
        if self.agent.poll() is None:
            _quietly(os.killpg, self.agent.pid, sig)
        for proc in self.alive():
            _quietly(proc.send_signal, sig)

    def stop(self, grace_s: float, poll_s: float = 0.2) -> None:
        """SIGTERM to every process (checkpoint and exit), SIGKILL to those left after ``grace_s``."""
        self.refresh()
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(poll_s)
        if self.alive():
            log.warning("run %s: processes left %.0f s after SIGTERM; killing them", self.agent.pid, grace_s)
            self.signal(signal.SIGKILL)
            psutil.wait_procs(self.alive(), timeout=10)
        self.agent.wait()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _quietly(send: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        send(*args)


class ProgressStream:
    """Rank 0's progress records -> the job's metrics events, progress fields and checkpoint rows."""

    def __init__(self, path: Path, reporter: ProgressReporter | None):
        self.reader, self.reporter = ProgressFileReader(path), reporter
        self.last: dict[str, Any] = {}
        self.outcome: str | None = None  # "done" or "stopped" once rank 0 wrote it

    def pump(self) -> None:
        for record in self.reader.read():
            kind = record.get("event")
            if kind is None and all(isinstance(record.get(k), int) for k in ("step", "total_steps")):
                self.last = record
                if self.reporter is not None:
                    self.reporter(ProgressEvent("training", **_event_fields(record)))
            elif kind == "checkpoint" and self.reporter is not None:
                self.reporter.record_checkpoint(record["step"], record["path"], {"phase": "training", **self.last})
            elif kind in ("done", "stopped"):
                self.outcome = kind


def _event_fields(record: dict[str, Any]) -> dict[str, Any]:
    names = set(ProgressEvent.__dataclass_fields__) - {"phase", "checkpoint"}
    return {k: v for k, v in record.items() if k in names}


def run(
    launch: Launch,
    *,
    reporter: ProgressReporter | None,
    should_stop: Callable[[], bool],
    grace_s: float,
    poll_s: float = 0.5,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``launch`` to the end and return its training report; no process of it survives this call.

    Raises:
        Cancelled: ``should_stop`` turned true; the ranks were stopped (with a checkpoint when they could).
        LaunchFailed: the run exited non-zero or wrote no adapter.
    """
    launch.out_dir.parent.mkdir(parents=True, exist_ok=True)
    launch.progress_path.unlink(missing_ok=True)  # a resumed run reports from its checkpoint on
    stream = ProgressStream(launch.progress_path, reporter)
    with launch.log_path.open("ab") as output:
        agent = subprocess.Popen(
            launch.command, env=launch.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    tree = ProcessTree(agent)
    try:
        if on_start is not None:
            on_start(agent.pid)
        while agent.poll() is None:
            tree.refresh()
            stream.pump()
            if should_stop():
                tree.stop(grace_s)
                stream.pump()  # the stop checkpoint
                raise Cancelled(f"multi-process training stopped at step {stream.last.get('step', 0)}")
            time.sleep(poll_s)
    finally:
        if tree.alive():  # an error here (database, signal) must not leave the run behind
            tree.stop(grace_s)
    stream.pump()
    report_path = launch.out_dir / TRAIN_REPORT_NAME
    if agent.returncode != 0 or not (launch.out_dir / ADAPTER_CONFIG_NAME).exists() or not report_path.exists():
        raise _failure(launch, agent.returncode)
    return json.loads(report_path.read_text())


def _failure(launch: Launch, returncode: int) -> LaunchFailed:
    """The CLI's own error line (``error [param]: message``) when it printed one, else the exit status."""
    lines = launch.log_path.read_text(errors="replace").splitlines() if launch.log_path.exists() else []
    for line in reversed(lines):
        match = _CLI_ERROR.match(line.strip())
        if match:
            return LaunchFailed(f"Training failed: {match['message']}", match["param"])
    return LaunchFailed(
        f"Training in {launch.nproc} processes exited with status {returncode} without an adapter; "
        f"see {LAUNCH_LOG} in the job's folder."
    )
