"""The one-pass experts kernel: fused rows follow the fp32 masters, restore is bit-exact, bf16 numerics."""

from __future__ import annotations

import pytest
import torch

from esft import TrainingConfig
from esft.methods.esft import get_esft_model
from esft.methods.esft.one_pass import ONE_PASS_KERNEL, detach
from esft.models.toy import toy_model
from esft.training.optim import MasterWeights, build_optimizer

SELECTED = [1, 5]


def _prepared(dtype=torch.float32, kernel="one_pass"):
    model = toy_model("qwen3_moe", layers=1, experts=8, top_k=2, hidden=64).to(dtype)
    return model, get_esft_model(model, {"experts": {"0": SELECTED}}, experts_kernel=kernel)


def _step(prepared, ids):
    masters = MasterWeights(prepared.trainable_parameters())
    optimizer = build_optimizer(masters.masters, TrainingConfig(learning_rate=1e-2))
    logits = prepared(input_ids=ids, use_cache=False).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
    masters.grads_to_masters()
    optimizer.step()


def test_layer_switches_kernel_alone_and_fused_rows_follow_the_masters():
    model, prepared = _prepared()
    experts = model.model.layers[0].mlp.experts
    assert experts.config._experts_implementation == ONE_PASS_KERNEL
    assert model.config._experts_implementation != ONE_PASS_KERNEL  # only the trained layer's experts switch
    ids = torch.randint(10, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    _step(prepared, ids)
    master = prepared.trainable_parameters()["model.layers.0.mlp.experts.gate_up_proj"]
    assert not torch.equal(experts.gate_up_proj[SELECTED], master)  # stale until the next forward ...
    prepared(input_ids=ids, use_cache=False)
    assert torch.equal(experts.gate_up_proj[SELECTED], master)  # ... which refreshes the fused rows


def test_restore_puts_the_original_rows_back_bit_exact():
    model, prepared = _prepared()
    experts = model.model.layers[0].mlp.experts
    before = {n: p.detach().clone() for n, p in experts.named_parameters()}
    _step(prepared, torch.randint(10, 500, (2, 12), generator=torch.Generator().manual_seed(1)))
    prepared(input_ids=torch.ones(1, 4, dtype=torch.long))
    detach(experts, keep_trained=False)
    assert all(torch.equal(p, before[n]) for n, p in experts.named_parameters())
    assert "_esft_rows" not in experts.__dict__ and experts.config is model.config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_and_split_train_the_same_rows(dtype):
    ids = torch.randint(10, 500, (2, 12), generator=torch.Generator().manual_seed(2))
    grads = {}
    for kernel in ("one_pass", "split"):
        _, prepared = _prepared(dtype, kernel)
        logits = prepared(input_ids=ids, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
        grads[kernel] = {k: p.grad.clone() for k, p in prepared.trainable_parameters().items()}
        assert all(p.dtype == torch.float32 for p in prepared.trainable_parameters().values())  # fp32 masters
    # fp32: the same numbers up to summation order; bf16: the one-pass forward sees bf16 rows, the split an
    # fp32 twin (documented)
    tolerance = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 0.1, "atol": 2e-3}
    for key, grad in grads["one_pass"].items():
        torch.testing.assert_close(grad, grads["split"][key], **tolerance)
