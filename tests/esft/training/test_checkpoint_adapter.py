"""A checkpoint converts to the adapter of the rows training had at that step, bit for bit, in the base dtype."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from esft import TrainingConfig, get_esft_model, get_fft_model, train
from esft.adapters import ESFTAdapter, checkpoint_adapter
from esft.data.tokenize import TokenizedExample
from esft.errors import CheckpointError
from esft.expert_config import ExpertConfig
from esft.models.identity import model_identity
from esft.models.loading import load_model


def _bf16_copy(source, out):
    """The toy model saved in bfloat16, so the masters (fp32) and the adapter rows (bf16) differ."""
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True).to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(out)
    return out


def _data(n: int, length: int = 10) -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(10, 200, (n, length), generator=generator).tolist()
    return [TokenizedExample(ids, [-100] * 3 + ids[3:], False, i + 1) for i, ids in enumerate(rows)]


def _same(got: ESFTAdapter, want: ESFTAdapter) -> None:
    assert got.row_tensors == want.row_tensors and sorted(got.tensors) == sorted(want.tensors)
    for key, tensor in want.tensors.items():
        assert got.tensors[key].dtype == tensor.dtype == torch.bfloat16, key
        assert torch.equal(got.tensors[key], tensor), key
    assert got.expert_config.to_dict() == want.expert_config.to_dict()


@pytest.mark.parametrize("family,flags", [("deepseek_v2", {}), ("qwen2_moe", {"shared_experts": True})])
def test_checkpoint_is_the_adapter_of_its_step(family, flags, model_dirs, tmp_path):
    model_dir = _bf16_copy(model_dirs(family), tmp_path / "bf16")
    model, _ = load_model(model_dir, device="cpu")
    assert model.dtype == torch.bfloat16
    config = ExpertConfig({0: [1, 2], 1: [3]}, **flags)
    config.save(tmp_path / "experts.json")
    prepared = get_esft_model(model, config)
    at_step: dict[int, ESFTAdapter] = {}

    def progress(event) -> None:
        if event.checkpoint:  # the rows as training has them right after saving this checkpoint
            adapter = prepared.adapter()  # dense tensors are the live parameters on CPU: keep a copy
            adapter.tensors = {key: tensor.clone() for key, tensor in adapter.tensors.items()}
            at_step[event.step] = adapter

    run = tmp_path / "run"
    config_ = TrainingConfig(max_steps=4, save_every=2, batch_size=4, learning_rate=1e-2)
    train(prepared, _data(16), config_, pad_token_id=0, out_dir=run, progress=progress)
    assert sorted(at_step) == [2, 4]
    for step, want in at_step.items():
        got = checkpoint_adapter(run / "checkpoints" / f"step-{step}", tmp_path / "experts.json", model_dir)
        _same(got, want)
        assert got.metadata["checkpoint"]["step"] == step
    _same(got, prepared.adapter())  # the last checkpoint is the final adapter
    saved = got.save_pretrained(tmp_path / "adapter")
    loaded = ESFTAdapter.from_pretrained(saved)  # sha256 checked
    _same(loaded, prepared.adapter())
    assert loaded.base_model["config_hash"] == model_identity(model_dir)["config_hash"]
    wider = checkpoint_adapter(run / "checkpoints" / "step-4", tmp_path / "experts.json", model_dir,
                               dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in wider.tensors.values())


def test_checkpoints_of_other_experts_or_methods_are_refused(model_dirs, tmp_path):
    model_dir = model_dirs("deepseek_v2")
    model, _ = load_model(model_dir, device="cpu")
    ExpertConfig({1: [0]}).save(tmp_path / "other.json")
    prepared = get_esft_model(model, ExpertConfig({0: [1]}))
    train(prepared, _data(4), TrainingConfig(max_steps=1, batch_size=4), pad_token_id=0, out_dir=tmp_path / "run")
    with pytest.raises(CheckpointError) as info:
        checkpoint_adapter(tmp_path / "run" / "checkpoints" / "step-1", tmp_path / "other.json", model_dir)
    assert info.value.param == "expert_config"
    fft, _ = load_model(model_dir, device="cpu")
    train(get_fft_model(fft), _data(4), TrainingConfig(max_steps=1, batch_size=4), pad_token_id=0,
          out_dir=tmp_path / "fft")
    with pytest.raises(CheckpointError, match="not an ESFT one"):
        checkpoint_adapter(tmp_path / "fft" / "checkpoints" / "step-1", tmp_path / "other.json", model_dir)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        checkpoint_adapter(tmp_path, tmp_path / "other.json", model_dir)
