"""The service's CLI commands: `keys create`, `models add`, `openapi`, and the first-start admin key."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from api.cli import ensure_default_key, register
from api.core.db.session import session_scope
from api.core.settings import Settings
from api.services.auth import authenticate


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_keys_create_and_models_add(tmp_path, toy_model_dir, monkeypatch):
    runner, data = CliRunner(), str(tmp_path / "d")
    monkeypatch.setenv("ESFT_DATA_DIR", data)  # --data-dir exports it for subprocesses; restore it afterwards
    made = runner.invoke(_app(), ["keys", "create", "--project", "team-a", "--admin", "--data-dir", data])
    assert made.exit_code == 0, made.output
    raw = made.output.strip().splitlines()[-1]
    settings = Settings(data_dir=tmp_path / "d")
    with session_scope(settings.database_url) as session:
        principal = authenticate(session, f"Bearer {raw}")
    assert principal.is_admin
    added = runner.invoke(_app(), ["models", "add", str(toy_model_dir), "--id", "toy", "--data-dir", data])
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["details"]["model_type"] == "deepseek_v2"
    missing = runner.invoke(_app(), ["models", "add", str(tmp_path / "nope"), "--data-dir", data])
    assert missing.exit_code == 2


def test_first_start_creates_one_admin_key(tmp_path):
    from api.core.migrate import upgrade

    settings = Settings(data_dir=tmp_path)
    upgrade(settings.database_url)
    raw = ensure_default_key(settings)
    assert raw and settings.api_key_file.read_text().strip() == raw
    assert settings.api_key_file.stat().st_mode & 0o777 == 0o600
    assert ensure_default_key(settings) is None


def test_openapi_command_writes_the_schema(tmp_path):
    out = tmp_path / "schema.json"
    result = CliRunner().invoke(_app(), ["openapi", "--out", str(out)])
    assert result.exit_code == 0 and json.loads(out.read_text())["info"]["title"] == "ESFT fine-tuning service"
