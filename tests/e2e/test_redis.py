"""A real Celery worker on a real, password-protected redis-server: the worker SIGKILLed mid-training, and Redis
restarted mid-job (AOF persistence: queued messages survive). Lease staleness and the reaper run in seconds.

After each fault: the adapter equals an uninterrupted run resumed from the last checkpoint the fault left, each
training step appears at most once among the job's metrics events, the job has exactly one adapter row, and the
lease passed from holder to holder (each generation, the fencing token, held by one owner, never going back).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file
from sqlalchemy import func, select

from api.core.artifacts import EXPERT_CONFIG, TRAIN_DIR, job_key
from api.core.db.models import Adapter, File, Job
from api.core.db.session import session_scope
from api.core.settings import Settings
from api.services import job_options
from esft.config import TrainingConfig
from esft.constants import ADAPTER_WEIGHTS_NAME, CHECKPOINTS_DIR
from tests.e2e.conftest import Service
from tests.redis_support import RedisServer
from tests.service_support import chat_rows, job_body, jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def service_env(redis: RedisServer) -> dict[str, str]:
    """The API and worker on Redis; undelivered steps re-sent only after 5 minutes, so a queued message must
    survive the restart in Redis itself."""
    return {"ESFT_BROKER_URL": redis.url, "ESFT_REQUEUE_UNDELIVERED_AFTER_S": "300"}


class LeaseWatcher:
    """Samples the job's (lease generation, owner) every 20 ms while a test runs."""

    def __init__(self, url: str, job_id: str):
        self.url, self.job_id = url, job_id
        self.seen: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with session_scope(self.url) as session:
                row = session.execute(
                    select(Job.lease_generation, Job.lease_owner).where(Job.id == self.job_id)
                ).one()
            if row[1] is not None and (not self.seen or self.seen[-1] != tuple(row)):
                self.seen.append(tuple(row))

    def __enter__(self) -> LeaseWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        generations = [g for g, _ in self.seen]
        assert generations == sorted(generations), f"a stale lease came back: {self.seen}"
        owners = {}
        for generation, owner in self.seen:
            assert owners.setdefault(generation, owner) == owner, f"two holders of generation {generation}"
        assert len(set(owners.values())) == len(owners), f"an owner held two generations: {self.seen}"


def _submit(service: Service, steps: int, save_every: int) -> str:
    files = {"file": ("train.jsonl", jsonl(chat_rows(16)), "application/jsonl")}
    file_id = service.http.post("/v1/files", data={"purpose": "fine-tune"}, files=files).json()["id"]
    body = job_body("toy", file_id, max_steps=steps, save_every=save_every)
    return service.http.post("/v1/fine_tuning/jobs", json=body).json()["id"]


def _settings(service: Service) -> Settings:
    return Settings(data_dir=service.data_dir)


def _wait_checkpoint(service: Service, job_id: str) -> None:
    def has_checkpoint(job: dict) -> bool:
        url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"
        return job["phase"] == "training" and bool(service.http.get(url).json()["data"])

    service.wait_job(job_id, has_checkpoint)


def _reference_from_checkpoint(service: Service, job_id: str, out: Path) -> Path:
    """Copy the run directory as the fault left it (its latest checkpoint), to resume it uninterrupted later."""
    source = _settings(service).storage_dir / job_key(job_id) / TRAIN_DIR
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(".*"))
    assert any((out / CHECKPOINTS_DIR).iterdir())
    return out


def _assert_outcome(service: Service, job_id: str, run_dir: Path, toy_model_dir: Path, *, resume: bool) -> None:
    """The job's outcome, and its adapter against the library run uninterrupted in ``run_dir`` (resumed from the
    checkpoint there, or from scratch)."""
    from worker.library import esft_library

    settings = _settings(service)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "succeeded", (job.status, job.error_message)
        assert session.scalar(select(func.count()).select_from(Adapter).where(Adapter.job_id == job_id)) == 1
        adapter = session.scalar(select(Adapter).where(Adapter.job_id == job_id))
        training = session.get(File, job.training_file)
        hyper = job.hyperparameters
    metrics = [e["data"]["step"] for e in service.events(job_id)
               if e["type"] == "metrics" and e["data"].get("phase") == "training"]
    assert len(metrics) == len(set(metrics)), f"a step was recorded twice: {metrics}"

    work = settings.storage_dir / job_key(job_id)
    esft_library().train(
        toy_model_dir,
        settings.storage_dir / training.storage_key,
        work / EXPERT_CONFIG,
        run_dir,
        job_options.config_for(TrainingConfig, hyper),
        resume=resume,
    )
    expected = load_file(str(run_dir / ADAPTER_WEIGHTS_NAME))
    got = load_file(str(settings.storage_dir / adapter.storage_key / ADAPTER_WEIGHTS_NAME))
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] - got[name]).abs().max().item() <= 1e-6, name


def test_worker_sigkilled_mid_training_on_redis(service, tmp_path, toy_model_dir):
    job_id = _submit(service, steps=160, save_every=4)
    with LeaseWatcher(_settings(service).database_url, job_id) as watcher:
        _wait_checkpoint(service, job_id)
        service.kill_worker()
        run_dir = _reference_from_checkpoint(service, job_id, tmp_path / "reference")
        service.start_worker()
        service.wait_job(job_id, lambda j: j["status"] == "succeeded")
    watcher.check()
    assert len({g for g, _ in watcher.seen}) >= 2  # the replacement took the lease under a new generation
    messages = [e["message"] for e in service.events(job_id)]
    assert any(m.startswith("Re-enqueued step 'train'") for m in messages)
    _assert_outcome(service, job_id, run_dir, toy_model_dir, resume=True)


def test_redis_restarted_mid_job(service, redis, tmp_path, toy_model_dir):
    job_id = _submit(service, steps=120, save_every=4)
    queued = _submit(service, steps=2, save_every=2)  # waits in Redis behind the first job (one worker)
    with LeaseWatcher(_settings(service).database_url, job_id) as watcher:
        _wait_checkpoint(service, job_id)
        redis.stop()
        time.sleep(1)
        redis.start()
        service.wait_job(job_id, lambda j: j["status"] == "succeeded")
        service.wait_job(queued, lambda j: j["status"] == "succeeded")
    watcher.check()
    queued_messages = [e["message"] for e in service.events(queued)]
    assert not any(m.startswith(("Sent step", "Re-enqueued")) for m in queued_messages), queued_messages
    _assert_outcome(service, job_id, tmp_path / "reference", toy_model_dir, resume=False)  # it never stopped
