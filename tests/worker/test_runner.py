"""Faults around one step: cancel in every phase, leases, lost leases, crashes with resume, error mapping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from api.core import runs
from api.core.db.models import Job
from api.core.db.session import session_scope
from api.core.queue import STEPS
from esft.errors import UnsupportedModelError
from tests.service_support import job_body
from worker.reaper import reap_once
from worker.runner import TransientError, run_step


def create(client, auth, model, file_id, **hyper) -> str:
    return client.post("/v1/fine_tuning/jobs", json=job_body(model, file_id, **hyper), headers=auth).json()["id"]


def run_until(queue, step: str) -> None:
    while queue.sent and queue.sent[0][0] != step:
        queue.run_next()
    assert queue.sent and queue.sent[0][0] == step


def get(client, auth, job_id) -> dict:
    return client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth).json()


def events(client, auth, job_id) -> list[str]:
    """Every event message, oldest first (pages come newest first)."""
    messages, after = [], ""
    while True:
        page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100{after}", headers=auth).json()
        messages += [e["message"] for e in page["data"]]
        if not page["has_more"]:
            return messages[::-1]
        after = f"&after={page['data'][-1]['id']}"


def lease(settings, job_id) -> tuple:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        return job.lease_owner, job.status, job.step


@pytest.mark.parametrize("step", STEPS)
def test_cancel_before_each_step_runs_nothing(client, auth, queue, lib, base_model, training_file, step):
    job_id = create(client, auth, base_model, training_file)
    run_until(queue, step)
    lib.calls.clear()
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth)
    assert queue.run_next().startswith("skipped: job is cancelled")
    assert not queue.sent and sum(lib.calls.values()) == 0
    assert get(client, auth, job_id)["status"] == "cancelled"


@pytest.mark.parametrize(
    ("step", "call", "steps"), [("score", "score", 4), ("train", "train", 400), ("evaluate", "compare", 4)]
)
def test_cancel_while_a_step_runs_stops_it(
    client, auth, queue, lib, base_model, training_file, settings, step, call, steps
):
    job_id = create(client, auth, base_model, training_file, max_steps=steps, save_every=50)
    run_until(queue, step)

    def cancel_and_wait(*_):
        client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth)
        time.sleep(3 * settings.heartbeat_interval_s)  # the heartbeat turns the flag into should_stop()

    lib.before[call] = cancel_and_wait
    started = time.monotonic()
    assert queue.run_next() == "cancelled"
    assert time.monotonic() - started < 30
    owner, status, _ = lease(settings, job_id)
    assert owner is None and status == "cancelled" and not queue.sent
    assert any(m.startswith("Stopped during") for m in events(client, auth, job_id))


def test_a_held_lease_blocks_a_second_copy_until_it_expires(client, auth, queue, base_model, training_file, settings):
    job_id = create(client, auth, base_model, training_file)
    step, _, dispatch = queue.sent[0]
    with session_scope(settings.database_url) as session:
        assert runs.claim(session, job_id, step, dispatch, "other-worker", ttl_s=60).ok
    assert queue.run_next() == "skipped: lease held by other-worker"
    assert reap_once(settings, queue) == []  # the holder is alive
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert reap_once(settings, queue) == [job_id]
    stale = (step, job_id, dispatch)
    assert run_step(*stale, settings=settings, queue=queue).startswith("skipped: stale dispatch")
    queue.drain()
    assert get(client, auth, job_id)["status"] == "succeeded"
    assert any("stopped heartbeating" in m for m in events(client, auth, job_id))


def test_a_worker_that_lost_its_lease_writes_nothing(client, auth, queue, lib, base_model, training_file, settings):
    job_id = create(client, auth, base_model, training_file, max_steps=400)
    run_until(queue, "train")

    def steal(*_):
        with session_scope(settings.database_url) as session:
            session.execute(update(Job).where(Job.id == job_id).values(lease_owner="thief"))
        time.sleep(3 * settings.heartbeat_interval_s)

    lib.before["train"] = steal
    assert queue.run_next() == "lease_lost"
    assert lease(settings, job_id) == ("thief", "running", "train") and not queue.sent


class WorkerDied(BaseException):
    """Stands in for SIGKILL: escapes every ``except Exception`` and leaves the lease behind."""


def test_crash_mid_training_resumes_from_the_checkpoint(client, auth, queue, lib, base_model, training_file, settings):
    job_id = create(client, auth, base_model, training_file, max_steps=8, save_every=2)
    run_until(queue, "train")

    def die_after_checkpoint(event):
        if event.step == 5:
            raise WorkerDied

    lib.on_progress["train"] = die_after_checkpoint
    with pytest.raises(WorkerDied):
        queue.run_next()
    assert lease(settings, job_id)[0] is not None  # a dead worker never releases its lease
    del lib.on_progress["train"]
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert reap_once(settings, queue) == [job_id]
    queue.drain()
    job = get(client, auth, job_id)
    assert job["status"] == "succeeded" and lib.kwargs["train"]["resume"] is True
    messages = events(client, auth, job_id)
    assert "Resuming training from the latest checkpoint." in messages
    steps = [
        c["step_number"] for c in client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=auth).json()["data"]
    ]
    assert steps == [8, 6, 4, 2]


def test_library_errors_become_the_job_error(client, auth, queue, lib, base_model, training_file):
    job_id = create(client, auth, base_model, training_file)

    def unsupported():
        raise UnsupportedModelError("family 'x' has no router", param="model")

    lib.before["score"] = unsupported
    queue.drain()
    job = get(client, auth, job_id)
    assert job["status"] == "failed"
    assert job["error"] == {"code": "unsupported_model", "message": "family 'x' has no router", "param": "model"}


def test_transient_database_errors_release_the_lease_for_a_retry(
    client, auth, queue, lib, base_model, training_file, settings
):
    job_id = create(client, auth, base_model, training_file)
    run_until(queue, "score")
    step, _, dispatch = queue.sent[0]

    def flaky():
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    lib.before["score"] = flaky
    with pytest.raises(TransientError):
        queue.run_next()
    assert lease(settings, job_id)[0] is None
    del lib.before["score"]
    assert run_step(step, job_id, dispatch, settings=settings, queue=queue).startswith("done")


def test_internal_errors_fail_without_leaking_details(client, auth, queue, lib, base_model, training_file):
    job_id = create(client, auth, base_model, training_file)

    def boom():
        raise RuntimeError("/secret/path exploded")

    lib.before["select"] = boom
    queue.drain()
    error = get(client, auth, job_id)["error"]
    assert error["code"] == "internal_error" and "secret" not in error["message"]
