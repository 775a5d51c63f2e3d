"""The inference features users expect, over HTTP: n, logprobs, penalties, logit_bias, response_format,
max_tokens bounds, stream usage, fingerprints, and 400s naming the field; every object checked against the
SDK's types strictly (``sdk_objects``)."""

from __future__ import annotations

import json

import pytest

from api.inference.objects import TokenTexts
from esft.serving import GenerationRequest, SamplingParams
from tests.api.inference.sdk_objects import objects
from tests.esft.serving.serving_assets import PROMPTS
from tests.service_support import assert_error

_HI = {"messages": [{"role": "user", "content": "hi"}]}
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "digit": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["ok", "digit"],
    "additionalProperties": False,
}


def _chat(inference, model="toy", prompt=PROMPTS[2], **body):
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, **body}
    return inference.post("/v1/chat/completions", json=payload)


def _complete(inference, model="words", prompt="red", **body):
    return inference.post("/v1/completions", json={"model": model, "prompt": prompt, "temperature": 0, **body})


def test_n_choices_share_one_prompt_and_sum_usage(inference):
    for response in (_chat(inference, n=2, max_tokens=6, temperature=1.0, seed=7), _complete(inference, n=3)):
        (body,) = objects(response)
        assert [c["index"] for c in body["choices"]] == list(range(len(body["choices"])))
        assert len(body["choices"]) in (2, 3)
        assert body["usage"]["completion_tokens"] <= 16 * len(body["choices"])
    assert_error(_chat(inference, n=10**3), 400, param="n")  # above the engine's max_choices


def test_chat_logprobs_describe_the_greedy_tokens(inference):
    (body,) = objects(_chat(inference, max_tokens=6, logprobs=True, top_logprobs=3))
    entries = body["choices"][0]["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"] > 0
    for entry in entries:
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["bytes"] == entry["bytes"] and top[0]["logprob"] == entry["logprob"] <= 0
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
    assert_error(_chat(inference, top_logprobs=2), 400, param="top_logprobs")  # needs logprobs: true
    assert_error(_chat(inference, logprobs=True, top_logprobs=21), 400, param="top_logprobs")


def test_completion_logprobs_follow_the_legacy_shape(inference):
    (body,) = objects(_complete(inference, logprobs=2, max_tokens=5))
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == body["usage"]["completion_tokens"]
    for chosen, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert max(top.values()) == chosen  # greedy: the pick is the most likely token


def test_a_minus_100_bias_bans_the_token_and_penalties_are_numbers(inference):
    engine = inference.app.state.inference_engine
    greedy = engine.complete(GenerationRequest(engine.encode(PROMPTS[2]), None, SamplingParams(max_tokens=6)))
    banned = max(set(greedy.token_ids), key=greedy.token_ids.count)  # its most frequent token
    banned_bytes = TokenTexts(engine.tokenizer)(banned)[1]
    (body,) = objects(_chat(inference, max_tokens=6, logprobs=True, logit_bias={str(banned): -100}))
    assert all(e["bytes"] != banned_bytes for e in body["choices"][0]["logprobs"]["content"])
    objects(_chat(inference, max_tokens=6, presence_penalty=1.5, frequency_penalty=-0.5))
    assert_error(_chat(inference, presence_penalty=3), 400, param="presence_penalty")
    assert_error(_chat(inference, logit_bias={"x": 1}), 400, param="logit_bias")
    assert_error(_chat(inference, logit_bias={"1": -101}), 400, param="logit_bias.1")
    assert_error(_chat(inference, logit_bias={str(10**8): 1}), 400, param="logit_bias")


@pytest.mark.parametrize("model", ["toy", "math"])
def test_json_schema_answers_parse_and_follow_the_schema(inference, model):
    fmt = {"type": "json_schema", "json_schema": {"name": "flag", "schema": SCHEMA, "strict": True}}
    for temperature in (0, 1.0):
        (body,) = objects(_chat(inference, model, max_tokens=48, temperature=temperature, response_format=fmt))
        choice = body["choices"][0]
        value = json.loads(choice["message"]["content"])
        assert choice["finish_reason"] == "stop" and set(value) == {"ok", "digit"}
        assert isinstance(value["ok"], bool) and isinstance(value["digit"], int) and 0 <= value["digit"] <= 9


