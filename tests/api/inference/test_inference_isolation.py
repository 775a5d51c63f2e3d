"""Hostile sampling values on the inference routes: refused with 400 before anything is queued or streamed,
or answered (degenerate temperatures decode greedily); the engine answers a normal chat afterwards."""

from __future__ import annotations

import pytest

from tests.esft.serving.serving_assets import PROMPTS
from tests.service_support import assert_error

CHAT = {"model": "toy", "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 6}
TEXT = {"model": "toy", "prompt": PROMPTS[1], "max_tokens": 6}


def _answers_normally(inference) -> None:
    reply = inference.post("/v1/chat/completions", json={**CHAT, "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("seed", 2**64, None),
        ("seed", -1, None),
        ("temperature", 2.5, None),
        ("top_p", 0, None),
        ("max_tokens", 0, None),
        ("max_tokens", 10**9, "max_tokens_too_large"),
        ("n", 10**6, None),
        ("stop", ["a", "b", "c", "d", "e"], None),
        ("logit_bias", {"999999": 5}, None),
        (
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "big", "schema": {"description": "x" * 70_000}}},
            None,
        ),
    ],
)
def test_bad_sampling_values_are_400_before_the_stream_starts(inference, field, value, code, stream):
    response = inference.post("/v1/chat/completions", json={**CHAT, "stream": stream, field: value})
    assert response.headers["content-type"].startswith("application/json")
    param = "response_format.json_schema.schema" if field == "response_format" else field
    assert_error(response, 400, code, param)
    _answers_normally(inference)


def test_top_logprobs_bounds(inference):
    assert_error(
        inference.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 21}),
        400,
        None,
        "top_logprobs",
    )


@pytest.mark.parametrize(
    ("path", "body", "temperature"), [("/v1/chat/completions", CHAT, 1e-38), ("/v1/completions", TEXT, 1e-300)]
)
@pytest.mark.parametrize("stream", [False, True])
def test_degenerate_temperatures_are_answered_greedily(inference, path, body, temperature, stream):
    greedy = inference.post(path, json={**body, "temperature": 0}).json()
    response = inference.post(path, json={**body, "temperature": temperature, "stream": stream, "seed": 3})
    assert response.status_code == 200, response.text
    if stream:
        assert '"error"' not in response.text and response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["choices"][0] == greedy["choices"][0]
    _answers_normally(inference)
