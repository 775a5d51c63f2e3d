"""Alembic: upgrade from an empty database matches the models exactly; downgrade removes everything."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from api.core.db.models import Base
from api.core.db.session import make_engine
from api.core.migrate import downgrade, upgrade


def test_upgrade_from_empty_then_downgrade(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert set(inspect(connection).get_table_names()) >= {"jobs", "files", "adapters", "api_keys"}
    downgrade(url)
    with engine.connect() as connection:
        assert inspect(connection).get_table_names() == ["alembic_version"]
    upgrade(url)  # and back up again
    engine.dispose()


def test_migrations_ship_inside_the_package_and_run_from_any_directory(tmp_path, monkeypatch):
    """``esft serve`` from a wheel has no checkout: the scripts and ``alembic.ini`` are package data of ``api``."""
    import subprocess
    import sys
    from pathlib import Path

    import api
    from api.core.migrate import alembic_config

    package = Path(api.__file__).resolve().parent
    config = alembic_config("sqlite://")
    assert package in Path(config.config_file_name).parents
    assert package in Path(config.get_main_option("script_location")).parents
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ESFT_DATA_DIR", str(tmp_path / "data"))
    subprocess.run([sys.executable, "-m", "api.core.migrate"], check=True, capture_output=True)
    with make_engine(f"sqlite:///{tmp_path}/data/esft.db").connect() as connection:
        assert "jobs" in inspect(connection).get_table_names()


def test_0002_keeps_cancel_flags_and_event_ids_both_ways(tmp_path):
    """Data written under 0001 survives 0002 (cancel flag -> stop reason, shown event ids kept) and back."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path}/m.db"
    upgrade(url, "0001")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO projects (id, name, created_at) VALUES ('p', 'p', '2026-01-01')"))
        connection.execute(text(
            "INSERT INTO base_models (id, path, architectures, config_hash, identity, created_at) "
            "VALUES ('m', '/m', '[]', 'h', '{}', '2026-01-01')"))
        for job, cancelled in (("j1", True), ("j2", False)):
            connection.execute(text(
                "INSERT INTO jobs (id, project_id, model, training_file, method, hyperparameters, seed, status, step,"
                " attempts, cancel_requested, result_files, created_at) VALUES (:id, 'p', 'm', 'f', '{}', '{}', 0,"
                " 'queued', 'validate', 0, :c, '[]', '2026-01-01')"), {"id": job, "c": cancelled})
        connection.execute(text("INSERT INTO job_events (id, job_id, created_at, level, type, message) "
                                "VALUES (7, 'j1', '2026-01-01', 'info', 'message', 'Created')"))
    upgrade(url)
    with engine.connect() as connection:
        reasons = dict(connection.execute(text("SELECT id, stop_reason FROM jobs ORDER BY id")).all())
        assert reasons == {"j1": "cancel", "j2": None}
        assert connection.execute(text("SELECT public_id FROM job_events")).scalar_one() == "ftevent-7"
    downgrade(url, "0001")
    with engine.connect() as connection:
        flags = dict(connection.execute(text("SELECT id, cancel_requested FROM jobs ORDER BY id")).all())
        assert {k: bool(v) for k, v in flags.items()} == {"j1": True, "j2": False}
    engine.dispose()


def test_0004_limit_overrides_keep_keys_both_ways(tmp_path):
    """Keys made under 0003 still authenticate after 0004 (no overrides) and survive the way back."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path}/m.db"
    upgrade(url, "0003")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO projects (id, name, created_at) VALUES ('proj-1', 'p', '2026-01-01')"))
        connection.execute(text(
            "INSERT INTO api_keys (id, project_id, name, key_hash, prefix, is_admin, created_at) "
            "VALUES ('key-1', 'proj-1', '', 'h', 'sk-esft-x', 0, '2026-01-01')"
        ))  # fmt: skip
    upgrade(url)
    with engine.begin() as connection:
        assert connection.execute(text("SELECT limits FROM api_keys")).scalar_one() is None
        connection.execute(text("""UPDATE projects SET limits = '{"burst": 5}'"""))
    downgrade(url, "0003")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM api_keys")).scalar_one() == "key-1"
        assert "limits" not in {c["name"] for c in inspect(connection).get_columns("projects")}
    engine.dispose()
