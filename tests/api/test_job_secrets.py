"""Job secrets (``SecretStr`` fields) stay out of every database column and response; the service's outbound-URL
check reads the allowlist from its settings."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, SecretStr
from sqlalchemy import inspect, text

from api.core import job_secrets
from api.core.db.session import session_scope
from api.core.outbound import check_url
from api.core.settings import Settings
from api.schemas.jobs import JobCreate
from api.services import jobs
from esft.errors import OutboundURLError
from tests.service_support import job_body

SECRET = "sk-judge-very-secret-123"


class Webhook(BaseModel):
    url: str
    api_key: SecretStr


class JobWithWebhook(JobCreate):
    webhook: Webhook | None = None


def _every_value(session) -> str:
    """Every column of every row of every table, as text."""
    dump = []
    for table in inspect(session.get_bind()).get_table_names():
        dump += [repr(tuple(row)) for row in session.execute(text(f'SELECT * FROM "{table}"'))]
    return "\n".join(dump)


def test_secrets_never_reach_the_job_row_nor_responses(client, settings, queue, auth, base_model, training_file):
    body = JobWithWebhook.model_validate(
        {**job_body(base_model, training_file), "webhook": {"url": "https://hooks.internal/x", "api_key": SECRET}}
    )
    with session_scope(settings.database_url) as session:
        project = session.execute(text("SELECT id FROM projects WHERE name = 'alpha'")).scalar_one()
        job = jobs.create(session, queue, settings, project, body)
        public = jobs.to_public(session, job).model_dump_json()
        job_id = job.id
    with session_scope(settings.database_url) as session:
        assert SECRET not in _every_value(session)
    assert SECRET not in public
    for path in (f"/v1/fine_tuning/jobs/{job_id}", "/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{job_id}/events"):
        assert SECRET not in client.get(path, headers=auth).text
    secrets_file = settings.storage_dir / "secrets" / f"{job_id}.json"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    assert job_secrets.load(settings, job_id) == {"webhook.api_key": SECRET}  # for the step that calls out
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth).status_code == 200
    with session_scope(settings.database_url) as session:
        assert job_secrets.sweep(settings, session) == [job_id]
    assert not secrets_file.exists()


def test_split_removes_nested_secrets_only():
    class Judge(BaseModel):
        model: str
        api_key: SecretStr

    class Evaluation(BaseModel):
        judge: Judge
        n: int = 3

    public, secrets = job_secrets.split(Evaluation(judge=Judge(model="gpt", api_key=SECRET)))
    assert public == {"judge": {"model": "gpt"}, "n": 3} and secrets == {"judge.api_key": SECRET}


def test_service_check_reads_the_allowlist_from_settings(monkeypatch, tmp_path):
    with pytest.raises(OutboundURLError) as info:
        check_url(Settings(data_dir=tmp_path), "https://judge.internal/v1", param="judge.url")
    assert info.value.param == "judge.url"
    monkeypatch.setenv("ESFT_OUTBOUND_URL_ALLOWLIST", "judge.internal, https://hooks.internal/x")
    settings = Settings(data_dir=tmp_path)
    check_url(settings, "https://judge.internal/v1", param="judge.url")
    check_url(settings, "https://hooks.internal/x/y", param="webhook.url")
    monkeypatch.setenv("ESFT_OUTBOUND_URL_ALLOWLIST", '["judge.internal"]')
    assert Settings(data_dir=tmp_path).outbound_url_allowlist == ["judge.internal"]
