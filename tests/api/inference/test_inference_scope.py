"""Admin versus project scope on the adapter routes, and the pinned-bytes quota, with two projects."""

from __future__ import annotations

from types import SimpleNamespace

from api.core.db.session import session_scope
from api.inference.embedded import mount_inference
from api.services import registry
from api.services.auth import authenticate
from esft.serving import EngineConfig
from tests.service_support import _key, assert_error


def _register(client, settings, headers, base_model, name: str, source) -> None:
    with session_scope(settings.database_url) as session:
        project = authenticate(session, headers["Authorization"]).project_id
        job = SimpleNamespace(id=f"ftjob-{name.replace(':', '-')}", project_id=project, model=base_model)
        registry.register_adapter(session, client.app.state.storage, job, name, source)


def _listed(client, headers) -> set[str]:
    response = client.get("/v1/adapters", headers=headers)
    assert response.status_code == 200, response.text
    return {a["name"] for a in response.json()["data"]["cache"]["adapters"]}


def test_adapter_routes_are_scoped_to_the_project_and_admins_see_all(client, settings, base_model, assets):
    alpha, beta, admin = _key(settings, "alpha", False), _key(settings, "beta", False), _key(settings, "ops", True)
    _register(client, settings, alpha, base_model, "ft:toy:alpha:math", assets.adapters["math"])
    _register(client, settings, beta, base_model, "ft:toy:beta:words", assets.adapters["words"])
    models = {name: {m["id"] for m in client.get("/v1/models", headers=h).json()["data"]} - {base_model}
              for name, h in (("alpha", alpha), ("beta", beta), ("admin", admin))}  # fmt: skip
    assert models == {"alpha": {"ft:toy:alpha:math"}, "beta": {"ft:toy:beta:words"},
                      "admin": {"ft:toy:alpha:math", "ft:toy:beta:words"}}  # fmt: skip
    engine = mount_inference(client.app, base_model, EngineConfig(max_new_tokens=8))
    try:
        assert client.post("/v1/adapters/ft:toy:alpha:math/load", headers=alpha).status_code == 200
        assert client.post("/v1/adapters/ft:toy:beta:words/load", headers=beta).status_code == 200
        assert _listed(client, alpha) == {"ft:toy:alpha:math"}
        assert _listed(client, beta) == {"ft:toy:beta:words"}
        assert _listed(client, admin) == {"ft:toy:alpha:math", "ft:toy:beta:words"}
        for action in ("load", "unload", "pin", "unpin"):
            assert_error(client.post(f"/v1/adapters/ft:toy:alpha:math/{action}", headers=beta), 404)
        pinned = client.post("/v1/adapters/ft:toy:beta:words/pin", headers=admin)
        assert pinned.status_code == 200 and pinned.json()["pinned"], pinned.text
        assert client.post("/v1/adapters/ft:toy:alpha:math/unload", headers=admin).status_code == 200
        assert _listed(client, admin) == {"ft:toy:beta:words"}
    finally:
        engine.close()


def test_pinned_bytes_quota_per_project(client, settings, base_model, assets):
    alpha, beta = _key(settings, "alpha", False), _key(settings, "beta", False)
    _register(client, settings, alpha, base_model, "ft:toy:alpha:math", assets.adapters["math"])
    _register(client, settings, alpha, base_model, "ft:toy:alpha:words", assets.adapters["words"])
    _register(client, settings, beta, base_model, "ft:toy:beta:words", assets.adapters["words"])
    engine = mount_inference(client.app, base_model, EngineConfig(max_new_tokens=8))
    try:
        size = client.post("/v1/adapters/ft:toy:alpha:math/load", headers=alpha).json()["bytes"]
        client.app.state.settings = settings.model_copy(update={"quota_pinned_bytes": int(size * 1.5)})
        assert client.post("/v1/adapters/ft:toy:alpha:math/pin", headers=alpha).status_code == 200
        error = assert_error(client.post("/v1/adapters/ft:toy:alpha:words/pin", headers=alpha), 429, "quota_exceeded")
        assert "pinned_bytes" in error["message"] and "esft limits set" in error["message"]
        assert not client.post("/v1/adapters/ft:toy:alpha:words/load", headers=alpha).json()["pinned"]
        # another project's pins are its own
        assert client.post("/v1/adapters/ft:toy:beta:words/pin", headers=beta).status_code == 200
        # unpinning frees the room
        assert client.post("/v1/adapters/ft:toy:alpha:math/unpin", headers=alpha).status_code == 200
        assert client.post("/v1/adapters/ft:toy:alpha:words/pin", headers=alpha).status_code == 200
        client.app.state.settings = settings.model_copy(update={"quota_pinned_bytes": size // 2})
        assert_error(client.post("/v1/adapters/ft:toy:alpha:math/pin", headers=alpha), 400, "quota_exceeded")
    finally:
        engine.close()
