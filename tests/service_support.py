"""Test support for the service: tiny datasets, job bodies, error checks and pytest fixtures.

Test folders import the fixtures into their ``conftest.py`` (``from tests.service_support import client, ...``);
nothing in the service packages imports this module (or pytest).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.core.db.session import session_scope
from api.core.queue import RecordingQueue
from api.core.settings import Settings
from api.main import create_app
from api.services.auth import create_key
from api.services.registry import add_base_model


def chat_rows(n: int = 12) -> list[dict]:
    colours = ["red", "blue", "green", "yellow"]
    words = ["apple", "ocean", "leaf", "sun"]
    return [
        {
            "messages": [
                {"role": "user", "content": colours[i % 4]},
                {"role": "assistant", "content": words[i % 4]},
            ]
        }
        for i in range(n)
    ]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def job_body(model: str, training_file: str, **hyper) -> dict:
    hp = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "seq_len": 32, **hyper}
    return {
        "model": model,
        "training_file": training_file,
        "seed": 1,
        "method": {"type": "esft", "esft": {"top_p": 0.5, "n_sample_tokens": 256, "hyperparameters": hp}},
    }


def assert_error(response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory) -> Path:
    from esft.models.toy import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("models") / "toy", layers=2, experts=8, top_k=2, hidden=64)


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """Embedded-mode settings in a temporary data dir; on PostgreSQL for tests marked ``db`` (second run)."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url_override=database_url,
        min_examples=4,
        heartbeat_interval_s=0.2,
        event_throttle_s=0.0,
        eval_max_examples=4,
        eval_max_new_tokens=4,
        model_roots=[tmp_path],
    )


@pytest.fixture
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture
def client(settings: Settings, queue) -> Iterator[TestClient]:
    app = create_app(settings, queue=queue)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _key(settings: Settings, project: str, admin: bool) -> dict[str, str]:
    with session_scope(settings.database_url) as session:
        raw, _ = create_key(session, project, is_admin=admin)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def auth(client, settings) -> dict[str, str]:
    """Admin key of project ``alpha``."""
    return _key(settings, "alpha", True)


@pytest.fixture
def other_auth(client, settings) -> dict[str, str]:
    """Plain key of project ``beta``."""
    return _key(settings, "beta", False)


@pytest.fixture
def base_model(client, settings, toy_model_dir) -> str:
    with session_scope(settings.database_url) as session:
        add_base_model(session, "toy", str(toy_model_dir), roots=None)
    return "toy"


@pytest.fixture
def upload(client, auth):
    def _upload(content: bytes, name: str = "train.jsonl", headers: dict | None = None, purpose="fine-tune"):
        return client.post(
            "/v1/files",
            files={"file": (name, content, "application/jsonl")},
            data={"purpose": purpose},
            headers=headers or auth,
        )

    return _upload


@pytest.fixture
def training_file(upload) -> str:
    response = upload(jsonl(chat_rows()))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """Serve an app with uvicorn on a background thread (for clients that need a real socket)."""

    def __init__(self, app) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
