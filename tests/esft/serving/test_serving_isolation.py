"""Isolation in the engine: bad requests are refused before they join a batch, a degenerate temperature
never poisons its batch, the scheduler survives any exception, deadlines and cancels free their slot."""

from __future__ import annotations

import time

import pytest

from esft.errors import ConfigError
from esft.serving import GenerationRequest, SamplingParams, ServingError
from esft.serving.errors import EngineClosedError, EngineFailure, RequestCancelled, RequestTimeout
from esft.serving.requests import MAX_JSON_SCHEMA_CHARS
from tests.esft.serving.serving_assets import PROMPTS


def _request(engine, prompt: str = PROMPTS[0], model: str | None = None, **params) -> GenerationRequest:
    params.setdefault("max_tokens", 6)
    return GenerationRequest(engine.encode(prompt), model, SamplingParams(**params))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ("a", "b", "c", "d", "e")}, "stop"),
        ({"logprobs": 21}, "logprobs"),
        ({"logit_bias": ((1, 101.0),)}, "logit_bias"),
        ({"json_schema": '{"description": "' + "x" * MAX_JSON_SCHEMA_CHARS + '"}'}, "json_schema"),
    ],
)
def test_sampling_params_are_bounded(params, named):
    with pytest.raises(ConfigError, match=f"`{named}`"):
        SamplingParams(**params)


def test_submit_refuses_prompt_tokens_outside_the_vocabulary(make_engine):
    engine = make_engine()
    with pytest.raises(ServingError) as refused:
        engine.submit(GenerationRequest([1, engine.vocab_size], None, SamplingParams(max_tokens=2)))
    assert refused.value.param == "prompt" and refused.value.code == "invalid_prompt"
    assert engine.stats()["waiting"] == 0
    assert engine.complete(_request(engine), timeout=60).token_ids  # still serving


@pytest.mark.parametrize("temperature", [1e-300, 1e-38, 1e-5])
def test_a_tiny_temperature_decodes_greedily_next_to_others(make_engine, temperature):
    engine = make_engine(max_batch_size=4)
    greedy = engine.complete(_request(engine, temperature=0), timeout=60)
    requests = [_request(engine, temperature=temperature, seed=1)] + [_request(engine, PROMPTS[i]) for i in (1, 2)]
    handles = [engine.submit(r) for r in requests]
    answers = [h.result(60) for h in handles]
    assert answers[0].token_ids == greedy.token_ids
    assert all(a.token_ids for a in answers)


class Injected(Exception):
    pass


class Fatal(BaseException):
    """Something that ends the scheduler thread itself (as a ``SystemExit`` raised inside it would)."""


def test_the_scheduler_survives_an_exception_outside_any_request(make_engine, monkeypatch):
    engine = make_engine(max_new_tokens=1000)
    running = engine.submit(_request(engine, max_tokens=1000, ignore_eos=True))
    _wait_for(lambda: engine.stats()["running"] == 1)
    real, faults = engine._process_unloads, iter([Injected("injected fault")])

    def failing_once():
        fault = next(faults, None)
        if fault is not None:
            raise fault
        real()

    monkeypatch.setattr(engine, "_process_unloads", failing_once)
    with pytest.raises(EngineFailure, match="injected fault"):  # what it was decoding fails, with the cause
        running.result(60)
    assert engine.complete(_request(engine, PROMPTS[1]), timeout=60).token_ids  # the next one is served
    health = engine.health()
    assert health["alive"] and health["errors"] == 1 and "injected fault" in health["last_error"]


def test_a_fault_that_repeats_stops_the_engine_instead_of_hanging_requests(make_engine, monkeypatch):
    engine = make_engine()

    def always():
        raise Injected("broken for good")

    monkeypatch.setattr(engine, "_process_unloads", always)
    with pytest.raises(EngineClosedError, match="broken for good"):
        engine.complete(_request(engine), timeout=60)
    assert engine.health()["alive"] is False


def test_a_dead_scheduler_fails_waiting_requests_refuses_new_ones_and_still_closes(make_engine, monkeypatch):
    engine = make_engine()
    engine.complete(_request(engine), timeout=60)

    def fatal():
        raise Fatal("the scheduler thread died")

    monkeypatch.setattr(engine, "_process_unloads", fatal)
    handle = engine.submit(_request(engine))
    with pytest.raises(EngineClosedError):
        handle.result(60)
    assert engine.health()["alive"] is False
    with pytest.raises(EngineClosedError):
        engine.submit(_request(engine))
    engine.close(timeout=5)  # restores the weights even so


def test_cancel_and_deadline_free_the_slot(make_engine):
    engine = make_engine(max_new_tokens=1000)
    long = {"max_tokens": 1000, "ignore_eos": True}
    cancelled = engine.submit(_request(engine, **long))
    expired = engine.submit(_timed(engine, 0.2))
    cancelled.cancel()
    with pytest.raises(RequestCancelled):
        cancelled.result(60)
    with pytest.raises(RequestTimeout) as timed_out:
        expired.result(60)
    assert timed_out.value.code == "timeout"
    stats = engine.stats()
    assert stats["running"] == 0 and stats["waiting"] == 0
    assert stats["requests"]["cancelled"] == 1 and stats["requests"]["timed_out"] == 1
    assert stats["requests"]["completed"] == 0


def _timed(engine, timeout_s: float) -> GenerationRequest:
    ids = engine.encode(PROMPTS[1])
    return GenerationRequest(ids, None, SamplingParams(max_tokens=1000, ignore_eos=True), timeout_s=timeout_s)


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


def test_a_request_that_breaks_the_prefill_fails_alone(make_engine, monkeypatch):
    engine = make_engine(max_batch_size=4)
    poison = engine.encode(PROMPTS[3])
    real = engine.batch._forward

    def forward(rows, input_ids, *args, **kwargs):  # fault injection: this prompt breaks any forward it is in
        if any(row.handle.request.prompt_ids == poison for row in rows):
            raise Injected("this prompt breaks the model")
        return real(rows, input_ids, *args, **kwargs)

    monkeypatch.setattr(engine.batch, "_forward", forward)
    with engine._cond:  # queue all four before the scheduler looks, so they are prefilled as one cohort
        handles = [engine.submit(_request(engine, prompt)) for prompt in PROMPTS]
    with pytest.raises(Injected):
        handles[3].result(60)
    assert all(handle.result(60).token_ids for handle in handles[:3])


def test_a_consumer_whose_callback_raises_loses_only_its_own_request(make_engine):
    engine = make_engine(max_batch_size=4, max_new_tokens=200)

    def broken(event) -> None:
        raise Injected("the consumer is gone")

    with engine._cond:  # one cohort
        victim = engine.submit(_request(engine, max_tokens=200, ignore_eos=True), on_event=broken)
        others = [engine.submit(_request(engine, prompt)) for prompt in PROMPTS[1:]]
    assert all(handle.result(60).token_ids for handle in others)
    _wait_for(lambda: victim.done)
    assert engine.stats()["requests"]["cancelled"] == 1 and engine.health()["errors"] == 0
