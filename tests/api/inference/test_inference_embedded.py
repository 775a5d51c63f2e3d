"""Inference mounted in the service: registry adapters by id, API keys, adapters scoped to their project."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.core.db.session import session_scope
from api.core.queue import RecordingQueue
from api.inference.embedded import mount_inference, mount_inference_pool
from api.main import create_app
from api.services import registry
from api.services.auth import authenticate
from esft import workflows
from esft.adapters import adapter as adapter_module
from esft.constants import ADAPTER_WEIGHTS_NAME
from esft.io import sha256_file
from esft.serving import EngineClosedError, EngineConfig
from tests.esft.serving.serving_assets import PROMPTS
from tests.service_support import assert_error


def _chat(client, model: str, headers: dict | None = None):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[1]}], "temperature": 0, "max_tokens": 12}
    return client.post("/v1/chat/completions", json=body, headers=headers or {})


def _register_math(client, settings, auth, base_model, assets) -> None:
    """Register the ``math`` test adapter as ``ft:toy:math`` in the project of ``auth``."""
    with session_scope(settings.database_url) as session:
        project = authenticate(session, auth["Authorization"]).project_id
        job = SimpleNamespace(id="ftjob-inference", project_id=project, model=base_model)
        registry.register_adapter(session, client.app.state.storage, job, "ft:toy:math", assets.adapters["math"])


def test_embedded_inference_serves_registry_adapters_per_project(
    client, settings, auth, other_auth, base_model, assets
):
    _register_math(client, settings, auth, base_model, assets)
    engine = mount_inference(client.app, base_model, EngineConfig(max_new_tokens=12))
    try:
        reply = _chat(client, "ft:toy:math", auth)
        assert reply.status_code == 200, reply.text
        want = workflows.generate(assets.model_dir, PROMPTS[1], adapter_dir=assets.adapters["math"], max_new_tokens=12)
        assert reply.json()["choices"][0]["message"]["content"].strip() == want
        assert_error(_chat(client, "ft:toy:math", other_auth), 404, "model_not_found")  # another project's
        assert_error(_chat(client, "ft:toy:math"), 401)
        assert _chat(client, base_model, other_auth).status_code == 200
        assert_error(_chat(client, "ft:toy:nope", auth), 404, "model_not_found")
    finally:
        engine.close()


@contextmanager
def _counting_sql(app) -> Iterator[Counter]:
    """Statements run inside the block, counted by the table they read (``adapters``, ``api_keys``, ...)."""
    seen: Counter = Counter()

    def record(_conn, _cursor, statement, *_args) -> None:
        for table in ("adapters", "api_keys", "base_models"):
            seen[table] += f"FROM {table}" in statement

    engine = app.state.session_factory.kw["bind"]
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _count_hashes(monkeypatch) -> Counter:
    """Files hashed from now on (by the registry and by the library's adapter loader), by file name."""
    hashed: Counter = Counter()

    def counting(path, *args):
        hashed[Path(path).name] += 1
        return sha256_file(path, *args)

    monkeypatch.setattr(registry, "sha256_file", counting)
    monkeypatch.setattr(adapter_module, "sha256_file", counting)
    return hashed


def test_one_pass_per_request_key_and_adapter_row_read_once_weights_hashed_once(
    client, settings, auth, base_model, assets, monkeypatch
):
    _register_math(client, settings, auth, base_model, assets)
    pool = mount_inference_pool(client.app, EngineConfig(max_new_tokens=12))
    hashed = _count_hashes(monkeypatch)
    try:
        with _counting_sql(client.app) as reads:  # first request: loads the engine and the adapter
            assert _chat(client, "ft:toy:math", auth).status_code == 200
        assert reads["api_keys"] == 1 and reads["adapters"] == 1
        assert hashed[ADAPTER_WEIGHTS_NAME] == 1 and max(hashed.values()) == 1
        hashed.clear()
        with _counting_sql(client.app) as reads:  # adapter cached: one read each, nothing hashed
            assert _chat(client, "ft:toy:math", auth).status_code == 200
        assert reads["api_keys"] == 1 and reads["adapters"] == 1 and not hashed
    finally:
        pool.close()


def test_engines_close_when_the_app_shuts_down(client, settings, auth, base_model):
    app = create_app(settings, queue=RecordingQueue(), migrate=False)
    pool = mount_inference_pool(app, EngineConfig(max_new_tokens=12))
    with TestClient(app) as served:
        assert _chat(served, base_model, auth).status_code == 200
        engine = pool.engines[base_model]
    assert pool.engines == {}
    with pytest.raises(EngineClosedError):
        engine.start()
