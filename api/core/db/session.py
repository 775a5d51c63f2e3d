"""Engine and session factory for SQLite (WAL, busy timeout) or PostgreSQL (``DATABASE_URL``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

_ENGINES: dict[tuple, Engine] = {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (API + worker + reaper)
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20, pool_timeout: float = 10.0) -> Engine:
    """Create an engine; SQLite files get their folder created and concurrency-friendly pragmas.

    The pool (``Settings.db_pool``) bounds the connections of this process: ``pool_size`` kept open, up to
    ``max_overflow`` more under load, and a request waits ``pool_timeout`` seconds for one before failing.
    Requests hold a connection only while they query (never while a chat generates), so these stay small;
    an in-memory SQLite database is one connection per thread and takes no pool arguments.
    """
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if url.startswith("sqlite"):
        path = make_url(url).database
        memory = not path or path == ":memory:"
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connect = {"timeout": 30, "check_same_thread": False}
        engine = create_engine(url, connect_args=connect, **({} if memory else pool))
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def get_engine(url: str, **pool) -> Engine:
    """One engine per process, URL and ``pool`` arguments (the app's, sized by its settings, and the
    default one of scripts and workers); a forked worker child builds its own instead of sharing sockets."""
    key = (os.getpid(), url, tuple(sorted(pool.items())))
    if key not in _ENGINES:
        _ENGINES[key] = make_engine(url, **pool)
    return _ENGINES[key]


def session_factory(url: str, **pool) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url, **pool), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
