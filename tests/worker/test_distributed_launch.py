"""The launcher's process handling: every process of a run is stopped, even ranks in sessions of their own
that ignore SIGTERM; devices for the ranks come from the worker's own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.worker.process_groups import live_members
from worker.distributed_launch import LaunchFailed, ProcessTree, device_env

REPO = Path(__file__).resolve().parents[2]

# An "agent" that starts a "rank" in a session of its own (as torchrun does) and waits; the rank ignores
# SIGTERM and writes its pid, so only SIGKILL ends it.
AGENT = textwrap.dedent(
    """
    import subprocess, sys, time
    rank = '''
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(600)
    '''
    subprocess.Popen([sys.executable, "-c", rank, sys.argv[1]], start_new_session=True)
    time.sleep(600)
    """
)


def test_stop_leaves_no_process_of_the_run(tmp_path):
    pid_file = tmp_path / "rank.pid"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(pid_file)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the rank did not start"
        time.sleep(0.05)
    rank = int(pid_file.read_text())
    assert os.getpgid(rank) == rank != agent.pid  # its own group: killing the agent's group would orphan it
    tree = ProcessTree(agent)
    tree.refresh()
    tree.stop(grace_s=0.5)
    assert agent.returncode is not None
    assert live_members(agent.pid) == [] and live_members(rank) == []


def test_ranks_get_the_first_devices_of_the_worker(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    assert device_env(2) == {"CUDA_VISIBLE_DEVICES": "3,5"}
    with pytest.raises(LaunchFailed) as failed:
        device_env(4)
    assert failed.value.param == "resources.gpus" and "has 3" in failed.value.message
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a CPU worker: gloo processes, no devices to share
    assert device_env(4) == {"CUDA_VISIBLE_DEVICES": ""}


# A launching process that starts a guarded child and waits: the test SIGKILLs it, as a crash would.
LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys, time
    from worker.distributed_launch import guarded
    subprocess.Popen(guarded("tests.worker.sigterm_child", sys.argv[1]), start_new_session=True)
    time.sleep(600)
    """
)


def test_a_run_is_told_to_stop_when_its_launching_process_dies(tmp_path):
    marker = tmp_path / "child"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", LAUNCHER, str(marker)]
    launcher = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    ready = tmp_path / "child.ready"
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text():
        assert time.monotonic() < deadline, "the guarded child did not start"
        time.sleep(0.05)
    child = int(ready.read_text())
    os.killpg(launcher.pid, 9)  # the launcher's own group only: the child lives in a session of its own
    launcher.wait()
    try:
        while not marker.exists():
            assert time.monotonic() < deadline + 30, "the orphaned child was not told to stop"
            time.sleep(0.05)
        assert marker.read_text() == "stopped"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, 9)


def test_an_expert_parallel_job_launches_esft_train_with_its_ep_size(tmp_path):
    from esft.config import TrainingConfig
    from worker.distributed_launch import train_launch

    launch = train_launch(2, tmp_path / "m", tmp_path / "d.jsonl", tmp_path / "e.json", tmp_path / "out",
                          TrainingConfig(), ep_size=2)
    args = launch.command
    assert args[args.index("--ep-size") + 1] == "2" and "--nproc-per-node=2" in args
    assert "--ep-size" not in train_launch(2, tmp_path / "m", tmp_path / "d.jsonl", tmp_path / "e.json",
                                           tmp_path / "out", TrainingConfig()).command  # data parallel
