"""Inference routes over HTTP: answers equal `esft generate`, OpenAI error envelope, SSE format, adapter admin."""

from __future__ import annotations

import pytest

from esft import workflows
from esft.serving import GenerationRequest, SamplingParams
from tests.api.inference.sdk_objects import objects
from tests.esft.serving.serving_assets import PROMPTS
from tests.service_support import assert_error


def _chat(inference, model: str, prompt: str, **body):
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, **body}
    return inference.post("/v1/chat/completions", json=payload)


def _events(response) -> list:
    return objects(response)  # each event validated against the SDK's types


@pytest.mark.parametrize(
    ("model", "prompt"), [("toy", PROMPTS[2]), ("math", PROMPTS[1]), ("words", PROMPTS[2]), ("dense", PROMPTS[0])]
)
def test_chat_answer_equals_esft_generate(inference, assets, model, prompt):
    adapter_dir = None if model == "toy" else assets.adapters[model]
    want = workflows.generate(assets.model_dir, prompt, adapter_dir=adapter_dir, max_new_tokens=12)
    (body,) = objects(_chat(inference, model, prompt, max_tokens=12))
    assert body["object"] == "chat.completion" and body["model"] == model
    assert body["choices"][0]["message"]["content"].strip() == want
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_unknown_model_is_404_in_the_openai_shape(inference):
    error = assert_error(_chat(inference, "no-such-model", "hi"), 404, "model_not_found", "model")
    assert error["type"] == "not_found_error"
    assert_error(inference.post("/v1/completions", json={"model": "nope", "prompt": "hi"}), 404, "model_not_found")


def test_incompatible_adapter_is_rejected_with_4xx(inference):
    assert_error(_chat(inference, "alien", "hi"), 400, "adapter_mismatch", "model")
    assert_error(inference.post("/v1/adapters/alien/load"), 400, "adapter_mismatch")
    assert _chat(inference, "math", PROMPTS[1], max_tokens=2).status_code == 200  # others still served


@pytest.mark.parametrize(
    "body",
    [
        {"temperature": 5},
        {"n": 0},
        {"top_p": "0.5"},
        {"max_tokens": 0},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"messages": []},
    ],
)
def test_invalid_parameters_are_rejected(inference, body):
    response = _chat(inference, "toy", "hi", **body)
    assert response.status_code in (400, 422), response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_context_overflow_is_400(inference):
    assert_error(
        inference.post("/v1/completions", json={"model": "toy", "prompt": "word " * 3000}),
        400,
        "context_length_exceeded",
    )


def test_chat_stream_chunks_follow_the_openai_format(inference):
    plain = objects(_chat(inference, "words", PROMPTS[2], max_tokens=12))[0]["choices"][0]["message"]["content"]
    response = _chat(inference, "words", PROMPTS[2], max_tokens=12, stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    chunks, usage = events[:-1], events[-1]
    assert all(e["object"] == "chat.completion.chunk" and e["choices"][0]["index"] == 0 for e in chunks)
    assert len({e["id"] for e in events}) == 1
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in chunks) == plain
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0


def test_completions_take_text_or_token_ids(inference):
    by_text = inference.post("/v1/completions", json={"model": "math", "prompt": "add 2 and 5", "temperature": 0})
    (body,) = objects(by_text)
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] <= 16
    ids = inference.app.state.inference_engine.encode("add 2 and 5", chat=False)
    by_ids = inference.post("/v1/completions", json={"model": "math", "prompt": ids, "temperature": 0})
    assert objects(by_ids)[0]["choices"][0]["text"] == body["choices"][0]["text"]
    stream = inference.post(
        "/v1/completions", json={"model": "math", "prompt": "add 2 and 5", "temperature": 0, "stream": True}
    )
    assert "".join(e["choices"][0]["text"] for e in _events(stream)) == body["choices"][0]["text"]
    assert_error(inference.post("/v1/completions", json={"model": "toy", "prompt": [10**7]}), 400, "invalid_prompt")


def test_adapter_load_pin_unload(inference):
    loaded = inference.post("/v1/adapters/words/load").json()
    assert loaded["loaded"] and loaded["bytes"] > 0 and not loaded["pinned"]
    assert inference.post("/v1/adapters/words/pin").json()["pinned"]
    assert not inference.post("/v1/adapters/words/pin", json={"pinned": False}).json()["pinned"]
    assert inference.post("/v1/adapters/words/pin").json()["pinned"]
    assert not inference.post("/v1/adapters/words/unpin").json()["pinned"]
    state = inference.get("/v1/adapters").json()["data"]
    assert "words" in {a["name"] for a in state["cache"]["adapters"]}
    assert inference.post("/v1/adapters/words/unload").json() == {
        "id": "words",
        "object": "adapter",
        "loaded": False,
        "pinned": False,
        "bytes": None,
        "load_ms": None,
    }
    assert "words" not in {a["name"] for a in inference.get("/v1/adapters").json()["data"]["cache"]["adapters"]}
    assert_error(inference.post("/v1/adapters/nope/load"), 404, "model_not_found")
    models = {m["id"]: m for m in inference.get("/v1/models").json()["data"]}
    assert models["toy"]["parent"] is None and models["math"]["parent"] == "toy"


def test_ignore_eos_generates_max_tokens(inference, inference_app, monkeypatch):
    """Without it the answer ends at a stop token; with it the same request runs on to ``max_tokens``."""
    engine = inference_app.state.inference_engine
    first = engine.complete(GenerationRequest(engine.encode(PROMPTS[0]), "math", SamplingParams(max_tokens=1)))
    monkeypatch.setattr(engine, "stop_ids", engine.stop_ids | {first.token_ids[0]})  # the answer's first token stops it
    (normal,) = objects(_chat(inference, "math", PROMPTS[0], max_tokens=6))
    assert normal["choices"][0]["finish_reason"] == "stop" and normal["usage"]["completion_tokens"] == 0
    (forced,) = objects(_chat(inference, "math", PROMPTS[0], max_tokens=6, ignore_eos=True))
    assert forced["choices"][0]["finish_reason"] == "length" and forced["usage"]["completion_tokens"] == 6


def test_the_standalone_app_checks_input_like_the_service(inference):
    """A NUL character in a message is a 400 naming the field, not a tokenizer crash."""
    response = _chat(inference, "toy", "a\x00b")
    assert_error(response, 400, "invalid_value", "messages[0].content")
