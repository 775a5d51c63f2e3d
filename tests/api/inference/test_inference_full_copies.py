"""Full copies (FFT, merged LoRA) in the service's engine pool: at most ``inference_max_full_copy_engines`` stay
loaded, the least recently used idle one is closed to load another, a busy one never is; and the adapter listing
before the first chat."""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from api.core.db.models import Adapter
from api.core.db.session import session_scope
from api.core.queue import RecordingQueue
from api.inference.embedded import mount_inference_pool
from api.inference.routes import IDLE_STATE
from api.main import create_app
from api.services import registry
from api.services.auth import authenticate
from esft import workflows
from esft.serving import EngineConfig
from tests.api.test_observability import _value, scrape
from tests.esft.serving.serving_assets import PROMPTS
from tests.service_support import LiveServer, assert_error


@pytest.fixture(scope="module")
def merged(assets, tmp_path_factory) -> dict[str, Path]:
    """Two whole models that answer differently: the toy base model with ``math``, and with ``words``, merged."""
    root = tmp_path_factory.mktemp("full-copies")
    return {name: workflows.merge(assets.model_dir, assets.adapters[name], root / name) for name in ("math", "words")}


def _register(client, settings, auth, base_model, merged) -> list[str]:
    """Register each merged model as a full copy in the project of ``auth``; their model ids."""
    with session_scope(settings.database_url) as session:
        project = authenticate(session, auth["Authorization"]).project_id
        for name, path in merged.items():
            job = SimpleNamespace(id=f"ftjob-{name}", project_id=project, model=base_model)
            row = registry.register_adapter(session, client.app.state.storage, job, f"ft:toy:{name}-full", path)
            assert registry.is_full_copy(row)
    return [f"ft:toy:{name}-full" for name in merged]


def _chat_body(model: str, **params) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": PROMPTS[1]}], "temperature": 0, **params}


def _answer(http, model: str, auth) -> str:
    reply = http.post("/v1/chat/completions", json=_chat_body(model, max_tokens=12), headers=auth)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == model
    return reply.json()["choices"][0]["message"]["content"]


def test_the_idle_full_copy_is_closed_to_load_another_and_reloads_on_its_next_chat(
    client, settings, auth, base_model, merged
):
    settings.inference_max_full_copy_engines = 1
    a, b = _register(client, settings, auth, base_model, merged)
    pool = mount_inference_pool(client.app, EngineConfig(max_new_tokens=12))
    try:
        first = _answer(client, a, auth)
        listing = client.get("/v1/adapters", headers=auth).json()["data"]  # only a full copy is loaded
        assert listing == IDLE_STATE  # its engine is not listed as if it were the base model's
        engine_a = weakref.ref(pool.engines[a])
        _answer(client, base_model, auth)  # base models' engines do not count against the limit
        _answer(client, b, auth)
        assert set(pool.engines) == {base_model, b} and pool.evictions == 1
        assert engine_a() is None  # closed (a running scheduler thread would keep it) and its model freed
        assert _value(scrape(client)["esft_engine_evictions"], "esft_engine_evictions_total") == 1
        engines = scrape(client)["esft_engine_batch_size"]  # full copies are summed, never named (project data)
        assert {sample.labels["model"] for sample in engines} == {base_model, "full_copy"}

        assert _answer(client, a, auth) == first  # loaded again from its files: the same greedy answer
        assert set(pool.engines) == {base_model, a} and pool.evictions == 2

        # every load checks the files against the manifest: an evicted copy changed on disk is refused
        with session_scope(settings.database_url) as session:
            folder = client.app.state.storage.path(session.get(Adapter, b).storage_key)
        (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
        refused = client.post("/v1/chat/completions", json=_chat_body(b, max_tokens=4), headers=auth)
        assert_error(refused, 500, "adapter_corrupted")
        assert set(pool.engines) == {base_model, a} and _answer(client, a, auth) == first
    finally:
        pool.close()


def _events(lines) -> list[dict | str]:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def test_a_full_copy_answering_a_stream_is_not_closed_for_another(client, settings, auth, base_model, merged):
    settings.inference_max_full_copy_engines = 1
    a, b = _register(client, settings, auth, base_model, merged)
    app = create_app(settings, queue=RecordingQueue(), migrate=False)
    pool = mount_inference_pool(app, EngineConfig(max_new_tokens=400))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        body = _chat_body(a, stream=True, max_tokens=400, ignore_eos=True)
        with http.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            next(lines)  # the role chunk: a's request is in its engine
            engine_a = pool.engines[a]
            with engine_a.weights_lock:  # a's engine pauses (every step takes this lock): the request stays in flight
                assert engine_a.in_flight() == 1
                busy = http.post("/v1/chat/completions", json=_chat_body(b, max_tokens=4))
            events = _events(lines)
        assert_error(busy, 503, "engine_capacity")
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
        assert set(pool.engines) == {a} and pool.evictions == 0

        _answer(http, b, auth)  # a's stream is over: its engine is idle now, and closed for b
        assert set(pool.engines) == {b} and pool.evictions == 1


def test_the_adapter_listing_before_the_first_chat_is_empty(client, auth, base_model):
    pool = mount_inference_pool(client.app, EngineConfig(max_new_tokens=12))
    try:
        reply = client.get("/v1/adapters", headers=auth)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"object": "engine", "data": IDLE_STATE}
        assert reply.json()["data"]["cache"]["adapters"] == []
    finally:
        pool.close()


def test_the_listing_shows_the_engine_serving_a_model_and_never_loads_one(
    client, settings, auth, other_auth, base_model, merged
):
    a, _ = _register(client, settings, auth, base_model, merged)
    pool = mount_inference_pool(client.app, EngineConfig(max_new_tokens=12))
    try:
        listed = client.get("/v1/adapters", params={"model": a}, headers=auth)
        assert listed.status_code == 200 and listed.json()["data"] == IDLE_STATE and not pool.engines  # not loaded
        _answer(client, base_model, auth)
        _answer(client, a, auth)
        assert client.get("/v1/adapters", headers=auth).json()["data"]["base_model"] == base_model
        assert client.get("/v1/adapters", params={"model": a}, headers=auth).json()["data"]["base_model"] == a
        assert_error(client.get("/v1/adapters", params={"model": a}, headers=other_auth), 404, "model_not_found")
        assert_error(client.get("/v1/adapters", params={"model": "nope"}, headers=auth), 404, "model_not_found")
    finally:
        pool.close()
