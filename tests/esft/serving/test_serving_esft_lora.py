"""ESFT-LoRA through the engine's expert slots and hot swap: rows materialised at load in the base dtype,
answers equal the adapter applied by hand, restore stays bit-exact, a swapped-in adapter never leaks into them."""

from __future__ import annotations

import pytest
import torch

from esft import TrainingConfig, workflows
from esft.adapters import ESFTAdapter, applied
from esft.generation import encode_prompt, generate_ids, stop_token_ids
from esft.methods.esft_lora import expert_rows_adapter
from esft.models.loading import load_model
from esft.serving import Engine, EngineConfig, GenerationRequest, SamplingParams, dict_resolver
from esft.serving.swap import HotSwap
from tests.esft.serving.serving_assets import PROMPTS


@pytest.fixture(scope="module")
def lora_dir(assets, tmp_path_factory):
    root = assets.adapters["math"].parent
    config = TrainingConfig(max_steps=4, learning_rate=5e-2, batch_size=8)
    out = tmp_path_factory.mktemp("esft-lora") / "adapter"
    return workflows.train(assets.model_dir, root / "math.jsonl", root / "math-experts.json", out, config,
                           method="esft_lora", method_options={"rank": 2}).adapter_dir


@pytest.mark.parametrize("batching", ["mixed", "swap"])
def test_engine_serves_esft_lora_as_materialised_rows(assets, lora_dir, batching):
    model, tokenizer = load_model(assets.model_dir)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    rows = expert_rows_adapter(lora_dir, model)
    assert all(t.dtype == model.dtype for t in rows.tensors.values())
    key, layer = next(iter(rows.row_tensors.items()))
    assert not torch.equal(rows.tensors[key], model.get_parameter(key)[rows.expert_config.experts[layer]])  # trained
    stop = sorted(stop_token_ids(tokenizer, model.generation_config))
    with applied(model, rows):
        want = [generate_ids(model, encode_prompt(tokenizer, p), max_new_tokens=8, eos_token_id=stop) for p in PROMPTS]
    want = [ids[:-1] if ids and ids[-1] in stop else ids for ids in want]
    config = EngineConfig(batching=batching, max_new_tokens=8, slot_rows=8)
    resolver = dict_resolver({"lora": lora_dir, "math": assets.adapters["math"]})
    with Engine.from_pretrained(assets.model_dir, resolver=resolver, config=config, base_name="toy") as engine:
        engine.complete(GenerationRequest(engine.encode(PROMPTS[0]), "math", SamplingParams(max_tokens=2)), timeout=60)
        got = [engine.complete(GenerationRequest(engine.encode(p), "lora", SamplingParams(max_tokens=8)), timeout=60)
               for p in PROMPTS]
        assert [g.token_ids for g in got] == want
        engine.complete(GenerationRequest(engine.encode(PROMPTS[0]), None, SamplingParams(max_tokens=2)), timeout=60)
        engine.close()
        state = engine.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items())


def test_base_rows_are_the_base_while_an_adapter_is_swapped_in(assets):
    model, _ = load_model(assets.model_dir)
    math = ESFTAdapter.from_pretrained(assets.adapters["math"])
    key = next(iter(math.row_tensors))
    ids = torch.arange(model.get_parameter(key).shape[0])
    pristine = model.get_parameter(key).detach().clone()
    swap = HotSwap(model)
    swap.apply("math", math)
    assert not torch.equal(model.get_parameter(key), pristine)
    assert torch.equal(swap.base_rows(key, ids), pristine)
    swap.restore()
    assert torch.equal(swap.base_rows(key, ids), pristine)
