"""FFT and LoRA baselines: what trains, what stays frozen, and the report's numbers."""

from __future__ import annotations

import pytest
import torch
from esft.baselines.methods import attention_modules, train_baseline
from esft.experiments.evaluate import tokenize_rows
from esft.experiments.tasks import TASKS, sample_rows

from esft.config import TrainingConfig
from esft.errors import ConfigError
from esft.workflows import load_model


def _setup(model_dir):
    model, tokenizer = load_model(model_dir, device="cpu")
    data = tokenize_rows(sample_rows(TASKS["add"], 8, seed=0), tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model, tokenizer, data, before


def test_fft_trains_every_parameter(tiny_model_dir):
    model, tokenizer, data, before = _setup(tiny_model_dir)
    config = TrainingConfig(max_steps=2, batch_size=4, learning_rate=1e-2)
    trained, report = train_baseline("fft", model, data, config, pad_token_id=tokenizer.pad_token_id)
    assert report.trainable_parameters == report.total_parameters
    assert report.adapter_bytes == 4 * report.total_parameters
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    assert any("experts.gate_up_proj" in n for n in changed) and any("self_attn" in n for n in changed)


def test_lora_wraps_attention_only_and_keeps_base_weights(tiny_model_dir):
    model, tokenizer, data, before = _setup(tiny_model_dir)
    targets = attention_modules(model)
    assert targets and all(".self_attn." in name for name in targets)
    config = TrainingConfig(max_steps=2, batch_size=4, learning_rate=1e-2)
    trained, report = train_baseline("lora", model, data, config, pad_token_id=tokenizer.pad_token_id)
    trainable = [n for n, p in trained.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".self_attn." in n for n in trainable)  # no MLP, shared or routed expert is rewritten in
    assert trained.peft_config["default"].target_parameters in (None, set(), [])
    assert report.adapter_bytes == 4 * report.trainable_parameters < 4 * report.total_parameters
    for name, param in trained.named_parameters():
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" not in name and base_name in before:
            assert torch.equal(param, before[base_name]), name


def test_unknown_method_is_rejected(tiny_model_dir):
    model, tokenizer, data, _ = _setup(tiny_model_dir)
    with pytest.raises(ConfigError, match="method"):
        train_baseline("dora", model, data, TrainingConfig(max_steps=1), pad_token_id=tokenizer.pad_token_id)


@pytest.mark.parametrize("method", ["fft", "lora"])
def test_train_method_writes_loadable_weights_and_a_report(method, tiny_model_dir, tmp_path):
    from esft.baselines.workflow import train_method
    from esft.experiments.tasks import write_jsonl

    data = write_jsonl(sample_rows(TASKS["add"], 8, seed=0), tmp_path / "train.jsonl")
    out = tmp_path / method
    report = train_method(method, tiny_model_dir, data, out, TrainingConfig(max_steps=2, batch_size=4),
                          validation_path=data)
    assert report["steps"] == 2 and report["val_loss"] > 0 and (out / "train_report.json").is_file()
    if method == "fft":
        load_model(out, device="cpu")
    else:
        from peft import PeftModel

        base, _ = load_model(tiny_model_dir, device="cpu")
        assert isinstance(PeftModel.from_pretrained(base, out), PeftModel)
    with pytest.raises(ConfigError, match="already holds"):
        train_method(method, tiny_model_dir, data, out, TrainingConfig(max_steps=1))
