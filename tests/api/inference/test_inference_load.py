"""The service with inference under concurrent load, on a real server (uvicorn on a thread, SQLite, the toy
model): chats hold no database connection while they generate, so other projects' control-plane requests
stay fast; an abandoned or overdue request stops generating; a dead engine makes the service not ready."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest

from api.core.db.session import session_scope
from api.core.migrate import upgrade
from api.core.queue import RecordingQueue
from api.core.settings import Settings
from api.inference.embedded import mount_inference_pool
from api.main import create_app
from api.services import registry
from api.services.auth import create_key
from api.services.registry import add_base_model
from esft.serving import EngineConfig
from tests.esft.serving.serving_assets import PROMPTS
from tests.service_support import LiveServer, assert_error


@pytest.fixture(scope="module")
def served(tmp_path_factory, assets):
    """A live service serving the toy model; projects alpha (with adapter ``ft:toy:math``), beta and gamma."""
    # A pool far smaller than the 30 concurrent chats: any request holding a connection while it generates
    # would starve the others (and the file lists) within seconds.
    db_pool = {"db_pool_size": 2, "db_max_overflow": 2, "db_pool_timeout_s": 5}
    settings = Settings(data_dir=tmp_path_factory.mktemp("load") / "data", inference_request_timeout_s=20, **db_pool)
    upgrade(settings.database_url)
    keys = {}
    with session_scope(settings.database_url) as session:
        add_base_model(session, "toy", str(assets.model_dir), roots=None)
        for project in ("alpha", "beta", "gamma"):
            raw, key = create_key(session, project)
            keys[project] = {"Authorization": f"Bearer {raw}"}
            if project == "alpha":
                job = SimpleNamespace(id="ftjob-load", project_id=key.project_id, model="toy")
    app = create_app(settings, queue=RecordingQueue(), migrate=False)
    with session_scope(settings.database_url) as session:
        registry.register_adapter(session, app.state.storage, job, "ft:toy:math", assets.adapters["math"])
    pool = mount_inference_pool(app, EngineConfig(max_new_tokens=1000, max_batch_size=8))
    with LiveServer(app) as server:
        yield SimpleNamespace(url=server.url, keys=keys, pool=pool, app=app, settings=settings)


def _chat_body(model: str, **params) -> dict:
    params.setdefault("max_tokens", 8)
    return {"model": model, "messages": [{"role": "user", "content": PROMPTS[len(model) % 4]}], **params}


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.02)


def test_thirty_chats_from_two_projects_while_another_project_lists_files(served):
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with httpx.Client(base_url=served.url, timeout=120, limits=limits) as http:
        assert (
            http.post("/v1/chat/completions", json=_chat_body("ft:toy:math"), headers=served.keys["alpha"]).status_code
            == 200
        )
        chats = [("alpha", _chat_body("ft:toy:math", temperature=0.8, seed=i)) for i in range(15)]
        chats += [("beta", _chat_body("toy", temperature=0.8, seed=i)) for i in range(14)]
        chats.append(("beta", _chat_body("toy", temperature=1e-38)))  # degenerate: greedy, never NaN
        done = threading.Event()
        latencies: list[float] = []

        def list_files() -> None:
            # about 10 requests/s: a busy client, within the per-key rate limit (20/s, burst 60) however fast
            # the chats finish or the files answer
            while not done.is_set() or len(latencies) < 20:
                start = time.perf_counter()
                response = http.get("/v1/files", headers=served.keys["gamma"])
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text
                time.sleep(max(0.0, 0.1 - (time.perf_counter() - start)))

        def chat(project_body) -> httpx.Response:
            project, body = project_body
            return http.post("/v1/chat/completions", json=body, headers=served.keys[project])

        with ThreadPoolExecutor(max_workers=32) as pool:
            lister = pool.submit(list_files)
            replies = list(pool.map(chat, chats))
            done.set()
            lister.result()
    assert [r.status_code for r in replies] == [200] * 30, [r.text for r in replies if r.status_code != 200][:3]
    assert all(r.json()["usage"]["completion_tokens"] > 0 for r in replies)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    assert p95 < 1.0, f"GET /v1/files p95 {p95:.3f} s over {len(latencies)} calls"


def test_the_connection_pool_is_sized_by_the_settings(served):
    db = served.app.state.session_factory.kw["bind"].pool
    assert (db.size(), db._max_overflow, db._timeout) == (2, 2, 5)


def test_a_client_that_leaves_a_non_streaming_chat_cancels_its_generation(served):
    with httpx.Client(base_url=served.url, timeout=60) as http:  # loads the engine
        assert http.post("/v1/chat/completions", json=_chat_body("toy"), headers=served.keys["beta"]).status_code == 200
    engine = served.pool.engines["toy"]
    before = dict(engine.stats()["requests"])
    body = _chat_body("toy", max_tokens=1000, ignore_eos=True, temperature=0)
    thread = threading.Thread(target=_post_and_leave, args=(served, body), daemon=True)
    thread.start()
    _wait_for(lambda: engine.stats()["running"] == 1)
    _wait_for(lambda: engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0)
    after = engine.stats()["requests"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]  # it did not run to its 1000 tokens
    thread.join(10)


def _post_and_leave(served, body: dict) -> None:
    """POST ``body`` on a raw socket and close the connection once the engine runs it (a client that leaves)."""
    import json as json_module

    host, port = served.url.removeprefix("http://").split(":")
    payload = json_module.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: {served.keys['beta']['Authorization']}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    engine = served.pool.engines["toy"]
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + payload)
        _wait_for(lambda: engine.stats()["running"] == 1)


def test_a_request_past_its_deadline_gets_a_timeout_error(served, monkeypatch):
    monkeypatch.setattr(
        served.app.state, "settings", served.app.state.settings.model_copy(update={"inference_request_timeout_s": 0.3})
    )
    body = _chat_body("toy", max_tokens=1000, ignore_eos=True, temperature=0)
    with httpx.Client(base_url=served.url, timeout=60) as http:
        response = http.post("/v1/chat/completions", json=body, headers=served.keys["beta"])
    assert_error(response, 504, "timeout")
    engine = served.pool.engines["toy"]
    _wait_for(lambda: engine.stats()["running"] == 0)


class Fatal(BaseException):
    """Injected into the scheduler thread: ends it, as an error no ``except Exception`` catches would."""


def test_a_dead_engine_makes_the_service_not_ready_and_still_shuts_down(tmp_path, assets, monkeypatch):
    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        add_base_model(session, "toy", str(assets.model_dir), roots=None)
        raw, _ = create_key(session, "alpha")
    app = create_app(settings, queue=RecordingQueue(), migrate=False)
    pool = mount_inference_pool(app, EngineConfig(max_new_tokens=8))
    server = LiveServer(app)
    with server, httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {raw}"}) as http:
        assert http.post("/v1/chat/completions", json=_chat_body("toy")).status_code == 200
        assert http.get("/health/ready").status_code == 200
        engine = pool.engines["toy"]

        def fatal() -> None:
            raise Fatal("injected")

        monkeypatch.setattr(engine, "_process_unloads", fatal)
        assert_error(http.post("/v1/chat/completions", json=_chat_body("toy")), 503, "engine_closed")
        assert_error(http.post("/v1/chat/completions", json=_chat_body("toy")), 503, "engine_closed")  # no hang
        assert_error(http.get("/health/ready"), 503, "not_ready")
        assert http.get("/health").status_code == 200  # alive: the process answers
    assert not server.thread.is_alive()  # the server stopped; its shutdown closed the dead engine
    assert pool.engines == {}
