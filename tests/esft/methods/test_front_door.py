"""The front door alone, for every method: prepare -> AdamW steps -> save_pretrained -> from_pretrained on a fresh
base gives the trained model's outputs; AdamW holds exactly two moments per trainable element."""

from __future__ import annotations

import pytest
import torch

from esft import ESFTModel, get_esft_model, get_fft_model, get_lora_model, load_adapter
from esft.methods.esft_lora import ESFTLoRAConfig, ESFTLoRAModel, get_esft_lora_model
from esft.methods.fft import FFTModel
from esft.methods.lora import LoRAModel, get_lora_experts_model
from esft.models.toy import toy_model

FAMILY, SIZE = "qwen3_moe", {"layers": 2, "experts": 4}
OFFICIAL_FORMAT = {"experts": {"0": [1, 3], "1": [0]}, "shared_experts": False, "non_expert_modules": False}
PREPARE = {
    "esft": lambda model: get_esft_model(model, OFFICIAL_FORMAT),
    "fft": get_fft_model,
    "lora": get_lora_model,
    "lora_experts": get_lora_experts_model,
    "esft_lora": lambda model: get_esft_lora_model(model, ESFTLoRAConfig(rank=2, expert_config=OFFICIAL_FORMAT)),
}
LOAD = {"esft": ESFTModel.from_pretrained, "fft": FFTModel.from_pretrained, "lora": LoRAModel.from_pretrained,
        "lora_experts": LoRAModel.from_pretrained, "esft_lora": ESFTLoRAModel.from_pretrained}


def _base():
    return toy_model(FAMILY, seed=0, **SIZE)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _adamw_steps(prepared, ids, steps=3):
    trainable = prepared.trainable_parameters()
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.1)
    prepared.model.train()
    for _ in range(steps):
        prepared(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    prepared.model.eval()
    return trainable, optimizer


@pytest.mark.parametrize("method", sorted(PREPARE))
def test_train_save_and_load_on_a_fresh_base(method, tmp_path):
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    before = _logits(_base(), ids)
    prepared = PREPARE[method](_base())
    trainable, optimizer = _adamw_steps(prepared, ids)

    moments = sum(v.numel() for state in optimizer.state.values() for k, v in state.items() if k != "step")
    n_trainable = sum(p.numel() for p in trainable.values())
    assert moments == 2 * n_trainable
    assert len(optimizer.state) == len(trainable)  # nothing frozen reaches AdamW
    trained = _logits(prepared, ids)
    assert not torch.allclose(trained, before)

    out = prepared.save_pretrained(tmp_path / method)
    loaded = LOAD[method](_base(), out)
    assert type(loaded) is type(prepared)
    torch.testing.assert_close(_logits(loaded, ids), trained, rtol=1e-5, atol=1e-5)
    detected = load_adapter(_base(), out)  # the generic loader recognises what each method saved
    torch.testing.assert_close(_logits(detected, ids), trained, rtol=1e-5, atol=1e-5)


def test_esft_trains_only_the_selected_rows_and_keeps_its_config(tmp_path):
    prepared = get_esft_model(_base(), OFFICIAL_FORMAT)
    assert prepared.config.experts == {0: [1, 3], 1: [0]}
    rows = {name: p.shape[0] for name, p in prepared.trainable_parameters().items()}
    assert rows == {"model.layers.0.mlp.experts.gate_up_proj": 2, "model.layers.0.mlp.experts.down_proj": 2,
                    "model.layers.1.mlp.experts.gate_up_proj": 1, "model.layers.1.mlp.experts.down_proj": 1}
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    _adamw_steps(prepared, ids)
    trained = _logits(prepared, ids)
    folded = prepared.fold()  # the plain model, trained rows written into the fused tensors
    assert not any(".trainable." in name for name, _ in folded.named_parameters())
    torch.testing.assert_close(_logits(folded, ids), trained, rtol=1e-5, atol=1e-5)


def test_esft_config_from_a_path_and_nothing_else(tmp_path):
    import json

    from esft.errors import ConfigError

    path = tmp_path / "experts.json"
    path.write_text(json.dumps(OFFICIAL_FORMAT))
    assert get_esft_model(_base(), path).config.experts == {0: [1, 3], 1: [0]}
    with pytest.raises(ConfigError, match="expert_config"):
        get_esft_model(_base(), 42)
