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
