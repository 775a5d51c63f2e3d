"""Training: resume is bit-identical, masters stay fp32, variants train what they say, cancel keeps a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from esft import workflows
from esft.config import ScoringConfig, SelectionConfig, TrainingConfig
from esft.constants import ADAPTER_WEIGHTS_NAME
from esft.errors import CheckpointError, TrainingCancelled
from esft.expert_config import ExpertConfig
from esft.models.loading import load_model
from esft.training.checkpoint import list_checkpoints
from tests.conftest import CORE_FAMILIES


def _expert_config(model_dir, data, tmp_path, **flags):
    workflows.score(model_dir, data, tmp_path / "scores.json", ScoringConfig(batch_size=8))
    config = workflows.select(tmp_path / "scores.json", SelectionConfig("token", 0.3))
    for key, value in flags.items():
        setattr(config, key, value)
    config.save(tmp_path / "experts.json")
    return tmp_path / "experts.json"


@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_resume_is_bit_identical_to_an_uninterrupted_run(family, model_dirs, chat_data, tmp_path):
    model_dir = model_dirs(family)
    experts = _expert_config(model_dir, chat_data, tmp_path)
    config = dict(batch_size=4, learning_rate=3e-3, weight_decay=0.01, warmup_ratio=0.2, seed=3)
    workflows.train(model_dir, chat_data, experts, tmp_path / "full", TrainingConfig(max_steps=8, **config))
    # First half, stopped by the caller after step 4 ...
    with pytest.raises(TrainingCancelled):
        workflows.train(
            model_dir,
            chat_data,
            experts,
            tmp_path / "split",
            TrainingConfig(max_steps=8, **config),
            should_stop=_stop_after(4),
        )
    assert [p.name for p in list_checkpoints(tmp_path / "split")][-1] == "step-4"
    # ... then resumed in a new process-like call from the checkpoint.
    workflows.train(
        model_dir, chat_data, experts, tmp_path / "split", TrainingConfig(max_steps=8, **config), resume=True
    )
    full = load_file(str(tmp_path / "full" / ADAPTER_WEIGHTS_NAME))
    split = load_file(str(tmp_path / "split" / ADAPTER_WEIGHTS_NAME))
    assert full.keys() == split.keys()
    for key in full:
        assert torch.equal(full[key], split[key]), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def _stop_after(n: int):
    """A should_stop callback that asks to stop at the n-th poll (polled once per step)."""
    calls = iter(range(1, 10**6))
    return lambda: next(calls) >= n


def test_existing_checkpoints_need_resume(model_dirs, chat_data, tmp_path):
    model_dir = model_dirs("qwen3_moe")
    experts = _expert_config(model_dir, chat_data, tmp_path)
    with pytest.raises(TrainingCancelled):
        workflows.train(
            model_dir,
            chat_data,
            experts,
            tmp_path / "run",
            TrainingConfig(max_steps=4),
            should_stop=lambda: True,
        )
    with pytest.raises(CheckpointError, match="resume"):
        workflows.train(model_dir, chat_data, experts, tmp_path / "run", TrainingConfig(max_steps=4))
    with pytest.raises(CheckpointError, match="different settings"):
        workflows.train(
            model_dir, chat_data, experts, tmp_path / "run", TrainingConfig(max_steps=4, seed=9), resume=True
        )


def test_bf16_training_keeps_fp32_masters(model_dirs, chat_data, tmp_path):
    """At lr 1e-5 a bf16-only update rounds away; fp32 masters accumulate it."""
    from esft.methods.esft import get_esft_model

    model, _ = load_model(model_dirs("mixtral"), dtype="bfloat16")
    prepared = get_esft_model(model, ExpertConfig({0: [1, 2]}))
    params = prepared.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params.values())
    out = workflows.train(
        model_dirs("mixtral"),
        chat_data,
        _expert_config(model_dirs("mixtral"), chat_data, tmp_path),
        tmp_path / "bf16",
        TrainingConfig(max_steps=2, dtype="bfloat16", learning_rate=1e-3),
    )
    weights = load_file(str(out.adapter_dir / ADAPTER_WEIGHTS_NAME))
    assert all(t.dtype == torch.bfloat16 for t in weights.values())  # the adapter matches the base dtype


@pytest.mark.parametrize(
    "flags,expect",
    [
        ({"shared_experts": True}, "shared"),
        ({"non_expert_modules": True}, "self_attn"),
    ],
)
def test_paper_variants_add_their_tensors_to_the_adapter(flags, expect, model_dirs, chat_data, tmp_path):
    model_dir = model_dirs("qwen2_moe")
    experts = _expert_config(model_dir, chat_data, tmp_path, **flags)
    out = workflows.train(model_dir, chat_data, experts, tmp_path / "variant", TrainingConfig(max_steps=2))
    keys = load_file(str(out.adapter_dir / ADAPTER_WEIGHTS_NAME)).keys()
    assert any(expect in k for k in keys)
    assert any(k.endswith("experts.gate_up_proj") for k in keys)
    if "shared_experts" in flags:
        assert not any("self_attn" in k for k in keys)


def test_training_reduces_loss_on_the_task(model_dirs, chat_data, tmp_path):
    model_dir = model_dirs("deepseek_v2")
    experts = _expert_config(model_dir, chat_data, tmp_path)
    out = workflows.train(
        model_dir,
        chat_data,
        experts,
        tmp_path / "run",
        TrainingConfig(max_steps=30, learning_rate=5e-3, batch_size=8, lr_scheduler="constant"),
    )
    losses = [json.loads(x)["loss"] for x in (out.adapter_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
