"""A job on two devices through the queue and a real Celery worker: torchrun with two gloo processes on CPU,
its progress streamed into the job's events, cancel stops every process of the run, the next job succeeds."""

from __future__ import annotations

import os
import time

import pytest

from tests.e2e.conftest import service, upload_rows  # noqa: F401
from tests.service_support import chat_rows, job_body
from tests.worker.process_groups import live_members, processes_mentioning

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STOPPED = "Stopped during training; the device is released."


@pytest.fixture
def service_env() -> dict[str, str]:
    return {"ESFT_MAX_GPUS_PER_JOB": "2", "ESFT_DEVICE": "cpu", "ESFT_STOP_GRACE_S": "60"}


def two_process_job(service, file_id: str, **hyper) -> dict:  # noqa: F811
    body = {**job_body("toy", file_id, **hyper), "resources": {"gpus": 2}}
    response = service.http.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def launched(service, job_id: str) -> dict:  # noqa: F811
    return next(e["data"] for e in service.events(job_id) if e["message"].startswith("Training in 2 processes"))


def test_two_process_job_streams_progress_cancel_kills_its_processes_and_the_next_succeeds(service, upload_rows):  # noqa: F811
    file_id = upload_rows(chat_rows(16))
    long = two_process_job(service, file_id, max_steps=5000, save_every=1000)
    service.wait_job(long["id"], lambda j: j["phase"] == "training" and (j["progress"] or {}).get("fraction"))
    run = launched(service, long["id"])
    ranks = [pid for pid in processes_mentioning(f"{long['id']}/train") if pid != run["pgid"]]
    groups = {run["pgid"], *(os.getpgid(pid) for pid in ranks)}
    assert run["nproc"] == 2 and len(groups) >= 3, groups  # the agent's group and one per rank (torchrun's way)
    training = [e["data"] for e in service.events(long["id"]) if (e["data"] or {}).get("phase") == "training"]
    assert training and all(m["total_steps"] == 5000 and m["train_loss"] > 0 for m in training)

    assert service.http.post(f"/v1/fine_tuning/jobs/{long['id']}/cancel").json()["status"] == "cancelled"
    deadline = time.monotonic() + 90
    while STOPPED not in [e["message"] for e in service.events(long["id"])]:
        assert time.monotonic() < deadline, "the worker did not stop the run"
        time.sleep(0.3)
    assert {pgid: live_members(pgid) for pgid in groups} == {pgid: [] for pgid in groups}
    stop_checkpoints = service.http.get(f"/v1/fine_tuning/jobs/{long['id']}/checkpoints").json()["data"]
    assert stop_checkpoints and stop_checkpoints[0]["step_number"] < 5000  # the ranks checkpointed on SIGTERM

    short = two_process_job(service, file_id, max_steps=3)
    done = service.wait_job(short["id"], lambda j: j["status"] == "succeeded")
    assert done["fine_tuned_model"] and done["trained_tokens"] > 0 and done["resources"]["gpus"] == 2
    assert service.http.get(f"/v1/models/{done['fine_tuned_model']}").json()["kind"] == "adapter"
    assert live_members(launched(service, short["id"])["pgid"]) == []
    steps = [e["data"]["step"] for e in service.events(short["id"]) if (e["data"] or {}).get("phase") == "training"]
    assert steps and steps[-1] == 3
