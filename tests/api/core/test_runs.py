"""The job state machine (``api.core.runs``): one stop request with a reason for cancel, pause and shutdown."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.core import runs
from api.core.db.models import Job
from api.core.db.session import session_scope
from tests.service_support import job_body

pytestmark = pytest.mark.db  # also on PostgreSQL

OWNER = "host:100:200:abcd"


@pytest.fixture
def job_id(client, auth, base_model, training_file) -> str:
    return client.post("/v1/fine_tuning/jobs", json=job_body(base_model, training_file), headers=auth).json()["id"]


@pytest.fixture
def db(settings):
    def _session():
        return session_scope(settings.database_url)

    return _session


def _job(db, job_id: str) -> Job:
    with db() as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def _claim(db, job_id: str, step: str = "validate", owner: str = OWNER) -> runs.Claim:
    job = _job(db, job_id)
    with db() as session:
        return runs.claim(session, job_id, step, job.dispatch_id, owner, ttl_s=60)


def _settle(db, job_id: str, queue, step: str = "validate") -> str:
    with db() as session:
        return runs.stopped(session, job_id, OWNER, step)


def test_pausing_a_waiting_job_is_immediate_and_its_queued_task_never_runs(db, job_id, queue):
    with db() as session:
        assert runs.pause(session, session.get(Job, job_id))
    assert _job(db, job_id).status == "paused"
    assert _claim(db, job_id).reason == "job is paused"
    with db() as session:
        assert not runs.pause(session, session.get(Job, job_id))  # already paused


def test_resume_dispatches_the_step_again_under_a_fresh_dispatch(db, job_id, queue):
    first = _job(db, job_id).dispatch_id
    with db() as session:
        runs.pause(session, session.get(Job, job_id))
        assert runs.resume(session, session.get(Job, job_id), queue)
        assert not runs.resume(session, session.get(Job, job_id), queue)  # only paused jobs resume
    job = _job(db, job_id)
    assert job.status == "validating_files" and job.stop_reason is None and job.dispatch_id != first
    assert queue.sent[-1] == ("validate", job_id, job.dispatch_id)
    assert _claim(db, job_id).ok


def test_pausing_a_running_step_waits_for_its_checkpoint(db, job_id, queue):
    assert _claim(db, job_id).ok
    with db() as session:
        assert runs.pause(session, session.get(Job, job_id))
        assert runs.heartbeat(session, job_id, OWNER, 60).stop_reason == "pause"
        assert not runs.resume(session, session.get(Job, job_id), queue)  # still pausing
    assert _job(db, job_id).status == "validating_files"
    assert _settle(db, job_id, queue) == "paused"
    job = _job(db, job_id)
    assert job.status == "paused" and job.lease_owner is None


def test_a_pause_requested_as_a_step_finishes_stops_before_the_next_step(db, job_id, queue):
    assert _claim(db, job_id).ok
    with db() as session:
        runs.pause(session, session.get(Job, job_id))
        assert runs.advance(session, job_id, OWNER, "validate", queue) == "score"
    job = _job(db, job_id)
    assert job.status == "paused" and job.step == "score"
    assert [step for step, *_ in queue.sent] == ["validate"]  # score was not sent


def test_a_paused_job_can_be_cancelled_and_is_never_reaped(db, job_id, queue):
    with db() as session:
        runs.pause(session, session.get(Job, job_id))
        session.get(Job, job_id).dispatched_at = runs.now() - timedelta(days=1)
        session.commit()
        assert runs.reap(session, queue, undelivered_after_s=1) == []
        assert runs.cancel(session, session.get(Job, job_id))
    assert _job(db, job_id).status == "cancelled"


def test_a_worker_that_died_while_pausing_leaves_the_job_paused(db, job_id, queue):
    assert _claim(db, job_id).ok
    with db() as session:
        runs.pause(session, session.get(Job, job_id))
        session.get(Job, job_id).lease_expires_at = runs.now() - timedelta(seconds=1)
        session.commit()
        assert runs.reap(session, queue, undelivered_after_s=600) == []
    assert _job(db, job_id).status == "paused"


def test_cancel_is_a_stop_request_the_heartbeat_reports(db, job_id, queue):
    assert _claim(db, job_id).ok
    with db() as session:
        runs.cancel(session, session.get(Job, job_id))
        assert runs.heartbeat(session, job_id, OWNER, 60).stop_reason == "cancel"
    assert _settle(db, job_id, queue) == "cancelled"
    assert _job(db, job_id).lease_owner is None


def test_worker_shutdown_stops_its_steps_and_the_next_reaper_re_enqueues_them(db, job_id, queue):
    assert _claim(db, job_id).ok
    with db() as session:
        assert runs.request_shutdown(session, "other:1:") == []
        assert runs.request_shutdown(session, "host:100:") == [job_id]
        assert runs.heartbeat(session, job_id, OWNER, 60).stop_reason == "shutdown"
    assert _settle(db, job_id, queue) == "released"
    job = _job(db, job_id)
    assert job.lease_owner is None and job.status == "validating_files"
    assert _claim(db, job_id, owner="host:300:400:efgh").reason == "stop requested (shutdown)"  # no stale copy
    sent = len(queue.sent)
    with db() as session:
        assert runs.reap(session, queue, undelivered_after_s=3600) == [job_id]  # at once, not after a timeout
    job = _job(db, job_id)
    assert job.stop_reason is None and queue.sent[sent:] == [("validate", job_id, job.dispatch_id)]
    assert _claim(db, job_id, owner="host:300:400:efgh").ok  # another worker picks it up
