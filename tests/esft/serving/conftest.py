"""Fixtures for the serving tests: the shared tiny model + trained adapters, and engines built on them."""

from __future__ import annotations

import pytest

from esft.serving import Engine, EngineConfig, dict_resolver
from tests.esft.serving.serving_assets import ServingAssets, serving_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> ServingAssets:
    return serving_assets(tmp_path_factory)


@pytest.fixture
def make_engine(assets):
    """Build engines over the shared base model (closed after the test)."""
    engines: list[Engine] = []

    def make(**config) -> Engine:
        config.setdefault("max_new_tokens", 12)
        config.setdefault("slot_rows", 8)  # room for every test adapter at once (the default is E // 4 = 2)
        engine = Engine.from_pretrained(
            assets.model_dir, resolver=dict_resolver(assets.adapters), config=EngineConfig(**config), base_name="toy"
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(scope="session")
def solo(assets):
    """Reference answers: each (model, prompt) generated alone with ``esft.generation`` (greedy, 12 tokens).

    Returns ``(model, prompt) -> token ids`` for model in base/math/words/dense.
    """
    from esft.adapters import ESFTAdapter, applied
    from esft.generation import encode_prompt, generate_ids, stop_token_ids
    from esft.models.loading import load_model
    from tests.esft.serving.serving_assets import PROMPTS

    model, tokenizer = load_model(assets.model_dir)
    stop = stop_token_ids(tokenizer, model.generation_config)

    def run(prompt: str) -> list[int]:
        new = generate_ids(model, encode_prompt(tokenizer, prompt), max_new_tokens=12, eos_token_id=sorted(stop))
        return new[:-1] if new and new[-1] in stop else new  # the engine does not return the stop token

    answers = {("base", prompt): run(prompt) for prompt in PROMPTS}
    for name in ("math", "words", "dense"):
        with applied(model, ESFTAdapter.from_pretrained(assets.adapters[name])):
            answers.update({(name, prompt): run(prompt) for prompt in PROMPTS})
    return answers
