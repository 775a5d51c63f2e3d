"""Shared fixtures: tiny MoE models of any family and small task datasets, all built locally."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.postgres_support import DATABASES, database, database_url, postgres_server  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_generate_tests(metafunc):
    """Tests marked ``db`` run on SQLite and on a real PostgreSQL server (tests/postgres_support.py)."""
    if metafunc.definition.get_closest_marker("db") and "database" in metafunc.fixturenames:
        metafunc.parametrize("database", DATABASES, indirect=True)


def pytest_configure(config):
    """Tiny models run faster on one thread, and worker subprocesses do not fight the tests for cores."""
    import torch

    torch.set_num_threads(1)


# The families every acceptance check runs on; the full matrix (tests/esft/families.py: every supported family) runs the
# split-training invariants in tests/esft/methods/test_family_matrix.py.
CORE_FAMILIES = ("deepseek_v2", "deepseek_v3", "qwen2_moe", "qwen3_moe", "mixtral", "olmoe", "gpt_oss")


def write_chat_jsonl(path: Path, n: int = 24, offset: int = 0) -> Path:
    """A tiny chat task: add two numbers (multi-turn every fourth example)."""
    with path.open("w") as f:
        for i in range(offset, offset + n):
            messages = [
                {"role": "user", "content": f"add {i} and {i + 3}"},
                {"role": "assistant", "content": str(2 * i + 3)},
            ]
            if i % 4 == 0:
                messages += [
                    {"role": "user", "content": "and double it?"},
                    {"role": "assistant", "content": str(2 * (2 * i + 3))},
                ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Lazily built toy model directories, one per (family, options) key, shared by the session."""
    from esft.models.toy import build_toy_model

    cache: dict[tuple, Path] = {}

    def get(family: str = "deepseek_v2", **options) -> Path:
        key = (family, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"toy-{family}")
            cache[key] = build_toy_model(out / "model", family=family, **options)
        return cache[key]

    return get


@pytest.fixture
def chat_data(tmp_path) -> Path:
    return write_chat_jsonl(tmp_path / "train.jsonl")
