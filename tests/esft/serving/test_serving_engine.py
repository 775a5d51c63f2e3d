"""Engine: answers equal `esft generate`, mixed batches equal solo runs, restore is exact, isolation holds."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
import torch

from esft import workflows
from esft.models.loading import load_model
from esft.serving import AdapterLoadError, GenerationRequest, SamplingParams, UnknownModelError, batch_generate
from tests.esft.serving.serving_assets import PROMPTS

MODELS = ("base", "math", "words", "dense")


def _request(engine, model: str, prompt: str, **params) -> GenerationRequest:
    return GenerationRequest(engine.encode(prompt), None if model == "base" else model, SamplingParams(**params))


@pytest.mark.parametrize("batching", ["mixed", "swap"])
def test_answers_equal_esft_generate(make_engine, assets, solo, batching):
    engine = make_engine(batching=batching)
    for name in MODELS:
        prompt = next((p for p in PROMPTS if solo[name, p]), PROMPTS[0])  # one it answers with some text
        adapter_dir = None if name == "base" else assets.adapters[name]
        want = workflows.generate(assets.model_dir, prompt, adapter_dir=adapter_dir, max_new_tokens=12)
        got = engine.complete(_request(engine, name, prompt, max_tokens=12), timeout=60)
        assert got.text.strip() == want and got.token_ids == solo[name, prompt], name


@pytest.mark.parametrize("batching", ["mixed", "swap"])
def test_mixed_batch_equals_each_request_alone(make_engine, solo, batching):
    engine = make_engine(batching=batching, max_batch_size=16)
    pairs = list(itertools.product(MODELS, PROMPTS))
    random.Random(0).shuffle(pairs)
    results = batch_generate(engine, [_request(engine, m, p, max_tokens=12) for m, p in pairs], timeout=120)
    assert [r.token_ids for r in results] == [solo[pair] for pair in pairs]
    assert len({tuple(solo[m, PROMPTS[0]]) for m in MODELS}) == len(MODELS)  # adapters really differ
    if batching == "mixed":
        assert engine.stats()["peak_adapters_in_batch"] >= 2  # math and words really shared a batch


def test_continuous_batching_joins_the_running_batch(make_engine, solo):
    engine = make_engine(max_new_tokens=200)
    long_ask = ("base", PROMPTS[2])  # the (seeded) base model does not stop within 200 tokens
    alone = engine.complete(_request(engine, *long_ask, max_tokens=200), timeout=60)
    if alone.finish_reason != "length":
        pytest.skip("the toy model stopped early; no long request to join")
    first_token = threading.Event()

    def on_long_token(event) -> None:  # a pause per token releases the GIL: the short request is sent in time,
        first_token.set()  # whatever else loads the machine
        time.sleep(0.005)

    long_handle = engine.submit(_request(engine, *long_ask, max_tokens=200), on_event=on_long_token)
    assert first_token.wait(30)
    short = engine.complete(_request(engine, "math", PROMPTS[1], max_tokens=12), timeout=60)
    assert not long_handle.done  # the short request joined and left while the long one ran
    assert short.token_ids == solo["math", PROMPTS[1]]
    assert long_handle.result(60).token_ids == alone.token_ids


@pytest.mark.parametrize("batching", ["mixed", "swap"])
def test_restore_after_use_is_bit_exact(make_engine, assets, batching):
    reference = {k: v.clone() for k, v in load_model(assets.model_dir)[0].state_dict().items()}
    engine = make_engine(batching=batching)
    batch_generate(engine, [_request(engine, m, PROMPTS[1], max_tokens=4) for m in MODELS], timeout=60)
    engine.complete(_request(engine, "dense", PROMPTS[1], max_tokens=4), timeout=60)
    engine.complete(_request(engine, "base", PROMPTS[1], max_tokens=4), timeout=60)  # swaps the adapter out
    assert engine.swapped_name is None
    engine.close()
    state = engine.model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], v) for k, v in reference.items())


@pytest.mark.parametrize(("batching", "slot_rows"), [("mixed", 8), ("mixed", 2), ("swap", 0)])
def test_concurrent_requests_never_see_other_adapters(make_engine, solo, batching, slot_rows):
    engine = make_engine(batching=batching, max_batch_size=4, slot_rows=slot_rows)  # 2 rows: slots churn
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(6):
            model, prompt = rng.choice(MODELS), rng.choice(PROMPTS)
            got = engine.complete(_request(engine, model, prompt, max_tokens=12), timeout=120).token_ids
            if got != solo[model, prompt]:
                failures.append(f"{model} {prompt!r}: {got} != {solo[model, prompt]}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_failed_adapter_fails_only_its_requests(make_engine, solo):
    engine = make_engine()
    running = engine.submit(_request(engine, "math", PROMPTS[0], max_tokens=12))
    with pytest.raises(AdapterLoadError) as info:
        engine.submit(_request(engine, "alien", PROMPTS[0]))
    assert info.value.code == "adapter_mismatch"
    with pytest.raises(UnknownModelError):
        engine.submit(_request(engine, "nope", PROMPTS[0]))
    assert running.result(60).token_ids == solo["math", PROMPTS[0]]


def test_seeded_sampling_does_not_depend_on_the_batch(make_engine):
    engine = make_engine(max_batch_size=8)
    sampled = dict(temperature=1.0, top_p=0.9, seed=7, max_tokens=12)
    alone = engine.complete(_request(engine, "math", PROMPTS[0], **sampled), timeout=60)
    crowd = [
        _request(engine, m, p, max_tokens=12, temperature=0.7, seed=i)
        for i, (m, p) in enumerate(itertools.product(MODELS, PROMPTS[1:]))
    ]
    results = batch_generate(engine, [*crowd[:3], _request(engine, "math", PROMPTS[0], **sampled), *crowd[3:]])
    assert results[3].token_ids == alone.token_ids


def test_stop_strings_streaming_cancel_and_unload(make_engine, solo):
    engine = make_engine()
    full = engine.complete(_request(engine, "words", PROMPTS[2], max_tokens=12), timeout=60)
    handle = engine.submit(_request(engine, "words", PROMPTS[2], max_tokens=12))
    assert "".join(event.text for event in handle.stream(timeout=60)) == full.text
    base = engine.complete(_request(engine, "base", PROMPTS[2], max_tokens=12), timeout=60).text  # seeded
    stop = base[len(base) // 2 :][:2]
    cut = engine.complete(_request(engine, "base", PROMPTS[2], max_tokens=12, stop=(stop,)), timeout=60)
    assert cut.finish_reason == "stop" and cut.text == base[: base.index(stop)]
    with engine.weights_lock:  # the scheduler cannot admit it before it is cancelled
        cancelled = engine.submit(_request(engine, "math", PROMPTS[0], max_tokens=12))
        cancelled.cancel()
    with pytest.raises(Exception, match="cancelled"):
        cancelled.result(30)
    assert engine.unload_adapter("words")
    engine.complete(_request(engine, "base", PROMPTS[0], max_tokens=2), timeout=60)  # lets the scheduler evict
    assert "words" not in engine.stats()["slots"]["resident"]
    assert engine.complete(_request(engine, "words", PROMPTS[0]), timeout=60).token_ids == solo["words", PROMPTS[0]]