def test_json_object_answers_parse(inference):
    close = inference.app.state.inference_engine.tokenizer.convert_tokens_to_ids("}")
    # an untrained model may write a string forever; a bias towards "}" lets it close the object
    body = objects(_chat(inference, max_tokens=48, response_format={"type": "json_object"}, logit_bias={str(close): 5}))
    choice = body[0]["choices"][0]
    assert isinstance(json.loads(choice["message"]["content"]), dict) and choice["finish_reason"] == "stop"
    cut = objects(_chat(inference, "math", max_tokens=3, response_format={"type": "json_object"}))[0]["choices"][0]
    assert cut["finish_reason"] == "length" and cut["message"]["content"].startswith("{")  # unfinished, as OpenAI
    assert_error(_chat(inference, response_format={"type": "json_schema"}), 400, param="response_format")
    schema_fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    assert_error(_chat(inference, response_format=schema_fmt, ignore_eos=True), 400)


def test_max_tokens_above_the_limit_is_400_naming_the_field_used(inference):
    assert_error(_chat(inference, max_tokens=65), 400, "max_tokens_too_large", "max_tokens")
    assert_error(_chat(inference, max_completion_tokens=65), 400, "max_tokens_too_large", "max_completion_tokens")
    assert_error(_complete(inference, max_tokens=10**6), 400, "max_tokens_too_large", "max_tokens")
    (body,) = objects(_chat(inference, max_completion_tokens=64, ignore_eos=True))  # the limit itself is fine
    assert body["usage"]["completion_tokens"] == 64


def test_streams_interleave_choices_and_end_with_usage(inference):
    ask = {"max_tokens": 8, "n": 2, "seed": 3, "temperature": 1.0, "logprobs": True}
    (whole,) = objects(_chat(inference, **ask))
    events = objects(_chat(inference, **ask, stream=True, stream_options={"include_usage": True}))
    for index, choice in enumerate(whole["choices"]):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant" and mine[-1]["finish_reason"] == choice["finish_reason"]
        assert "".join(c["delta"].get("content") or "" for c in mine) == choice["message"]["content"]
        streamed = [entry for c in mine if c["logprobs"] for entry in c["logprobs"]["content"]]
        want = choice["logprobs"]["content"]  # same tokens; logprobs equal up to batch-shape rounding
        assert [e["bytes"] for e in streamed] == [e["bytes"] for e in want]
        assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in want], abs=1e-4)
    assert events[-1]["usage"] == whole["usage"] and {e["id"] for e in events} == {events[0]["id"]}
    text = objects(_complete(inference, n=2, stream=True, stream_options={"include_usage": True}))
    assert {e["choices"][0]["index"] for e in text if e["choices"]} == {0, 1} and text[-1]["usage"]


def test_fingerprint_names_the_base_and_the_adapter_revision(inference):
    base = objects(_chat(inference, "toy", max_tokens=2))[0]
    adapter = objects(_chat(inference, "math", max_tokens=2))[0]
    assert base["system_fingerprint"] == "fp_toy" and adapter["system_fingerprint"].startswith("fp_toy+")
    assert adapter["choices"][0]["message"]["refusal"] is None


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
        ({"best_of": 2}, "best_of", "not supported"),
        ({"prompt": []}, "prompt", ""),
        ({"prompt": ["a", "b"]}, "prompt", "one prompt"),
        ({"prompt": 5}, "prompt", ""),
        ({"frobnicate": 1}, "frobnicate", "Unrecognized request argument supplied: frobnicate"),
        ({"stream_options": {"include_usage": True, "extra": 1}}, "stream_options.extra", "Extra inputs"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": 5}]}, "messages[1].content", ""),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", ""),
        ({"seed": 2**63}, "seed", ""),
        ({"seed": -1}, "seed", ""),
        ({"temperature": 2.5}, "temperature", ""),
        ({"top_p": 0}, "top_p", ""),
    ],
)
def test_refused_and_unknown_fields_are_400_naming_them(inference, body, param, message):
    legacy = "best_of" in body or "prompt" in body
    path = "/v1/completions" if legacy else "/v1/chat/completions"
    payload = {"model": "toy", "prompt": "hi", **body} if legacy else {"model": "toy", **_HI, **body}
    error = assert_error(inference.post(path, json=payload), 400, param=param)
    assert message in error["message"]


def test_non_finite_numbers_are_400(inference):
    raw = b'{"model": "toy", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    response = inference.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, param="temperature")
