"""Adapters: save/load, apply equals the trained model, restore is bit-exact, merge loads with from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from esft import workflows
from esft.adapters import ESFTAdapter, applied, apply_adapter, restore
from esft.config import ScoringConfig, SelectionConfig, TrainingConfig
from esft.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from esft.errors import AdapterMismatchError, ConfigError
from esft.methods.esft import get_esft_model
from esft.models.loading import load_model
from tests.conftest import CORE_FAMILIES


def _train(model_dir, data, tmp_path, steps=4):
    workflows.score(model_dir, data, tmp_path / "scores.json", ScoringConfig(batch_size=8))
    workflows.select(tmp_path / "scores.json", SelectionConfig("token", 0.3), tmp_path / "experts.json")
    return workflows.train(
        model_dir,
        data,
        tmp_path / "experts.json",
        tmp_path / "adapter",
        TrainingConfig(max_steps=steps, learning_rate=1e-2, batch_size=8),
    )


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_apply_restore_merge_round_trip(family, model_dirs, chat_data, tmp_path):
    model_dir = model_dirs(family)
    out = _train(model_dir, chat_data, tmp_path)
    adapter = ESFTAdapter.from_pretrained(out.adapter_dir)
    ids = torch.randint(10, 400, (2, 16), generator=torch.Generator().manual_seed(0))

    # The trained model itself: base + trained rows loaded from the adapter's own weights.
    trained, _ = load_model(model_dir)
    prepared = get_esft_model(trained, adapter.expert_config)
    with torch.no_grad():
        for key, param in prepared.trainable_parameters().items():
            param.copy_(adapter.tensors[key])
    expected = _logits(trained, ids)

    model, _ = load_model(model_dir)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base_logits = _logits(model, ids)
    handle = apply_adapter(model, adapter)
    torch.testing.assert_close(_logits(model, ids), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(model, ids), base_logits)
    restore(model, handle)
    assert all(torch.equal(v, base_state[k]) for k, v in model.state_dict().items())
    assert torch.equal(_logits(model, ids), base_logits)

    merged_dir = workflows.merge(model_dir, out.adapter_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True)
    with applied(model, adapter):
        assert all(torch.equal(v, merged.state_dict()[k]) for k, v in model.state_dict().items())


def test_adapter_holds_only_the_trained_experts(model_dirs, chat_data, tmp_path):
    out = _train(model_dirs("deepseek_v2"), chat_data, tmp_path, steps=1)
    config = json.loads((out.adapter_dir / ADAPTER_CONFIG_NAME).read_text())
    adapter = ESFTAdapter.from_pretrained(out.adapter_dir)
    for key, tensor in adapter.tensors.items():
        assert tensor.shape[0] == len(config["experts"][str(adapter.row_tensors[key])])
    assert config["schema"] == "esft.adapter/1" and config["base_model"]["model_type"] == "deepseek_v2"
    assert config["weights"][ADAPTER_WEIGHTS_NAME]["sha256"]
    model, _ = load_model(model_dirs("deepseek_v2"))
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert adapter.nbytes < 0.5 * model_bytes


def test_adapter_for_another_base_model_is_rejected(model_dirs, chat_data, tmp_path):
    out = _train(model_dirs("qwen3_moe"), chat_data, tmp_path, steps=1)
    adapter = ESFTAdapter.from_pretrained(out.adapter_dir)
    other, _ = load_model(model_dirs("qwen3_moe", hidden=96))
    with pytest.raises(AdapterMismatchError, match="config hash"):
        apply_adapter(other, adapter)
    mixtral, _ = load_model(model_dirs("mixtral"))
    with pytest.raises(AdapterMismatchError, match="qwen3_moe"):
        apply_adapter(mixtral, adapter)


def test_corrupt_or_incomplete_adapter_is_rejected(model_dirs, chat_data, tmp_path):
    out = _train(model_dirs("olmoe"), chat_data, tmp_path, steps=1)
    weights = out.adapter_dir / ADAPTER_WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterMismatchError, match="sha256"):
        ESFTAdapter.from_pretrained(out.adapter_dir)
    (out.adapter_dir / ADAPTER_CONFIG_NAME).unlink()
    with pytest.raises(ConfigError, match="not an ESFT adapter"):
        ESFTAdapter.from_pretrained(out.adapter_dir)


def test_merge_adapter_is_a_deprecated_alias_of_load_adapter_fold(tmp_path):
    from esft import get_esft_model, load_adapter
    from esft.adapters import merge_adapter
    from esft.models.toy import toy_model

    prepared = get_esft_model(toy_model("qwen3_moe", layers=1, experts=4), {"experts": {"0": [1, 2]}})
    with torch.no_grad():
        for param in prepared.trainable_parameters().values():
            param.add_(0.5)
    prepared.save_pretrained(tmp_path / "adapter")
    with pytest.warns(DeprecationWarning, match="load_adapter"):
        merged = merge_adapter(toy_model("qwen3_moe", layers=1, experts=4), prepared.adapter())
    folded = load_adapter(toy_model("qwen3_moe", layers=1, experts=4), tmp_path / "adapter").fold()
    pairs = zip(merged.state_dict().values(), folded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
