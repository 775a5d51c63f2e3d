"""The official `openai` SDK, unchanged, against a real server on 127.0.0.1: chat (n, logprobs, penalties,
logit_bias, JSON outputs), completions, streaming; every object validated strictly against the SDK's types."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
import uvicorn

from api.inference.objects import TokenTexts
from esft import workflows
from tests.api.inference.sdk_objects import sdk_object
from tests.esft.serving.serving_assets import PROMPTS


@pytest.fixture(scope="module")
def base_url(inference_app):
    server = uvicorn.Server(uvicorn.Config(inference_app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def sdk(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def test_chat_completion_equals_esft_generate(sdk, assets):
    want = workflows.generate(assets.model_dir, PROMPTS[1], adapter_dir=assets.adapters["math"], max_new_tokens=12)
    reply = sdk.chat.completions.create(model="math", messages=_messages(PROMPTS[1]), max_tokens=12, temperature=0)
    sdk_object(reply)
    assert reply.choices[0].message.content.strip() == want
    assert reply.usage.completion_tokens > 0 and reply.model == "math"


def test_completions_and_streaming(sdk):
    whole = sdk.completions.create(model="words", prompt="red", max_tokens=8, temperature=0)
    parts = list(sdk.completions.create(model="words", prompt="red", max_tokens=8, temperature=0, stream=True))
    assert "".join(chunk.choices[0].text for chunk in parts) == sdk_object(whole).choices[0].text
    assert whole.usage.prompt_tokens > 0


def test_chat_streaming_and_the_stream_helper(sdk):
    for model in ("words", "toy"):  # an answer long enough to cut with a stop string
        ask = {"model": model, "messages": _messages(PROMPTS[2]), "max_tokens": 12, "temperature": 0}
        text = sdk.chat.completions.create(**ask).choices[0].message.content
        if len(text) >= 4:
            break
    ask["stop"] = [text[len(text) // 2 :][:2]]  # the stream helper refuses answers cut by the length limit
    whole = sdk.chat.completions.create(**ask)
    assert whole.choices[0].finish_reason == "stop"
    chunks = list(sdk.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    with sdk.chat.completions.stream(**ask) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == whole.choices[0].message.content


def test_sdk_raises_typed_errors(sdk):
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-model", messages=_messages("hi"))
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="alien", messages=_messages("hi"))
    assert [m.id for m in sdk.models.list()][0] == "toy"


def test_concurrent_clients_for_two_adapters_get_their_own_answers(sdk):
    asks = [("math", PROMPTS[1]), ("words", PROMPTS[2]), ("math", PROMPTS[0]), ("words", PROMPTS[3])]

    def answer(model: str, prompt: str) -> str:
        reply = sdk.chat.completions.create(model=model, messages=_messages(prompt), max_tokens=12, temperature=0)
        return reply.choices[0].message.content

    solo = {ask: answer(*ask) for ask in asks}
    got: list[tuple] = []
    threads = [threading.Thread(target=lambda ask=ask: got.append((ask, answer(*ask)))) for ask in asks * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == len(threads) and all(text == solo[ask] for ask, text in got)


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "digit": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["ok", "digit"],
    "additionalProperties": False,
}


def test_chat_features_through_the_sdk(sdk, inference_app):
    ask = {"model": "words", "messages": _messages(PROMPTS[2]), "max_tokens": 8}
    two = sdk_object(sdk.chat.completions.create(**ask, n=2, temperature=1.0, seed=11))
    assert [c.index for c in two.choices] == [0, 1] and two.system_fingerprint.startswith("fp_toy+")
    assert all(c.message.refusal is None for c in two.choices)

    scored = sdk_object(sdk.chat.completions.create(**ask, temperature=0, logprobs=True, top_logprobs=3))
    entries = scored.choices[0].logprobs.content
    assert len(entries) == scored.usage.completion_tokens > 0
    assert all(len(e.top_logprobs) == 3 and e.top_logprobs[0].bytes == e.bytes for e in entries)  # greedy: the top
    sdk_object(sdk.chat.completions.create(**ask, temperature=0, presence_penalty=1.0, frequency_penalty=0.5))

    banned = entries[0]
    token = TokenTexts(inference_app.state.inference_engine.tokenizer)
    banned_id = next(i for i in range(inference_app.state.inference_engine.vocab_size) if token(i)[1] == banned.bytes)
    unbanned = sdk_object(
        sdk.chat.completions.create(**ask, temperature=0, logprobs=True, logit_bias={str(banned_id): -100})
    )
    assert all(e.bytes != banned.bytes for e in unbanned.choices[0].logprobs.content)


def test_json_outputs_through_the_sdk(sdk, inference_app):
    ask = {"model": "toy", "messages": _messages("a JSON answer, please"), "max_tokens": 48, "temperature": 0}
    schema_format = {"type": "json_schema", "json_schema": {"name": "flag", "schema": SCHEMA, "strict": True}}
    reply = sdk_object(sdk.chat.completions.create(**ask, response_format=schema_format))
    value = json.loads(reply.choices[0].message.content)
    assert reply.choices[0].finish_reason == "stop" and set(value) == {"ok", "digit"}
    assert isinstance(value["ok"], bool) and value["digit"] in range(10)
    close = inference_app.state.inference_engine.tokenizer.convert_tokens_to_ids("}")
    # an untrained model may write one string forever; a bias towards "}" lets it close the object
    obj = sdk_object(
        sdk.chat.completions.create(**ask, response_format={"type": "json_object"}, logit_bias={str(close): 5})
    )
    assert isinstance(json.loads(obj.choices[0].message.content), dict) and obj.choices[0].finish_reason == "stop"


def test_streams_and_completions_validate_strictly(sdk):
    chunks = list(
        sdk.chat.completions.create(
            model="math",
            messages=_messages(PROMPTS[1]),
            max_tokens=8,
            temperature=0,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    for chunk in chunks:
        sdk_object(chunk)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1]) and {c.choices[0].index for c in chunks[:-1]} == {0, 1}
    text = sdk_object(sdk.completions.create(model="words", prompt="red", max_tokens=6, temperature=0, logprobs=2))
    assert len(text.choices[0].logprobs.tokens) == text.usage.completion_tokens


def test_unsupported_parameters_raise_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as tools:
        sdk.chat.completions.create(
            model="toy", messages=_messages("hi"), tools=[{"type": "function", "function": {"name": "f"}}]
        )
    assert tools.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as best_of:
        sdk.completions.create(model="toy", prompt="hi", best_of=2)
    assert best_of.value.param == "best_of"
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.chat.completions.create(model="toy", messages=_messages("hi"), extra_body={"frobnicate": 1})
    assert "Unrecognized request argument supplied: frobnicate" in unknown.value.message
