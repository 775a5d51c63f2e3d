"""The migrations and the lease queries on PostgreSQL (skipped where psycopg or the server is missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.service_support import free_port

pytestmark = pytest.mark.slow


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def _wait_ready(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine, deadline = create_engine(url), time.monotonic() + 20
    while True:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            engine.dispose()
            return
        except Exception:
            assert time.monotonic() < deadline, "postgres did not start"
            time.sleep(0.2)


@pytest.fixture
def postgres_url():
    pytest.importorskip("psycopg")
    initdb, postgres = _binary("initdb"), _binary("postgres")
    if not initdb or not postgres:
        pytest.skip("PostgreSQL is not installed")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="esft-pg-"))
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        [*as_user, initdb, "-D", str(root / "data"), "--auth=trust", "--no-sync", "-U", "esft"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            *as_user,
            postgres,
            "-D",
            str(root / "data"),
            "-p",
            str(port),
            "-k",
            str(root),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql+psycopg://esft@127.0.0.1:{port}/postgres"
    try:
        _wait_ready(url)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def test_migrations_and_leases_on_postgres(postgres_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from api.core import runs
    from api.core.db.models import Base, BaseModel, Job, Project
    from api.core.db.session import make_engine, session_scope
    from api.core.migrate import downgrade, upgrade

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
