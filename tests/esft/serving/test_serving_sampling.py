"""Per-request logit processing in the engine: bans, penalties, log-probabilities, JSON constraints, bounds,
and a request whose sampling breaks failing alone in a mixed batch."""

from __future__ import annotations

import json

import pytest
import torch

from esft.errors import ConfigError
from esft.serving import GenerationRequest, SamplingParams, ServingError, batch_generate
from esft.serving.decoding import Sampler
from esft.serving.grammar import GrammarCompiler, GrammarUnsupportedError
from tests.esft.serving.serving_assets import PROMPTS

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "digit": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["ok", "digit"],
    "additionalProperties": False,
}


def _ask(engine, prompt=PROMPTS[0], model=None, **params) -> GenerationRequest:
    return GenerationRequest(engine.encode(prompt), model, SamplingParams(**params))


def test_a_minus_100_bias_bans_the_greedy_token(make_engine):
    engine = make_engine()
    plain = engine.complete(_ask(engine, max_tokens=8), timeout=60)
    banned = plain.token_ids[0]
    biased = engine.complete(_ask(engine, max_tokens=8, logit_bias=((banned, -100.0),)), timeout=60)
    assert banned not in biased.token_ids and biased.token_ids


def test_penalties_subtract_presence_once_and_frequency_per_occurrence():
    sampler = Sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=1.0), torch.device("cpu"))
    for token in (3, 3, 7):
        sampler.observe(token)
    processed = sampler.process(torch.zeros(10))
    assert processed[3] == -2.5 and processed[7] == -1.5 and processed[0] == 0.0


def test_logprobs_describe_the_tokens_picked(make_engine):
    engine = make_engine()
    done = engine.complete(_ask(engine, max_tokens=6, logprobs=3), timeout=60)
    assert len(done.logprobs) == len(done.token_ids) > 0
    for token, entry in zip(done.token_ids, done.logprobs, strict=True):
        ids, values = zip(*entry.top, strict=True)
        assert entry.token == token and ids[0] == token and len(ids) == 3  # greedy: the top one is the pick
        assert entry.logprob == pytest.approx(values[0]) and list(values) == sorted(values, reverse=True) <= [0.0] * 3


def test_json_schema_output_parses_and_stops(make_engine):
    engine = make_engine(max_new_tokens=64)
    for temperature in (0.0, 1.0):
        done = engine.complete(
            _ask(engine, max_tokens=64, temperature=temperature, seed=1, json_schema=json.dumps(SCHEMA)), timeout=60
        )
        value = json.loads(done.text)
        assert done.finish_reason == "stop" and set(value) == {"ok", "digit"} and 0 <= value["digit"] <= 9


def test_unusable_tokenizer_or_schema_is_refused():
    with pytest.raises(GrammarUnsupportedError) as refused:
        GrammarCompiler(object(), 16, [1]).compile('{"type": "object"}')
    assert refused.value.param == "response_format"


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": float("nan")},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"seed": 2**63},
        {"seed": -1},
        {"presence_penalty": 2.5},
        {"frequency_penalty": float("inf")},
        {"logit_bias": ((1, -101.0),)},
        {"logprobs": 21},
        {"json_schema": "[1]"},
    ],
)
def test_out_of_range_sampling_is_refused(params):
    with pytest.raises(ConfigError):
        SamplingParams(**params)


def test_max_tokens_above_the_limit_is_refused_not_cut(make_engine):
    engine = make_engine(max_new_tokens=12)
    with pytest.raises(ServingError) as refused:
        engine.submit(_ask(engine, max_tokens=13))
    assert refused.value.param == "max_tokens" and refused.value.code == "max_tokens_too_large"
    with pytest.raises(ServingError):
        engine.submit(_ask(engine, logit_bias=((engine.vocab_size, 1.0),)))


def test_degenerate_requests_fail_or_decode_alone_in_a_mixed_batch(make_engine, solo):
    """Tiny temperatures decode greedily; a request with every token banned fails; its batch mates do not."""
    engine = make_engine(max_batch_size=8)
    every_token = tuple((token, -100.0) for token in range(engine.vocab_size))
    requests = [
        _ask(engine, PROMPTS[0], max_tokens=12),
        _ask(engine, PROMPTS[1], "math", max_tokens=12, temperature=1e-30),
        _ask(engine, PROMPTS[2], max_tokens=12, temperature=5e-324, seed=3),
        _ask(engine, PROMPTS[3], "words", max_tokens=12, temperature=1.0, logit_bias=every_token),
        _ask(engine, PROMPTS[1], "math", max_tokens=12),
    ]
    handles = [engine.submit(request) for request in requests]
    with pytest.raises(ServingError, match="No token is left"):
        handles[3].result(60)
    got = [handles[i].result(60).token_ids for i in (0, 1, 2, 4)]
    want = [("base", PROMPTS[0]), ("math", PROMPTS[1]), ("base", PROMPTS[2]), ("math", PROMPTS[1])]
    assert got == [solo[ask] for ask in want]
    assert batch_generate(engine, [_ask(engine, max_tokens=12)], timeout=60)[0].token_ids == solo["base", PROMPTS[0]]
