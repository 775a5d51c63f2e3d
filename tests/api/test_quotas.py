"""Quotas per project: devices held by unfinished jobs, stored bytes; 429 naming the quota (400 when one request
is over it on its own), nothing stored, and overrides per project."""

from __future__ import annotations

from types import SimpleNamespace

from api.core.db.models import Project
from api.core.db.session import session_scope
from api.services.auth import set_limits
from api.services.quotas import devices_of
from tests.service_support import assert_error, chat_rows, job_body, jsonl


def _limit(client, settings, **values) -> None:
    client.app.state.settings = settings.model_copy(update=values)


def test_concurrent_devices_quota(client, settings, auth, other_auth, base_model, training_file, upload):
    _limit(client, settings, quota_concurrent_devices=2)
    body = job_body(base_model, training_file)
    first, second = (client.post("/v1/fine_tuning/jobs", json=body, headers=auth) for _ in range(2))
    assert first.status_code == second.status_code == 200, first.text
    error = assert_error(client.post("/v1/fine_tuning/jobs", json=body, headers=auth), 429, "quota_exceeded")
    assert "concurrent_devices" in error["message"] and "esft limits set" in error["message"]
    assert len(client.get("/v1/fine_tuning/jobs", headers=auth).json()["data"]) == 2  # nothing stored
    other_file = upload(jsonl(chat_rows()), headers=other_auth).json()["id"]  # another project has its own quota
    other_job = client.post("/v1/fine_tuning/jobs", json=job_body(base_model, other_file), headers=other_auth)
    assert other_job.status_code == 200
    assert client.post(f"/v1/fine_tuning/jobs/{first.json()['id']}/cancel", headers=auth).status_code == 200
    assert client.post("/v1/fine_tuning/jobs", json=body, headers=auth).status_code == 200


def test_devices_count_resources_gpus():
    assert devices_of(SimpleNamespace(resources={"gpus": 4})) == 4
    assert devices_of(SimpleNamespace(resources=SimpleNamespace(gpus=2))) == 2
    assert devices_of(SimpleNamespace(resources=None)) == devices_of(SimpleNamespace()) == 1


def test_stored_bytes_quota(client, settings, auth, upload, base_model):
    content = jsonl(chat_rows())
    _limit(client, settings, quota_stored_bytes=int(len(content) * 1.5))
    assert upload(content).status_code == 200
    error = assert_error(upload(content), 429, "quota_exceeded")
    assert "stored_bytes" in error["message"]
    assert len(client.get("/v1/files", headers=auth).json()["data"]) == 1  # the refused upload is gone
    assert len(list((settings.data_dir / "files").iterdir())) == 1
    assert_error(upload(jsonl(chat_rows(40))), 400, "quota_exceeded")  # over the quota on its own
    training_file = client.get("/v1/files", headers=auth).json()["data"][0]["id"]
    _limit(client, settings, quota_stored_bytes=len(content))  # full: no room for a job's model either
    job = client.post("/v1/fine_tuning/jobs", json=job_body(base_model, training_file), headers=auth)
    assert "stored_bytes" in assert_error(job, 429, "quota_exceeded")["message"]
    with session_scope(settings.database_url) as session:
        set_limits(session.query(Project).filter_by(name="alpha").one(), {"stored_bytes": 10 * len(content)})
    assert upload(content).status_code == 200
