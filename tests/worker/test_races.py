"""State-machine races: cancel vs success, cancel vs registration, the reaper and a long queue, a stalled worker
and its replacement (fencing tokens), and metrics of a step written twice after a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from api.core import runs
from api.core.artifacts import adapter_key, job_key
from api.core.db.models import Adapter, Checkpoint, Job, JobEvent
from api.core.db.session import session_scope
from api.services import registry
from esft.constants import CHECKPOINTS_DIR
from tests.worker.test_runner import WorkerDied, create, events, get, run_until
from worker.progress import Heartbeat
from worker.reaper import reap_once

pytestmark = pytest.mark.db  # also on PostgreSQL


def _db(settings):
    return session_scope(settings.database_url)


def _expire_lease(settings, job_id: str) -> None:
    with _db(settings) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_a_cancel_never_overwrites_a_job_that_just_succeeded(client, auth, queue, base_model, training_file, settings):
    job_id = create(client, auth, base_model, training_file)
    with _db(settings) as api_session:
        seen = api_session.get(Job, job_id)  # the API read the job while it was still running ...
        assert seen.status == "validating_files"
        with _db(settings) as worker_session:  # ... and the worker finished it meanwhile
            worker_session.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
        assert not runs.cancel(api_session, seen)
        assert seen.status == "succeeded"
    assert get(client, auth, job_id)["status"] == "succeeded"


@pytest.mark.parametrize("moment", ["while_copying", "after_the_row"])
def test_an_adapter_registered_while_the_job_is_cancelled_is_not_kept(
    client, auth, queue, base_model, training_file, settings, monkeypatch, moment
):
    job_id = create(client, auth, base_model, training_file)
    run_until(queue, "register")

    def cancel() -> None:
        assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth).status_code == 200

    if moment == "while_copying":
        real_manifest = registry._manifest
        monkeypatch.setattr(registry, "_manifest", lambda root: (cancel(), real_manifest(root))[1])
    else:
        real_register = registry.register_adapter
        monkeypatch.setattr(registry, "register_adapter", lambda *a, **k: (real_register(*a, **k), cancel())[0])
    queue.run_next()
    assert get(client, auth, job_id)["status"] == "cancelled"
    with _db(settings) as session:
        assert session.scalar(select(func.count()).select_from(Adapter).where(Adapter.job_id == job_id)) == 0
    models = client.get("/v1/models", headers=auth).json()["data"]
    assert job_id not in [m.get("fine_tuning_job") for m in models]
    assert not (settings.storage_dir / adapter_key(job_id)).exists()  # nor its files


def test_the_reaper_keeps_the_order_of_steps_waiting_in_a_long_queue(
    client, auth, queue, base_model, training_file, settings
):
    waiting = [create(client, auth, base_model, training_file) for _ in range(3)]
    hours_ago = datetime.now(UTC) - timedelta(hours=9)
    with _db(settings) as session:  # three steps waited > 6 h behind other work, oldest first
        for minutes, job_id in enumerate(waiting):
            session.execute(
                update(Job).where(Job.id == job_id).values(dispatched_at=hours_ago + timedelta(minutes=minutes))
            )
    newer = create(client, auth, base_model, training_file)
    assert sorted(reap_once(settings, queue)) == sorted(waiting)
    ran = []
    for n, (step, job_id, dispatch_id) in enumerate(queue.sent):  # the broker delivers in send order
        with _db(settings) as session:
            if runs.claim(session, job_id, step, dispatch_id, f"worker-{n}", ttl_s=60).ok:
                ran.append(job_id)
    assert ran == [*waiting, newer]  # the re-sent copies find their originals already running


def test_a_stalled_worker_writes_nothing_beside_its_replacement(
    client, auth, queue, lib, base_model, training_file, settings, monkeypatch
):
    job_id = create(client, auth, base_model, training_file, max_steps=6, save_every=1)
    run_until(queue, "train")
    replacement = {}
    monkeypatch.setattr(Heartbeat, "beat", lambda self: None)  # stalled: its heartbeat has not noticed yet

    def stall_and_be_replaced(*_):
        _expire_lease(settings, job_id)  # the worker stalled past its lease ...
        assert reap_once(settings, queue) == [job_id]  # ... and was replaced before its heartbeat noticed
        step, _, dispatch_id = queue.sent[-1]
        with _db(settings) as session:
            replacement["claim"] = runs.claim(session, job_id, step, dispatch_id, "replacement", ttl_s=60)

    lib.before["train"] = stall_and_be_replaced
    assert queue.run_next() == "lease_lost"
    assert replacement["claim"].ok and replacement["claim"].token == 5  # validate, score, select, train, train
    train_dir = settings.storage_dir / job_key(job_id)
    assert not any(train_dir.rglob(f"{CHECKPOINTS_DIR}/step-*")), "the stale worker wrote a checkpoint"
    with _db(settings) as session:
        assert session.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job_id)) == 0
        metrics = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        ).all()
        assert [m for m in metrics if m["phase"] == "training"] == []
        assert session.get(Job, job_id).lease_owner == "replacement"


def test_stale_tokens_are_refused(client, auth, base_model, training_file, settings):
    job_id = create(client, auth, base_model, training_file)
    with _db(settings) as session:
        job = session.get(Job, job_id)
        first = runs.claim(session, job_id, job.step, job.dispatch_id, "one", ttl_s=60)
    _expire_lease(settings, job_id)
    with _db(settings) as session:
        second = runs.claim(session, job_id, "validate", job.dispatch_id, "two", ttl_s=60)
        assert second.token == first.token + 1
        assert not runs.fenced(session, job_id, first.token)
        assert runs.fenced(session, job_id, second.token)


def test_each_training_step_has_one_metrics_event_after_a_crash(
    client, auth, queue, lib, base_model, training_file, settings
):
    job_id = create(client, auth, base_model, training_file, max_steps=8, save_every=4)
    run_until(queue, "train")

    def die_after_step_6(event):
        if event.step == 6:
            raise WorkerDied

    lib.on_progress["train"] = die_after_step_6
    with pytest.raises(WorkerDied):
        queue.run_next()
    del lib.on_progress["train"]
    _expire_lease(settings, job_id)
    reap_once(settings, queue)
    queue.drain()
    assert get(client, auth, job_id)["status"] == "succeeded"
    with _db(settings) as session:
        metrics = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        ).all()
    steps = [m["step"] for m in metrics if m["phase"] == "training"]
    assert sorted(steps) == list(range(1, 9))  # steps 5 and 6 ran twice (resumed from step 4), recorded once
    assert "Resuming training from the latest checkpoint." in events(client, auth, job_id)
