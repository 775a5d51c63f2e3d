"""A real PostgreSQL server for the tests marked ``db``: one server per session, one database per test.

Tests marked ``@pytest.mark.db`` that use the ``settings`` fixture run twice, on SQLite and on PostgreSQL
(``pytest_generate_tests`` in ``tests/conftest.py`` parametrizes ``database``). The server runs as the
``postgres`` user when the tests run as root (``initdb`` refuses root), on a free port bound to 127.0.0.1, with
fsync off; each test gets a fresh copy of a template database already migrated to head.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASES = ("sqlite", "postgresql")
_TEMPLATE = "esft_template"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


class PostgresServer:
    """``initdb`` + ``postgres`` in a temporary folder; ``new_database()`` copies the migrated template."""

    def __init__(self) -> None:
        from tests.service_support import free_port

        self.root = Path(tempfile.mkdtemp(prefix="esft-pg-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._names = itertools.count()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://esft@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        initdb, postgres = _binary("initdb"), _binary("postgres")
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if as_user:
            shutil.chown(self.root, "postgres", "postgres")
        data = str(self.root / "data")
        subprocess.run([*as_user, initdb, "-D", data, "--auth=trust", "--no-sync", "-U", "esft"],
                       check=True, capture_output=True)  # fmt: skip
        command = [*as_user, postgres, "-D", data, "-p", str(self.port), "-k", str(self.root),
                   "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                   "-c", "full_page_writes=off", "-c", "max_connections=200"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        self._admin(f"CREATE DATABASE {_TEMPLATE}")
        from api.core.migrate import upgrade

        upgrade(self.url(_TEMPLATE))

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=esft dbname=postgres").close()
                return
            except psycopg.OperationalError:
                assert self.process.poll() is None, "postgres exited"
                assert time.monotonic() < deadline, "postgres did not start"
                time.sleep(0.1)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=esft dbname=postgres", autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        name = f"esft_test_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
        return name

    def drop_database(self, name: str) -> None:
        from api.core.db import session

        for key in [k for k in session._ENGINES if k[1] == self.url(name)]:
            session._ENGINES.pop(key).dispose()
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg")
    if not _binary("initdb") or not _binary("postgres"):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(request) -> str:
    """``sqlite`` or ``postgresql``: the database ``settings`` points at (parametrized for ``db`` tests)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(request, database: str) -> Iterator[str | None]:
    """None for SQLite (the default file under the data dir); a fresh PostgreSQL database otherwise."""
    if database == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.new_database()
    yield server.url(name)
    server.drop_database(name)
