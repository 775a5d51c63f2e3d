"""The migrations and the lease queries on PostgreSQL (skipped where psycopg or the server is missing); the route
tests marked ``db`` run on PostgreSQL as well (tests/postgres_support.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_url(postgres_server):
    """A database of the session's server (tests/postgres_support.py), migrated to head."""
    name = postgres_server.new_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


def test_migrations_and_leases_on_postgres(postgres_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from api.core import runs
    from api.core.db.models import Base, BaseModel, Job, Project
    from api.core.db.session import make_engine, session_scope
    from api.core.migrate import downgrade, upgrade

    downgrade(postgres_url)  # the template is at head: the whole chain, down and up again
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    with session_scope(postgres_url) as session:
        session.add(Project(id="p", name="p"))
        session.add(BaseModel(id="m", path="/x", config_hash="h", architectures=[], identity={}))
        session.flush()
        session.add(
            Job(id="j", project_id="p", model="m", training_file="f", status="queued", step="score", dispatch_id="d",
                metadata_={"team": "a"})
        )
    with session_scope(postgres_url) as session:
        assert runs.claim(session, "j", "score", "d", "one", ttl_s=60).ok
        assert not runs.claim(session, "j", "score", "d", "two", ttl_s=60).ok
        assert runs.pause(session, session.get(Job, "j"))
        assert runs.stopped(session, "j", "one", "score") == "paused"
    _services_on_postgres(postgres_url)
    engine.dispose()
    downgrade(postgres_url)


def _services_on_postgres(url: str) -> None:
    """The JSON metadata filter and the opaque event cursors, on PostgreSQL's ``json`` type."""
    from api.core import runs
    from api.core.db.session import session_scope
    from api.services import events, jobs

    with session_scope(url) as session:
        found, _ = jobs.list_jobs(session, "p", status=None, metadata={"team": "a"}, after=None, limit=5)
        assert [j.id for j in found] == ["j"]
        assert jobs.list_jobs(session, "p", status=None, metadata={"team": "b"}, after=None, limit=5)[0] == []
        runs.add_event(session, "j", "later")
        session.commit()
        newest, more = events.list_events(session, "j", after=None, limit=1)
        assert newest[0].message == "later" and more
        assert events.list_events(session, "j", after="ftevent-" + "9" * 30, limit=5) == ([], False)
