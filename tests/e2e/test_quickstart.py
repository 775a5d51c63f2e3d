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


def _job(port: int, data_dir: Path, job_id: str) -> dict:
    key = (data_dir / "api_key").read_text().strip()
    response = httpx.get(f"http://127.0.0.1:{port}/v1/fine_tuning/jobs/{job_id}",
                         headers={"Authorization": f"Bearer {key}"})
    response.raise_for_status()
    return response.json()


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
            # The ESFT story: the task gain next to the general ability the adapter kept, as the job reports it.
            job = _job(port, data_dir, re.search(r"Started job (ftjob-[0-9a-f]+)", first.stdout).group(1))
            assert job["evaluation"]["metrics"] == ["exact_match_strict"]
            assert [g["metric"] for g in job["general_files"]] == ["exact_match_strict"] * 6  # one file per skill
            task, retention = job["evaluation_result"]["task"], job["evaluation_result"]["retention"]
            assert [f["n_examples"] for f in retention["files"]] == [4] * 6
            summary, gain = task["summary"], task["delta"]["adapter"]["exact_match_strict"]["mean"]
            assert (f"Task: base {summary['base']['exact_match_strict']['mean']:.0f}% -> adapter "
                    f"{summary['adapter']['exact_match_strict']['mean']:.0f}% ({gain:+.0f} points)") in first.stdout
            average = retention["average"]
            assert average["base"] >= 30, retention  # the shipped base knows its skills
            assert (f"General ability (24 questions): base {average['base']:.0f}%, adapter {average['adapter']:.0f}% "
                    f"({average['ratio']:.0%} kept)") in first.stdout, first.stdout
            assert f"Headline: {job['evaluation_result']['headline']}" in first.stdout
            assert f"/v1/fine_tuning/jobs/{job['id']}/artifacts/retention.png" in first.stdout
            again = _quickstart(port, data_dir, env, steps=2)
            assert again.returncode == 0 and "Reusing base model" in again.stdout
        finally:
            stop_process(server, timeout=30)
    assert "Warm shutdown" in log_path.read_text()  # the worker went down with the server
