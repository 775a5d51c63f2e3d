"""The OpenAI error envelope everywhere: unknown routes, wrong methods, validation, bodies, crashes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.core.queue import RecordingQueue
from api.main import create_app
from tests.service_support import assert_error


def test_unknown_route_and_method(client, auth):
    assert_error(client.get("/v1/nope", headers=auth), 404, "not_found")
    assert_error(client.put("/v1/files", headers=auth), 405, "method_not_allowed")


def test_malformed_json_and_validation(client, auth):
    raw = client.post("/v1/fine_tuning/jobs", content=b"{oops", headers={**auth, "content-type": "application/json"})
    assert_error(raw, 400, "invalid_json")
    assert_error(client.post("/v1/fine_tuning/jobs", json={}, headers=auth), 400, "invalid_request", "model")
    assert_error(client.get("/v1/fine_tuning/jobs?limit=0", headers=auth), 400, param="limit")


def test_json_body_size_limit(client, auth):
    big = {"model": "x" * (2 * 1024 * 1024), "training_file": "f"}
    assert_error(client.post("/v1/fine_tuning/jobs", json=big, headers=auth), 413, "request_too_large")


def test_unexpected_errors_hide_the_trace(settings):
    app = create_app(settings, queue=RecordingQueue())

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    error = assert_error(response, 500, "server_error")
    assert error["type"] == "server_error" and "secret" not in response.text
