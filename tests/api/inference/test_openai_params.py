"""docs/openai-compatibility.md is current, and every chat/completions row answers as it says: implemented or
accepted -> 200 (objects valid against the SDK's types), refused -> 400 naming the parameter."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from api.schemas import openai_params
from tests.api.inference.sdk_objects import objects
from tests.service_support import assert_error

REPO = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location("openai_params_script", REPO / "scripts" / "openai_params.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_is_current():
    assert (REPO / "docs" / "openai-compatibility.md").read_text() == _script().render(), (
        "docs/openai-compatibility.md is stale: run `python scripts/openai_params.py` and commit it"
    )


SAMPLES = {  # a value that uses each implemented or accepted parameter
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "logit_bias": {"5": -100, "6": 2.5},
    "logprobs": True,
    "max_completion_tokens": 3,
    "max_tokens": 3,
    "n": 2,
    "response_format": {"type": "json_object"},
    "seed": 2**63 - 1,
    "stop": ["\n", "."],
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.7,
    "top_logprobs": 2,
    "top_p": 0.9,
    "user": "user-1",
}
CHAT_BASE = {"model": "toy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
COMPLETION_BASE = {"model": "toy", "prompt": "red", "max_tokens": 3}
EXTRA = {  # what a parameter needs next to it
    ("chat", "top_logprobs"): {"logprobs": True},
    ("chat", "stream_options"): {"stream": True},
    ("completions", "stream_options"): {"stream": True},
    ("chat", "max_completion_tokens"): {"max_tokens": None},
}
ROWS = [("chat", name, status) for name, (status, _) in openai_params.CHAT.items()] + [
    ("completions", name, status) for name, (status, _) in openai_params.COMPLETIONS.items()
]


@pytest.mark.parametrize(("route", "name", "status"), ROWS, ids=[f"{r}-{n}" for r, n, _ in ROWS])
def test_one_request_per_row(inference, route, name, status):
    base = CHAT_BASE if route == "chat" else COMPLETION_BASE
    value = SAMPLES.get(name, True) if name not in base else base[name]
    if route == "completions" and name == "logprobs":
        value = 2
    body = {**base, name: value, **EXTRA.get((route, name), {})}
    body = {key: val for key, val in body.items() if val is not None}
    response = inference.post("/v1/chat/completions" if route == "chat" else "/v1/completions", json=body)
    if status == "refused":
        assert_error(response, 400, "unsupported_parameter", name)
    else:
        assert objects(response), name
