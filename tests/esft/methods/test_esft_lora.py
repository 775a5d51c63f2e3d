"""ESFT-LoRA: only the selected experts' low-rank factors train, every other tensor stays bit-identical, the
adapter is a fraction of ESFT's, and its rows materialise in the base dtype for serving (restore bit-exact)."""

from __future__ import annotations

import pytest
import torch

from esft import get_esft_model
from esft.adapters import apply_adapter, restore
from esft.errors import ConfigError
from esft.methods.esft_lora import ESFTLoRAAdapter, ESFTLoRAConfig, expert_rows_adapter, get_esft_lora_model
from esft.models.toy import toy_model

SELECTED = {"experts": {"0": [1, 3], "1": [0]}}
RANK = 2


def _base(dtype=torch.float32):
    return toy_model("qwen3_moe", seed=0, layers=2, experts=4).to(dtype)


def _steps(prepared, ids, steps=3):
    optimizer = torch.optim.AdamW(prepared.trainable_parameters().values(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        prepared(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_only_the_selected_experts_factors_train_and_all_else_is_bit_identical(tmp_path):
    before = {n: p.detach().clone() for n, p in _base().named_parameters()}
    prepared = get_esft_lora_model(_base(), ESFTLoRAConfig(rank=RANK, expert_config=SELECTED))
    shapes = {k: tuple(p.shape) for k, p in prepared.trainable_parameters().items()}
    assert shapes["model.layers.0.mlp.experts.gate_up_proj.lora_A"] == (2, RANK, 64)
    assert shapes["model.layers.1.mlp.experts.down_proj.lora_B"] == (1, 64, RANK)
    assert len(shapes) == 8  # A and B of both fused parameters in both layers, nothing else
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    _steps(prepared, ids)
    trained = _logits(prepared, ids)
    folded = prepared.fold()
    torch.testing.assert_close(_logits(folded, ids), trained, rtol=1e-5, atol=1e-5)
    after = dict(folded.named_parameters())
    assert after.keys() == before.keys()
    for name, original in before.items():
        if "mlp.experts." not in name:
            assert torch.equal(after[name], original), name
            continue
        layer = int(name.split(".")[2])
        selected = SELECTED["experts"][str(layer)]
        others = [e for e in range(4) if e not in selected]
        assert torch.equal(after[name][others], original[others]), name  # unselected experts untouched
        assert not torch.equal(after[name][selected], original[selected]), name


def test_adapter_is_a_fraction_of_esft_and_reloads_to_the_same_model(tmp_path):
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    prepared = get_esft_lora_model(_base(), ESFTLoRAConfig(rank=RANK, expert_config=SELECTED))
    _steps(prepared, ids)
    trained = _logits(prepared, ids)
    lora_dir = prepared.save_pretrained(tmp_path / "esft_lora")
    esft_dir = get_esft_model(_base(), SELECTED).save_pretrained(tmp_path / "esft")
    lora_bytes = (lora_dir / "adapter_model.safetensors").stat().st_size
    esft_bytes = (esft_dir / "adapter_model.safetensors").stat().st_size
    assert lora_bytes < esft_bytes / 2, (lora_bytes, esft_bytes)

    base = _base()
    pristine = {n: p.detach().clone() for n, p in base.named_parameters()}
    rows = expert_rows_adapter(lora_dir, base)  # what serving loads: plain expert rows in the base dtype
    assert set(rows.row_tensors) == {f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1)
                                     for p in ("gate_up_proj", "down_proj")}
    handle = apply_adapter(base, rows)
    torch.testing.assert_close(_logits(base, ids), trained, rtol=1e-5, atol=1e-5)
    restore(base, handle)
    assert all(torch.equal(p, pristine[n]) for n, p in base.named_parameters())


def test_rows_materialise_in_the_base_dtype():
    prepared = get_esft_lora_model(_base(torch.bfloat16), ESFTLoRAConfig(rank=RANK, expert_config=SELECTED))
    _steps(prepared, torch.randint(10, 200, (1, 8), generator=torch.Generator().manual_seed(2)), steps=1)
    adapter = prepared.adapter()
    rows = adapter.materialise(_base(torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for t in rows.tensors.values())
    expected = prepared.split[0].merged_rows("gate_up_proj")
    assert torch.equal(rows.tensors["model.layers.0.mlp.experts.gate_up_proj"], expected)


def test_refusals(tmp_path):
    with pytest.raises(ConfigError, match="needs an expert config"):
        get_esft_lora_model(_base(), ESFTLoRAConfig())
    with pytest.raises(ConfigError, match="rank"):
        ESFTLoRAConfig(rank=0)
    with pytest.raises(ConfigError, match="routed experts only"):
        get_esft_lora_model(_base(), ESFTLoRAConfig(expert_config={**SELECTED, "shared_experts": True}))
    with pytest.raises(ConfigError, match="not an ESFT-LoRA adapter"):
        ESFTLoRAAdapter.from_pretrained(get_esft_model(_base(), SELECTED).save_pretrained(tmp_path / "esft"))
