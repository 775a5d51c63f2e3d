"""Inference mounted in the service: registry adapters by id, API keys, adapters scoped to their project."""

from __future__ import annotations

from types import SimpleNamespace

from api.core.db.session import session_scope
from api.inference.embedded import mount_inference
from api.services import registry
from api.services.auth import authenticate
from esft import workflows
from esft.serving import EngineConfig
from tests.esft.serving.serving_assets import PROMPTS
from tests.service_support import assert_error


def _chat(client, model: str, headers: dict | None = None):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[1]}], "temperature": 0, "max_tokens": 12}
    return client.post("/v1/chat/completions", json=body, headers=headers or {})


def test_embedded_inference_serves_registry_adapters_per_project(
    client, settings, auth, other_auth, base_model, assets
):
    with session_scope(settings.database_url) as session:
        project = authenticate(session, auth["Authorization"]).project_id
        job = SimpleNamespace(id="ftjob-inference", project_id=project, model=base_model)
        registry.register_adapter(session, client.app.state.storage, job, "ft:toy:math", assets.adapters["math"])
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
