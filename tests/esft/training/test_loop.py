"""The one training loop: the step-count formula, the validation split, in-memory runs and deterministic mode."""

from __future__ import annotations

import pytest
import torch

from esft import TrainingConfig, get_esft_model, get_fft_model, train
from esft.data.tokenize import TokenizedExample
from esft.models.toy import toy_model
from esft.training.loop import held_out


@pytest.mark.parametrize(
    "n,options,expected",
    [
        (3, {"batch_size": 8}, 1),  # fewer examples than the batch size: still one step per epoch
        (3, {"batch_size": 8, "n_epochs": 4}, 4),
        (1, {"batch_size": 4, "grad_accum_steps": 4}, 1),
        (9, {"batch_size": 4}, 3),  # a partial last batch is a step
        (9, {"batch_size": 4, "grad_accum_steps": 2}, 2),
        (9, {"batch_size": 4, "max_steps": 7}, 7),
    ],
)
def test_total_steps(n, options, expected):
    assert TrainingConfig(**options).total_steps(n) == expected


def test_steps_are_counted_after_the_validation_split():
    config = TrainingConfig(batch_size=4, validation_split=0.25)
    n_train, n_val = held_out(20, config)
    assert (n_train, n_val) == (15, 5)
    assert config.total_steps(n_train) == 4  # ceil(15 / 4), not ceil(20 / 4)
    assert held_out(20, config, has_validation_data=True) == (20, 0)
    assert held_out(1, config) == (1, 0)


def _data(n: int, length: int = 10) -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(10, 200, (n, length), generator=generator).tolist()
    return [TokenizedExample(ids, [-100] * 3 + ids[3:], False, i + 1) for i, ids in enumerate(rows)]


def test_in_memory_run_holds_out_validation_and_counts_steps_after_it():
    prepared = get_esft_model(toy_model("qwen3_moe", layers=1, experts=4), {"experts": {"0": [1]}})
    config = TrainingConfig(batch_size=8, validation_split=0.25, learning_rate=1e-3)
    result = train(prepared, _data(6), config, pad_token_id=2)  # no out_dir: nothing is written
    assert (result.report["n_train"], result.report["n_validation"]) == (4, 2)
    assert result.steps == 1 and result.val_loss is not None


def test_deterministic_runs_are_bit_identical_and_restore_threads():
    config = TrainingConfig(max_steps=3, batch_size=2, learning_rate=1e-3, weight_decay=0.1, deterministic=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weights = []
        for _ in range(2):
            prepared = get_fft_model(toy_model("deepseek_v2", layers=1, experts=4))
            train(prepared, _data(6), config, pad_token_id=2)
            weights.append({k: v.clone() for k, v in prepared.model.state_dict().items()})
            assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("method", ["esft", "fft"])
def test_activation_checkpointing_trains_the_same_weights_and_is_switched_off_after(method):
    weights = []
    for checkpointing in (False, True):
        config = TrainingConfig(
            max_steps=2, batch_size=2, learning_rate=1e-3, deterministic=True, activation_checkpointing=checkpointing
        )
        model = toy_model("qwen3_moe", layers=2, experts=4)
        experts = {"experts": {"0": [1], "1": [2]}}
        prepared = get_esft_model(model, experts) if method == "esft" else get_fft_model(model)
        during: list[bool] = []
        train(
            prepared,
            _data(4),
            config,
            pad_token_id=2,
            progress=lambda _, m=model, seen=during: seen.append(m.is_activation_checkpointing),
        )
        assert during == [checkpointing] * 2 and not model.is_activation_checkpointing
        weights.append({k: v.clone() for k, v in prepared.fold().state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _ragged(n: int) -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(3)
    rows = [torch.randint(10, 200, ((6, 6, 12, 12)[i % 4],), generator=generator).tolist() for i in range(n)]
    return [TokenizedExample(ids, [-100] * 3 + ids[3:], False, i + 1) for i, ids in enumerate(rows)]


@pytest.mark.parametrize(("family", "packs"), [("qwen3_moe", True), ("jamba", False)])
def test_packing_trains_like_padding_where_it_is_on(family, packs):
    results = {}
    for packing in (False, True):
        config = TrainingConfig(max_steps=2, batch_size=8, learning_rate=1e-3, packing=packing, deterministic=True)
        prepared = get_esft_model(toy_model(family, layers=2, experts=4), {"experts": {"0": [1], "1": [2]}})
        result = train(prepared, _ragged(8), config, pad_token_id=2)  # one mixed-length batch per step
        results[packing] = (result, {k: v.clone() for k, v in prepared.fold().state_dict().items()})
    packed, padded = results[True], results[False]
    assert packed[0].report["packed"] is packs
    assert (packed[0].report["padding_tokens_saved"] > 0) is packs
    assert packed[0].trained_tokens == padded[0].trained_tokens  # the same samples, steps and tokens
    assert packed[0].final_loss == pytest.approx(padded[0].final_loss, rel=1e-5)
    for key, tensor in packed[1].items():
        torch.testing.assert_close(tensor, padded[1][key], rtol=1e-4, atol=1e-6)
