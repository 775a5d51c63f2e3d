"""HotSwap: applying equals `esft.adapters.apply_adapter`, restoring is bit-exact, plans are reused."""

from __future__ import annotations

import torch

from esft.adapters import ESFTAdapter, applied
from esft.models.loading import load_model
from esft.serving.swap import HotSwap, row_runs


def test_row_runs_group_consecutive_rows():
    assert row_runs([1, 2, 3, 7]) == [(1, 3, 0), (7, 1, 3)]
    assert row_runs([0]) == [(0, 1, 0)]


def test_apply_matches_apply_adapter_and_restore_is_bit_exact(assets):
    model, _ = load_model(assets.model_dir)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    adapters = {name: ESFTAdapter.from_pretrained(assets.adapters[name]) for name in ("math", "dense", "words")}
    wants = {}
    for name, adapter in adapters.items():
        with applied(model, adapter):
            wants[name] = {k: v.clone() for k, v in model.state_dict().items()}
    swap = HotSwap(model, max_plans=2)
    for _ in range(2):  # the second round reuses (and evicts) the snapshots
        for name, adapter in adapters.items():
            swap.apply(name, adapter)  # restores the previous adapter first
            assert swap.active == name
            assert all(torch.equal(v, wants[name][k]) for k, v in model.state_dict().items()), name
        swap.restore()
        assert swap.active is None
        assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    assert len(swap._plans) == 2
