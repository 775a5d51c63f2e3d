"""The launcher's process handling: every process of a run is stopped, even ranks in sessions of their own
that ignore SIGTERM; devices for the ranks come from the worker's own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.worker.process_groups import live_members
from worker.distributed_launch import LaunchFailed, ProcessTree, device_env

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
