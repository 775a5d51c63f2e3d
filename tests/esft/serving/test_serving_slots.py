"""Expert slots: one forward over a batch mixing adapters equals each row with its adapter applied alone."""

from __future__ import annotations

import pytest
import torch

from esft.adapters import ESFTAdapter, applied
from esft.models.loading import load_model
from esft.serving import ExpertSlots


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture
def loaded(assets):
    model, _ = load_model(assets.model_dir)
    adapters = {name: ESFTAdapter.from_pretrained(assets.adapters[name]) for name in ("math", "words", "dense")}
    return model, adapters


def test_mixed_batch_forward_equals_each_adapter_alone(loaded):
    model, adapters = loaded
    ids = torch.randint(10, 400, (4, 12), generator=torch.Generator().manual_seed(0))
    with applied(model, adapters["math"]):
        want_math = _logits(model, ids[1:2])
    with applied(model, adapters["words"]):
        want_words = _logits(model, ids[2:4])
    want_base = _logits(model, ids[0:1])
    assert not torch.allclose(want_math, _logits(model, ids[1:2]), atol=1e-4)  # the adapter changes answers

    slots = ExpertSlots(model, rows_per_layer=8, max_adapters=4)
    math, words = slots.place("math", adapters["math"]), slots.place("words", adapters["words"])
    slots.set_rows(torch.tensor([0, math, words, words]))
    got = _logits(model, ids)
    torch.testing.assert_close(got[0:1], want_base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1:2], want_math, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2:4], want_words, rtol=1e-5, atol=1e-5)
    slots.set_rows(None)
    torch.testing.assert_close(_logits(model, ids[0:1]), want_base, rtol=0, atol=0)


def test_slots_never_write_base_rows_and_detach_is_bit_exact(loaded):
    model, adapters = loaded
    before = _state(model)
    slots = ExpertSlots(model, rows_per_layer=4, max_adapters=2)
    for layer in slots._layers.values():
        assert layer.module.num_experts == layer.base_experts + 4
    slots.place("math", adapters["math"])
    slots.place("words", adapters["words"])
    for layer in slots._layers.values():
        for name in layer.info.expert_params:
            key = f"{layer.info.experts_name}.{name}"
            assert torch.equal(getattr(layer.module, name)[: layer.base_experts], before[key])
    slots.detach()
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(m.num_experts == 8 for m in (layer.module for layer in slots._layers.values()))


def test_slot_lru_eviction_keeps_adapters_in_use(loaded):
    model, adapters = loaded
    need = max(len(ids) for name in ("math", "words") for ids in adapters[name].expert_config.experts.values())
    slots = ExpertSlots(model, rows_per_layer=need, max_adapters=4)  # room for one adapter per layer
    assert slots.place("math", adapters["math"]) == 1
    assert slots.place("words", adapters["words"], keep={"math"}) is None  # math is busy: words waits
    assert slots.place("words", adapters["words"]) is not None  # math idle: evicted
    assert set(slots.residents) == {"words"}
    assert not slots.fits(adapters["dense"])  # dense weights (shared experts) cannot live in slots
    assert slots.evict("words") and not slots.evict("words")
