"""A real ``redis-server`` for tests: started in a temp dir on a free port, password-protected.

Use the fixture by importing it into a test module or conftest (``from tests.redis_support import redis_server``);
it yields the URL (``redis://:<password>@127.0.0.1:<port>/0``). ``RedisServer`` is also usable directly when a test
must stop and restart Redis (``server.stop()`` / ``server.start()`` keep the same port, password and data dir).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.service_support import free_port


class RedisServer:
    """One redis-server process bound to 127.0.0.1, persisting (AOF) into ``directory``."""

    def __init__(self, directory: Path, *, port: int | None = None, password: str | None = None):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.password = password or secrets.token_hex(16)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--requirepass", self.password,
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--save", "",
            "--protected-mode", "yes",
        ]  # fmt: skip
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.process.returncode}); see {self.directory}/redis.log")
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path_factory):
    """The URL of a fresh password-protected redis-server, stopped after the test."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
