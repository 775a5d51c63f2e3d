"""The official `openai` SDK, unchanged, against a real server on 127.0.0.1: chat, completions, streaming."""

from __future__ import annotations

import threading
import time

import openai
import pytest
import uvicorn

from esft import workflows
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
    assert reply.choices[0].message.content.strip() == want
    assert reply.usage.completion_tokens > 0 and reply.model == "math"


def test_completions_and_streaming(sdk):
    whole = sdk.completions.create(model="words", prompt="red", max_tokens=8, temperature=0)
    parts = sdk.completions.create(model="words", prompt="red", max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in parts) == whole.choices[0].text
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
