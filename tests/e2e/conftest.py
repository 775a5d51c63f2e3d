"""A real embedded service for end-to-end tests: uvicorn on a thread, a Celery worker subprocess on the
filesystem broker, SQLite and local storage in a temporary folder. The worker can be killed and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from api.cli import ensure_default_key, stop_process
from api.core.db.session import session_scope
from api.core.migrate import upgrade
from api.core.queue import CeleryQueue
from api.core.settings import Settings
from api.inference.embedded import mount_inference_pool
from api.main import create_app
from api.services.registry import add_base_model
from esft.serving import EngineConfig
from tests.service_support import LiveServer, toy_model_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
ENV = {
    "ESFT_LEASE_TTL_S": "4",
    "ESFT_HEARTBEAT_INTERVAL_S": "0.5",
    "ESFT_REAPER_INTERVAL_S": "1",
    "ESFT_MIN_EXAMPLES": "4",
    "ESFT_EVAL_MAX_EXAMPLES": "4",
    "ESFT_EVAL_MAX_NEW_TOKENS": "4",
    "ESFT_EVENT_THROTTLE_S": "0.2",
}


class Service:
    """Handle on the running service: an authenticated HTTP client and control of the worker process."""

    def __init__(self, data_dir: Path, url: str, key: str, env: dict[str, str]):
        self.data_dir, self.url, self.env = data_dir, url, env
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.key = key
        self.worker: subprocess.Popen | None = None
        self.log = data_dir / "worker.log"

    def start_worker(self) -> None:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "-Q",
            "esft",
            "-c",
            "1",
            "--loglevel",
            "INFO",
            "-n",
            f"e2e-{time.monotonic_ns()}@%h",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ]
        with self.log.open("a") as log:
            self.worker = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill_worker(self) -> None:
        """SIGKILL the whole worker (main process and pool child), as a crash or OOM kill would."""
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(timeout=30)
        self.worker = None

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_process(self.worker)
        self.worker = None

    def wait_job(self, job_id: str, until: Callable[[dict], bool], timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            if until(job):
                return job
            if job["status"] in ("failed", "cancelled", "succeeded"):
                break
            time.sleep(0.2)
        tail = self.log.read_text()[-3000:] if self.log.exists() else ""
        raise AssertionError(f"job {job_id} did not reach the condition: {json.dumps(job)}\n{tail}")

    def events(self, job_id: str) -> list[dict]:
        """Every event of the job, oldest first (pages come newest first)."""
        out, after = [], ""
        while True:
            page = self.http.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100{after}").json()
            out += page["data"]
            if not page["has_more"]:
                return out[::-1]
            after = f"&after={page['data'][-1]['id']}"


@pytest.fixture
def service_env() -> dict[str, str]:
    """Settings (``ESFT_*``) of the API and the worker on top of ``ENV``; override it in a test module."""
    return {}


@pytest.fixture
def service(tmp_path: Path, toy_model_dir: Path, service_env: dict[str, str]) -> Iterator[Service]:  # noqa: F811
    data_dir = tmp_path / "data"
    configured = {**ENV, **service_env}
    env = {**os.environ, **configured, "ESFT_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("DATABASE_URL", None)
    settings = Settings(data_dir=data_dir, **{k[5:].lower(): v for k, v in configured.items()})
    upgrade(settings.database_url)
    key = ensure_default_key(settings)
    with session_scope(settings.database_url) as session:
        add_base_model(session, "toy", str(toy_model_dir), roots=None)
    app = create_app(settings, queue=CeleryQueue(settings), migrate=False)
    mount_inference_pool(app, EngineConfig(max_new_tokens=16))  # as `esft serve` does: engines load on first use
    with LiveServer(app) as server:
        svc = Service(data_dir, server.url, key, env)
        svc.start_worker()
        try:
            yield svc
        finally:
            svc.kill_worker()  # jobs are over; a warm shutdown (tested with `esft serve`) only costs time
            svc.http.close()


@pytest.fixture
def upload_rows(service: Service) -> Callable[[list[dict]], str]:
    from tests.service_support import jsonl

    def _upload(rows: list[dict]) -> str:
        files = {"file": ("train.jsonl", jsonl(rows), "application/jsonl")}
        response = service.http.post("/v1/files", data={"purpose": "fine-tune"}, files=files)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    return _upload
