"""Keys: `esft keys list|revoke`, `esft limits set`, the /v1/keys routes scoped by project, revocation at once,
and the first admin key kept out of the server's output."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from api.cli import ensure_default_key, first_key_notice, register
from api.core.db.session import session_scope
from api.services.auth import authenticate
from tests.service_support import _key, assert_error


def _cli(*args: str, data_dir) -> str:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_lists_and_revokes_keys_and_revoked_keys_get_401_at_once(client, settings, monkeypatch):
    monkeypatch.setenv("ESFT_DATA_DIR", str(settings.data_dir))
    alpha, beta = _key(settings, "alpha", False), _key(settings, "beta", True)
    raw_alpha = alpha["Authorization"][7:]
    assert client.get("/v1/files", headers=alpha).status_code == 200
    listed = [json.loads(line) for line in _cli("keys", "list", "--json", data_dir=settings.data_dir).splitlines()]
    assert {row["project"] for row in listed} == {"alpha", "beta"}
    assert not any(raw_alpha in json.dumps(row) for row in listed)  # never the key itself
    assert _cli("keys", "list", "--project", "beta", data_dir=settings.data_dir).count("\n") == 1
    _cli("keys", "revoke", raw_alpha[:12], data_dir=settings.data_dir)
    assert_error(client.get("/v1/files", headers=alpha), 401, "invalid_api_key")
    assert client.get("/v1/files", headers=beta).status_code == 200
    table = _cli("keys", "list", data_dir=settings.data_dir)
    assert "revoked" in table and raw_alpha[:12] in table


def test_key_routes_are_scoped_by_project(client, settings):
    alpha, alpha2, beta = _key(settings, "alpha", False), _key(settings, "alpha", False), _key(settings, "beta", False)
    admin = _key(settings, "ops", True)
    mine = client.get("/v1/keys", headers=alpha).json()["data"]
    assert {k["project"] for k in mine} == {"alpha"} and len(mine) == 2
    assert {k["project"] for k in client.get("/v1/keys", headers=admin).json()["data"]} == {"alpha", "beta", "ops"}
    beta_id = client.get("/v1/keys", headers=beta).json()["data"][0]["id"]
    assert_error(client.post(f"/v1/keys/{beta_id}/revoke", headers=alpha), 404)
    alpha2_id = next(k["id"] for k in mine if alpha2["Authorization"][7:].startswith(k["redacted_value"][:-3]))
    revoked = client.post(f"/v1/keys/{alpha2_id}/revoke", headers=alpha)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"], revoked.text
    assert_error(client.get("/v1/keys", headers=alpha2), 401)
    assert client.post(f"/v1/keys/{beta_id}/revoke", headers=admin).status_code == 200
    assert_error(client.get("/v1/files", headers=beta), 401)


def test_limits_set_per_project_and_key(client, settings, monkeypatch):
    monkeypatch.setenv("ESFT_DATA_DIR", str(settings.data_dir))
    headers = _key(settings, "alpha", False)
    _cli("limits", "set", "--project", "alpha", "stored_bytes=1000", "burst=7", data_dir=settings.data_dir)
    _cli("limits", "set", "--key", headers["Authorization"][7:19], "burst=9", data_dir=settings.data_dir)
    with session_scope(settings.database_url) as session:
        assert authenticate(session, headers["Authorization"]).overrides == {"stored_bytes": 1000, "burst": 9}
    _cli("limits", "set", "--key", headers["Authorization"][7:19], "burst=default", data_dir=settings.data_dir)
    with session_scope(settings.database_url) as session:
        principal = authenticate(session, headers["Authorization"])
    assert principal.overrides == {"stored_bytes": 1000, "burst": 7}
    # by id, as the 429 messages name it
    _cli("limits", "set", "--project", principal.project_id, "pinned_bytes=5", data_dir=settings.data_dir)
    with session_scope(settings.database_url) as session:
        assert authenticate(session, headers["Authorization"]).overrides["pinned_bytes"] == 5
    app = typer.Typer()
    register(app)
    args = ["limits", "set", "--project", "alpha", "gpus=2", "--data-dir", str(settings.data_dir)]
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "Unknown limit" in bad.output


def test_first_admin_key_is_written_to_a_private_file_not_printed(tmp_path):
    from api.core.migrate import upgrade
    from api.core.settings import Settings

    settings = Settings(data_dir=tmp_path)
    upgrade(settings.database_url)
    raw = ensure_default_key(settings)
    notice = first_key_notice(settings)
    assert raw not in notice and str(settings.api_key_file) in notice
    assert settings.api_key_file.stat().st_mode & 0o777 == 0o600
