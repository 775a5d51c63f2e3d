"""``esft train --nproc-per-node N [--nnodes M --node-rank R] --ep-size E`` launches torchrun itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esft import workflows
from esft.config import TrainingConfig
from esft.errors import ConfigError
from esft.parallel.launch import LaunchPlan, torchrun_command, without_launch_flags
from tests.conftest import write_chat_jsonl
from tests.esft.parallel.test_expert_parallel import EXPERTS, _assert_close, _weights

FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def test_the_ranks_run_the_same_command_without_the_launch_flags():
    argv = ["train", "--model", "m", "--nproc-per-node", "2", "--nnodes=2", "--node-rank", "1", "--ep-size", "2"]
    assert without_launch_flags(argv, FLAGS) == ["train", "--model", "m", "--ep-size", "2"]
    one = torchrun_command(LaunchPlan(2), ["train"])
    assert "--standalone" in one and one[-3:] == ["-m", "esft.cli", "train"]
    two = torchrun_command(LaunchPlan(1, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400), ["x"])
    expected = {"--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29400", "--node-rank=1", "--rdzv-conf=is_host=0"}
    assert expected <= set(two)


def test_a_bad_layout_is_refused_naming_the_flag():
    with pytest.raises(ConfigError, match="--node-rank"):
        LaunchPlan(2, nnodes=2, node_rank=2).check()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _esft(*args: str) -> subprocess.Popen:
    path = os.pathsep.join([str(Path(__file__).parents[3]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "esft.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 300) -> None:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("esft train did not finish in time")
    assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_cli_expert_parallel_runs_write_the_one_process_adapter(model_dirs, tmp_path):
    model_dir, data = model_dirs("qwen3_moe"), write_chat_jsonl(tmp_path / "train.jsonl")
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps(EXPERTS))
    single = tmp_path / "single"
    workflows.train(model_dir, data, experts, single, TrainingConfig(max_steps=3, batch_size=2, grad_accum_steps=2,
                                                                     learning_rate=1e-3, seed=1))
    common = ["train", "--model", str(model_dir), "--data", str(data), "--expert-config", str(experts),
              "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3", "--seed", "1", "--ep-size", "2"]
    _finish(_esft(*common, "--out", str(tmp_path / "one-node"), "--nproc-per-node", "2",
                  "--master-port", str(_free_port())))
    _assert_close(_weights(tmp_path / "one-node"), _weights(single))

    # two "nodes" on this machine: one process each, node 0 hosting the c10d rendezvous
    port = str(_free_port())
    nodes = [_esft(*common, "--out", str(tmp_path / "two-nodes"), "--nproc-per-node", "1", "--nnodes", "2",
                   "--node-rank", str(rank), "--master-port", port) for rank in (1, 0)]
    for node in nodes:
        _finish(node)
    _assert_close(_weights(tmp_path / "two-nodes"), _weights(single))


@pytest.mark.slow
def test_sigterm_to_the_launch_stops_every_rank_with_a_checkpoint_and_exit_status_0(model_dirs, tmp_path):
    model_dir, data = model_dirs("qwen3_moe"), write_chat_jsonl(tmp_path / "train.jsonl")
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps(EXPERTS))
    progress = tmp_path / "progress.jsonl"
    run = subprocess.Popen(
        [sys.executable, "-m", "esft.cli", "train", "--model", str(model_dir), "--data", str(data), "--expert-config",
         str(experts), "--out", str(tmp_path / "out"), "--max-steps", "500", "--batch-size", "2", "--ep-size", "2",
         "--nproc-per-node", "2", "--master-port", str(_free_port()), "--progress-jsonl", str(progress)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[3]),
                                                          os.environ.get("PYTHONPATH", "")])},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (progress.exists() and progress.read_text().count("\n") >= 2):  # a step is done
        assert run.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    os.killpg(run.pid, signal.SIGTERM)  # as the worker does: the whole process group
    assert run.wait(timeout=120) == 0
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    assert records[-1]["event"] == "stopped" and records[-2] == {"event": "checkpoint", "step": records[-1]["step"],
                                                                 "path": str(tmp_path / "out" / "checkpoints" /
                                                                             f"step-{records[-1]['step']}")}
