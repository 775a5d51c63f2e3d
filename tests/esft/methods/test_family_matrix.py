"""Every MoE family transformers has (that ESFT can train): split training touches only the selected experts."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from esft.config import TrainingConfig
from esft.expert_config import ExpertConfig
from esft.methods.esft import get_esft_model
from esft.methods.esft.one_pass import one_pass_reason
from esft.models.discovery import find_moe_layers
from esft.models.toy import toy_config
from esft.training.optim import MasterWeights, build_optimizer
from tests.esft.families import MATRIX, family_guard


def _model(family: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(toy_config(family, layers=2, experts=8, top_k=2, hidden=64)).eval()


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # one padded row: the split must handle masks like the original
    return ids, mask


def _loss(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )


KERNELS = ("split", "one_pass")


def _kernel_or_skip(model, kernel: str) -> str:
    """``kernel``, or a skip naming why the one-pass kernel does not serve this family (it keeps the split)."""
    if kernel == "one_pass":
        layer = find_moe_layers(model)[0]
        reason = one_pass_reason(layer.experts(model), layer.expert_params)
        if reason:
            pytest.skip(f"one-pass kernel not used: {reason}")
    return kernel


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", MATRIX)
def test_split_matches_full_model_and_gradient(family, kernel):
    with family_guard(family):
        _check_split_matches_full_model_and_gradient(family, kernel)


def _check_split_matches_full_model_and_gradient(family, kernel):
    model = _model(family)
    layers = find_moe_layers(model)
    assert layers and all(layer.num_experts == 8 for layer in layers)
    ids, mask = _batch(model.config.vocab_size)
    # Reference: gradients of the full fused tensors.
    reference = copy.deepcopy(model)
    ref_loss = _loss(reference, ids, mask)
    ref_loss.backward()
    selected = {layer.layer_index: [1, 5] for layer in layers}
    # Non-expert modules train too, so the gradients upstream of every split layer (router, attention,
    # embeddings) are compared with full backprop: the guard on transformers' expert-parallel sentinel path.
    config = ExpertConfig(selected, non_expert_modules=True)
    prepared = get_esft_model(model, config, experts_kernel=_kernel_or_skip(model, kernel))
    loss = _loss(model, ids, mask)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    for layer in layers:
        full = reference.get_submodule(layer.experts_name)
        for name in layer.expert_params:
            want = getattr(full, name).grad[[1, 5]]
            got = prepared.trainable_parameters()[f"{layer.experts_name}.{name}"].grad
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    full = dict(reference.named_parameters())
    assert prepared.dense_trainable, "non_expert_modules=True must train the routers, attention and embeddings"
    for name, param in prepared.dense_trainable.items():
        torch.testing.assert_close(param.grad, full[name].grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen_with_grad == []


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("family", MATRIX)
def test_adamw_with_weight_decay_changes_only_selected_experts(family, kernel):
    with family_guard(family):
        _check_adamw_with_weight_decay_changes_only_selected_experts(family, kernel)


def _check_adamw_with_weight_decay_changes_only_selected_experts(family, kernel):
    model = _model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers = find_moe_layers(model)
    selected = {layers[0].layer_index: [0, 3, 6]}  # one layer only: the other stays wholly frozen
    prepared = get_esft_model(model, ExpertConfig(selected), experts_kernel=_kernel_or_skip(model, kernel))
    masters = MasterWeights(prepared.trainable_parameters())
    optimizer = build_optimizer(masters.masters, TrainingConfig(learning_rate=1e-2, weight_decay=0.1))
    ids, mask = _batch(model.config.vocab_size)
    for _ in range(3):
        _loss(model, ids, mask).backward()
        masters.grads_to_masters()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    prepared.fold()
    after = dict(model.named_parameters())
    assert set(after) == set(before)  # folding restores the original parameter names
    rows = torch.tensor([0, 3, 6])
    for name, old in before.items():
        new = after[name].detach()
        if name.startswith(layers[0].experts_name + ".") and name.rsplit(".", 1)[1] in layers[0].expert_params:
            others = torch.tensor([i for i in range(8) if i not in (0, 3, 6)])
            assert torch.equal(new[others], old[others]), f"{name}: an unselected expert changed"
            if new.dim() >= 3:  # weight matrices decay, so every selected expert moves (1-D biases may not)
                for r in rows:
                    assert not torch.equal(new[r], old[r]), f"{name}: selected expert {int(r)} did not change"
        else:
            assert torch.equal(new, old), f"{name} is frozen but changed"
    n_trainable = sum(p.numel() for p in masters.masters.values())
    n_state = sum(v.numel() for s in optimizer.state.values() for k, v in s.items() if k != "step")
    assert n_state == 2 * n_trainable  # exp_avg + exp_avg_sq, for the selected rows only
