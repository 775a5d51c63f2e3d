"""`esft serve` (API + worker in one command) and `esft quickstart` against it, as the README says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.cli import stop_process
from tests.service_support import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _wait_healthy(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and server.poll() is None, log.read_text()
        time.sleep(0.2)


def _quickstart(port: int, data_dir: Path, env: dict, steps: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "api.cli",
        "quickstart",
        "--url",
        f"http://127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        "--steps",
        str(steps),
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def test_serve_then_quickstart(tmp_path):
    port, data_dir, log_path = free_port(), tmp_path / "esft-data", tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ESFT_EVAL_MAX_NEW_TOKENS": "4", "ESFT_EVAL_MAX_EXAMPLES": "4"}
    env.pop("DATABASE_URL", None)
    with log_path.open("w") as log:
        command = [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
        server = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_healthy(port, server, log_path)
            assert (data_dir / "api_key").stat().st_mode & 0o777 == 0o600
            first = _quickstart(port, data_dir, env, steps=20)
            assert first.returncode == 0, first.stdout + first.stderr + log_path.read_text()[-3000:]
            assert "Accuracy: adapter" in first.stdout
            assert re.search(r"ft:esft-toy:proj-[0-9a-f]+:quickstart:ftjob-", first.stdout)
            # The same server answers through the OpenAI-compatible endpoint, base model and adapter.
            assert "POST /v1/chat/completions" in first.stdout and "model=esft-toy" in first.stdout
            # The ESFT story: the task gain next to the general ability the adapter kept.
            assert re.search(r"Task: base \d+% -> adapter \d+% \([+-]\d+ points\)", first.stdout), first.stdout
            general = re.search(r"General ability \(\d+ questions\): base (\d+)%, adapter \d+%", first.stdout)
            assert general and int(general.group(1)) >= 30, first.stdout  # the shipped base knows its skills
            again = _quickstart(port, data_dir, env, steps=2)
            assert again.returncode == 0 and "Reusing base model" in again.stdout
        finally:
            stop_process(server, timeout=30)
    assert "Warm shutdown" in log_path.read_text()  # the worker went down with the server
