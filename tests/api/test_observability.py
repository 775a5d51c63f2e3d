"""Operations: Prometheus /metrics (parsed with prometheus_client's parser) and JSON logs with request and job ids."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.core import logs
from api.core.db.models import Job, JobEvent, utcnow
from api.core.db.session import session_scope
from tests.service_support import job_body


def scrape(client) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def _value(samples, name: str, **labels) -> float:
    matches = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples)
    return matches[0]


def test_metrics_http_latency_by_route_template_and_jobs(client, auth, base_model, training_file):
    for _ in range(3):
        assert client.get(f"/v1/files/{training_file}", headers=auth).status_code == 200
    client.get("/v1/files/file-nope", headers=auth)
    job = client.post("/v1/fine_tuning/jobs", json=job_body(base_model, training_file), headers=auth)
    assert job.status_code == 200, job.text
    metrics = scrape(client)
    latency = metrics["esft_http_request_duration_seconds"]
    route = "/v1/files/{file_id}"
    assert _value(latency, "esft_http_request_duration_seconds_count", route=route, status="200", method="GET") == 3
    assert _value(latency, "esft_http_request_duration_seconds_count", route=route, status="404") == 1
    assert not any(training_file in str(s.labels) for s in latency)  # templates, never raw paths
    assert _value(metrics["esft_jobs"], "esft_jobs", status="validating_files") == 1
    assert _value(metrics["esft_jobs"], "esft_jobs", status="succeeded") == 0
    assert _value(metrics["esft_queue_depth"], "esft_queue_depth") == 1


def test_metrics_training_step_time_and_tokens_per_second(client, settings, auth, base_model, training_file):
    job_id = client.post("/v1/fine_tuning/jobs", json=job_body(base_model, training_file), headers=auth).json()["id"]
    now = utcnow()
    with session_scope(settings.database_url) as session:
        session.get(Job, job_id).status = "running"
        for step, ago, rate in ((10, 5.0, 90.0), (20, 0.0, 110.0)):
            data = {"phase": "training", "step": step, "total_steps": 40, "tokens_per_s": rate}
            session.add(JobEvent(job_id=job_id, type="metrics", message="m", data=data,
                                 created_at=now - timedelta(seconds=ago)))  # fmt: skip
    metrics = scrape(client)
    assert _value(metrics["esft_training_step_seconds"], "esft_training_step_seconds") == pytest.approx(0.5)
    assert _value(metrics["esft_training_tokens_per_second"], "esft_training_tokens_per_second") == 110.0
    assert _value(metrics["esft_queue_depth"], "esft_queue_depth") == 0


@pytest.fixture
def log_lines():
    """Everything logged during the test, as the service's JSON lines (the root logger restored afterwards)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure_logging("json", stream=stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_request_ids_are_echoed_and_carried_by_json_logs(client, auth, log_lines):
    given = client.get("/v1/files", headers={**auth, "x-request-id": "trace-abc.123"})
    assert given.headers["x-request-id"] == "trace-abc.123"
    fresh = client.get("/v1/files", headers=auth).headers["x-request-id"]
    assert fresh.startswith("req_") and fresh != "trace-abc.123"
    odd = client.get("/v1/files", headers={**auth, "x-request-id": "x" * 300}).headers["x-request-id"]
    assert odd.startswith("req_")  # not a plain token: replaced
    assert client.get("/v1/nope", headers={**auth, "x-request-id": "missing-1"}).headers["x-request-id"] == "missing-1"
    lines = log_lines()
    access = {line["request_id"]: line for line in lines if line["logger"] == "api.access"}
    assert access["trace-abc.123"]["route"] == "/v1/files" and access["trace-abc.123"]["status"] == 200
    assert access[fresh]["method"] == "GET" and access["missing-1"]["status"] == 404
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_job_ids_in_logs(log_lines):
    with logs.job_context("ftjob-123"):
        logging.getLogger("worker.runner").warning("step failed", extra={"step": "train"})
    logging.getLogger("worker.runner").info("outside")
    inside, outside = log_lines()
    assert inside["job_id"] == "ftjob-123" and inside["step"] == "train" and inside["level"] == "warning"
    assert "job_id" not in outside
