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
