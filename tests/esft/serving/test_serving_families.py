"""The serving engine on every MoE family: an adapter served in mixed and swap batches answers exactly as the
adapter applied by hand, prompt by prompt, and the base weights are bit-exact afterwards; and the families
whose logits change under left padding (``LEFT_PADDING_LEAKS``, decoded one request at a time) are exactly
those listed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esft.adapters import ESFTAdapter, applied
from esft.expert_config import ExpertConfig
from esft.generation import encode_prompt, generate_ids, stop_token_ids
from esft.models.discovery import find_moe_layers
from esft.models.families import LEFT_PADDING_LEAKS
from esft.models.identity import identity_of
from esft.models.loading import load_model
from esft.models.toy import build_toy_model, toy_model
from esft.serving import Engine, EngineConfig, GenerationRequest, SamplingParams, dict_resolver
from tests.esft.families import MATRIX, family_guard

PROMPTS = ["add 3 and 6", "name a colour"]  # different lengths: the shorter one is left-padded in a batch
SELECTED = [0, 1, 2, 3]
NEW_TOKENS = 6


def _adapter(model, out: Path) -> ESFTAdapter:
    """Experts 0-3 of every MoE layer, moved far enough from the base rows to change the answers."""
    generator = torch.Generator().manual_seed(0)
    tensors, layers = {}, {}
    for layer in find_moe_layers(model):
        experts = layer.experts(model)
        for name in layer.expert_params:
            rows = getattr(experts, name).detach()[SELECTED].clone()
            rows += 3.0 * rows.std() * torch.randn(rows.shape, generator=generator).to(rows.dtype)
            tensors[f"{layer.experts_name}.{name}"], layers[f"{layer.experts_name}.{name}"] = rows, layer.layer_index
    config = ExpertConfig({index: SELECTED for index in set(layers.values())}, base_model=identity_of(model.config))
    adapter = ESFTAdapter(config, tensors, layers)
    adapter.save_pretrained(out)
    return adapter


def _alone(model, tokenizer, stop: list[int]) -> list[list[int]]:
    """Greedy tokens of each prompt, one prompt at a time (no padding), without the stop token."""
    out = [generate_ids(model, encode_prompt(tokenizer, p), max_new_tokens=NEW_TOKENS, eos_token_id=stop)
           for p in PROMPTS]
    return [ids[:-1] if ids and ids[-1] in stop else ids for ids in out]


@pytest.mark.parametrize("family", MATRIX)
def test_engine_answers_as_the_adapter_applied_by_hand(family, tmp_path):
    with family_guard(family):
        model_dir = build_toy_model(tmp_path / "base", family=family, layers=2, experts=8, top_k=2, hidden=64)
        model, tokenizer = load_model(model_dir)
        adapter = _adapter(model, tmp_path / "adapter")
        stop = sorted(stop_token_ids(tokenizer, model.generation_config))
        base_want = _alone(model, tokenizer, stop)
        with applied(model, adapter):
            adapter_want = _alone(model, tokenizer, stop)
        reference = {k: v.clone() for k, v in model.state_dict().items()}
        for batching in ("mixed", "swap"):
            config = EngineConfig(batching=batching, max_new_tokens=NEW_TOKENS, slot_rows=len(SELECTED))
            resolver = dict_resolver({"tuned": tmp_path / "adapter"})
            with Engine.from_pretrained(model_dir, resolver=resolver, config=config, base_name="base") as engine:
                params = SamplingParams(max_tokens=NEW_TOKENS)
                handles = [engine.submit(GenerationRequest(engine.encode(p), name, params))
                           for p in PROMPTS for name in (None, "tuned")]  # base and adapter interleaved, one batch
                got = [h.result(120).token_ids for h in handles]
                engine.close()
                state = engine.model.state_dict()
            assert got == [ids for pair in zip(base_want, adapter_want, strict=True) for ids in pair], batching
            assert all(torch.equal(state[k], v) for k, v in reference.items()), batching


@pytest.mark.parametrize("family", MATRIX)
def test_left_padding_changes_logits_exactly_where_listed(family):
    with family_guard(family):
        model = toy_model(family, layers=2, experts=8, top_k=2, hidden=64)
        generator = torch.Generator().manual_seed(0)
        short, long = (torch.randint(10, 200, (n,), generator=generator) for n in (12, 16))
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[0, :4] = 0
        ids = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), short]), long])
        with torch.no_grad():
            alone = model(input_ids=short[None], use_cache=False).logits[0, -1]
            padded = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           use_cache=False).logits[0, -1]
        # every exact family is within 2e-6 of the prompt alone (float reassociation); deepseek_v4 differs by 0.26
        assert bool((padded - alone).abs().max() > 1e-4) == (family in LEFT_PADDING_LEAKS)


def test_a_leaking_family_is_decoded_one_request_at_a_time(tmp_path):
    model_dir = build_toy_model(tmp_path / "base", family="deepseek_v4", layers=2, experts=8, top_k=2, hidden=64)
    with Engine.from_pretrained(model_dir, config=EngineConfig(max_batch_size=8)) as engine:
        assert engine.config.max_batch_size == 1
