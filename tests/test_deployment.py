"""The deployment files validate: docker-compose.yml with the example env file (no secret defaults, ports on
localhost), the Dockerfile (COPY sources exist, not root, pinned installs), and private data files."""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from api.core.queue import celery_config
from api.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
EXAMPLE_ENV = REPO / "docker" / "example.env"
DOCKERFILES = sorted(REPO.glob("docker/Dockerfile*"))
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD")


def _compose_config(env_file: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    command = [binary, "-f", str(COMPOSE), "--env-file", str(env_file), "config"]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_compose_validates_with_the_example_env_file():
    result = _compose_config(EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    published = [port for service in config["services"].values() for port in service.get("ports", [])]
    assert published and all(str(port).startswith("127.0.0.1:") for port in published), published
    assert "ports" not in config["services"]["postgres"] and "ports" not in config["services"]["redis"]
    redis = config["services"]["redis"]
    assert "--requirepass" in " ".join(redis["command"]) and "--appendonly yes" in " ".join(redis["command"])


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_has_no_default_for_a_secret(tmp_path, missing):
    env = tmp_path / "partial.env"
    env.write_text("".join(line + "\n" for line in EXAMPLE_ENV.read_text().splitlines()
                           if not line.startswith(f"{missing}=")))
    result = _compose_config(env)
    assert result.returncode != 0 and missing in result.stderr, result.stderr


def test_compose_file_holds_no_literal_secret():
    text = COMPOSE.read_text()
    for name in SECRETS:
        assert re.search(rf"\${{{name}:\?", text), f"{name} must come from the env file with no default"
    raw = yaml.safe_load(text)
    for name, service in {"x-esft": raw["x-esft"], **raw["services"]}.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|AUTH|SECRET", key):
                assert str(value).startswith("${"), f"{name}.{key} is written into docker-compose.yml"
            for password in re.findall(r"://[^:/@]*:([^@]*)@", str(value)):
                assert password.startswith("${"), f"{name}.{key} holds a literal password"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_sources(dockerfile):
    for keyword, args in _instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if any(p.startswith("--from") for p in shlex.split(args)):
            continue
        for source in parts[:-1]:
            assert glob.glob(str(REPO / source)), f"{dockerfile.name}: COPY source {source!r} does not exist"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_plain_user(dockerfile):
    users = [args for keyword, args in _instructions(dockerfile) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_pinned_and_not_editable(dockerfile):
    installs = [
        command
        for keyword, args in _instructions(dockerfile)
        if keyword == "RUN"
        for command in re.split(r"&&|;", args)
        if re.search(r"\bpip3?\s+install\b", command)
    ]
    assert installs
    for command in installs:
        words = shlex.split(command)
        assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt", command
        assert "-e" not in words and "--editable" not in words, f"editable install: {command}"
        for word in words:
            if re.match(r"torch\b", word):
                assert re.fullmatch(r"torch==[\w.+]+", word), f"unpinned torch: {command}"


def test_database_and_broker_folders_are_private(tmp_path):
    from api.core.db.session import make_engine

    settings = Settings(data_dir=tmp_path / "data")
    make_engine(settings.database_url).dispose()
    celery_config(settings)
    db = Path(settings.database_url.split("///", 1)[1])
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for folder in (settings.broker_dir, settings.broker_dir / "queue", settings.broker_dir / "control"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_an_existing_database_file_is_tightened_without_being_opened(tmp_path, monkeypatch):
    """Closing any descriptor of a SQLite file drops the process's locks on it: other processes then missed
    this one's commits (a resumed job's events stayed invisible to the API until the worker exited)."""
    from api.core import private

    db = tmp_path / "esft.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    opened, real_open = [], os.open
    monkeypatch.setattr(private.os, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    private.private_file(db)
    assert opened == [] and stat.S_IMODE(db.stat().st_mode) == 0o600
