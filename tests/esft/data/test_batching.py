"""Tests of esft.data.batching: padding, deterministic length-grouped batches and the validation split."""

from __future__ import annotations

import random

import pytest
import torch

from esft.constants import IGNORE_INDEX
from esft.data.batching import GROUP_WINDOW_BATCHES, batch_indices, collate, split_validation
from esft.data.tokenize import TokenizedExample
from esft.errors import ConfigError

PAD = 0


def test_collate_right_pads_and_ignores_padding():
    batch = [
        TokenizedExample(input_ids=[5, 6, 7], labels=[IGNORE_INDEX, 6, 7], truncated=False, line=1),
        TokenizedExample(input_ids=[8], labels=[8], truncated=False, line=2),
    ]
    out = collate(batch, pad_token_id=PAD)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (2, 3) for t in out.values())
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_collate_pads_with_the_given_id_even_if_it_is_a_real_token():
    batch = [TokenizedExample([3, 3], [3, 3], False, 1), TokenizedExample([4], [4], False, 2)]
    out = collate(batch, pad_token_id=3)
    # The pad id doubles as a real token here: only the mask and labels may tell padding apart.
    assert out["input_ids"].tolist() == [[3, 3], [4, 3]]
    assert out["labels"].tolist() == [[3, 3], [4, IGNORE_INDEX]]


def test_collate_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_token_id=PAD)


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 500) for _ in range(n)]


def test_batches_cover_every_index_once_and_keep_the_partial_batch():
    lengths = _lengths(1003)
    batches = batch_indices(lengths, 10, seed=1, epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(1003))
    assert sorted(len(batch) for batch in batches) == [3] + [10] * 100


def test_batches_are_deterministic_per_seed_and_epoch():
    lengths = _lengths(300)
    first = batch_indices(lengths, 8, seed=3, epoch=2)
    assert batch_indices(lengths, 8, seed=3, epoch=2) == first
    assert batch_indices(lengths, 8, seed=3, epoch=3) != first
    assert batch_indices(lengths, 8, seed=4, epoch=2) != first


def test_batches_do_not_touch_global_rngs():
    random.seed(123)
    torch.manual_seed(123)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    batch_indices(_lengths(100), 4, seed=0, epoch=0)
    assert random.getstate() == python_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def _padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)


def test_grouping_by_length_cuts_padding():
    lengths = _lengths(2000)
    grouped = batch_indices(lengths, 8, seed=0, epoch=0)
    ungrouped = batch_indices(lengths, 8, seed=0, epoch=0, group_by_length=False)
    assert _padding(grouped, lengths) < _padding(ungrouped, lengths) / 5
    # Grouping is local to windows of batches, so the batch order still mixes long and short batches.
    longest = [max(lengths[i] for i in batch) for batch in grouped]
    assert longest != sorted(longest, reverse=True)
    assert len(grouped) > GROUP_WINDOW_BATCHES


def test_no_shuffle_keeps_file_order():
    lengths = [5, 1, 9, 3, 7]
    assert batch_indices(lengths, 2, seed=0, epoch=0, shuffle=False, group_by_length=False) == [
        [0, 1],
        [2, 3],
        [4],
    ]
    assert batch_indices(lengths, 2, seed=0, epoch=9, shuffle=False) == [[2, 4], [0, 3], [1]]


def test_empty_dataset_has_no_batches():
    assert batch_indices([], 4, seed=0, epoch=0) == []


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_batch_size_must_be_positive(batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        batch_indices([1, 2], batch_size, seed=0, epoch=0)


def test_split_validation_is_deterministic_and_disjoint():
    train, val = split_validation(100, 0.1, seed=7)
    assert (train, val) == split_validation(100, 0.1, seed=7)
    assert len(val) == 10 and sorted(train + val) == list(range(100))
    assert train == sorted(train) and val == sorted(val)
    assert split_validation(100, 0.1, seed=8)[1] != val


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(2, 0.01, 1), (10, 0.01, 1), (3, 0.9, 2), (10, 0.0, 0), (1, 0.5, 0), (0, 0.5, 0)],
)
def test_split_validation_sizes(n, fraction, n_val):
    train, val = split_validation(n, fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_validation_rejects_bad_fractions(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        split_validation(10, fraction, seed=0)
