"""FFT and LoRA through their folders and the path-level workflow: what trains, what stays frozen, resume, files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from esft import TrainingConfig, workflows
from esft.errors import ConfigError, TrainingCancelled
from esft.methods import get_method, get_model
from esft.methods.lora import attention_modules
from esft.models.loading import load_model


def _trained(method, model_dirs, chat_data, tmp_path, **options):
    config = TrainingConfig(max_steps=2, batch_size=4, learning_rate=1e-2, **options)
    return workflows.train(model_dirs("qwen3_moe"), chat_data, None, tmp_path / method, config, method=method)


def test_fft_trains_every_parameter(model_dirs, chat_data, tmp_path):
    model, _ = load_model(model_dirs("qwen3_moe"), device="cpu")
    prepared = get_model("fft", model)
    assert prepared.trainable_parameters().keys() == dict(model.named_parameters()).keys()
    out = _trained("fft", model_dirs, chat_data, tmp_path)
    trained, _ = load_model(out.adapter_dir, device="cpu")  # a whole model, with its tokenizer
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert any("experts.gate_up_proj" in n for n in changed) and any("self_attn" in n for n in changed)
    assert out.report["parameters"]["trainable"] == out.report["parameters"]["total"]


def test_lora_wraps_attention_only_and_keeps_base_weights(model_dirs, chat_data, tmp_path):
    model, _ = load_model(model_dirs("qwen3_moe"), device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert attention_modules(model) and all(".self_attn." in name for name in attention_modules(model))
    out = _trained("lora", model_dirs, chat_data, tmp_path)
    weights = load_file(str(out.adapter_dir / "adapter_model.safetensors"))
    assert weights and all("lora_" in k and ".self_attn." in k for k in weights)
    base, _ = load_model(model_dirs("qwen3_moe"), device="cpu")
    loaded = get_method("lora").from_pretrained(base, out.adapter_dir)
    for name, param in loaded.model.named_parameters():
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(param, before[base_name]), name


@pytest.mark.parametrize("method,weights", [("lora", "adapter_model.safetensors"), ("fft", "model.safetensors")])
def test_resume_equals_an_uninterrupted_run(method, weights, model_dirs, chat_data, tmp_path):
    config = TrainingConfig(max_steps=4, batch_size=4, learning_rate=1e-2, seed=1)
    model_dir = model_dirs("qwen3_moe")
    workflows.train(model_dir, chat_data, None, tmp_path / "full", config, method=method)
    calls = iter(range(1, 100))
    with pytest.raises(TrainingCancelled):
        workflows.train(model_dir, chat_data, None, tmp_path / "split", config, method=method,
                        should_stop=lambda: next(calls) >= 2)
    workflows.train(model_dir, chat_data, None, tmp_path / "split", config, method=method, resume=True)
    full, split = load_file(str(tmp_path / "full" / weights)), load_file(str(tmp_path / "split" / weights))
    assert full.keys() == split.keys() and all(torch.equal(full[k], split[k]) for k in full)


def test_expert_config_is_required_exactly_for_esft(model_dirs, chat_data, tmp_path):
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps({"experts": {"0": [1]}}))
    with pytest.raises(ConfigError, match="trains no expert selection") as refused:
        workflows.train(model_dirs("qwen3_moe"), chat_data, experts, tmp_path / "a", method="lora")
    assert refused.value.param == "expert_config"
    with pytest.raises(ConfigError, match="needs an expert config"):
        workflows.train(model_dirs("qwen3_moe"), chat_data, None, tmp_path / "b", method="esft")
    with pytest.raises(ConfigError, match="method"):
        get_method("dora")


def test_a_finished_run_is_not_overwritten(model_dirs, chat_data, tmp_path):
    _trained("lora", model_dirs, chat_data, tmp_path)
    with pytest.raises(ConfigError, match="already holds"):
        _trained("lora", model_dirs, chat_data, tmp_path)
