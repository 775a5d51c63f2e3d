"""Packing: which families keep packed samples apart (``PACKING_EXACT``), and the packed collate itself."""

from __future__ import annotations

import pytest
import torch

from esft.data.batching import collate_packed, padding_tokens
from esft.data.tokenize import TokenizedExample
from esft.models.families import PACKING_EXACT
from esft.models.toy import toy_model
from tests.esft.families import MATRIX, family_guard

LENGTHS = (7, 12, 4)


def _samples() -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(10, 500, (n,), generator=generator).tolist() for n in LENGTHS]
    return [TokenizedExample(ids, ids, False, i + 1) for i, ids in enumerate(rows)]


def packed_logits_match(family: str) -> bool:
    """Whether one packed row gives each sample exactly the logits it gets alone."""
    model = toy_model(family, layers=2, experts=8, top_k=2, hidden=64)
    samples = _samples()
    packed = collate_packed(samples)
    with torch.no_grad():
        row = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0] for ex in samples]
    return torch.allclose(row, torch.cat(alone), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", MATRIX)
def test_packing_is_on_exactly_where_packed_logits_equal_per_sample_ones(family):
    with family_guard(family):
        assert packed_logits_match(family) == (family in PACKING_EXACT)


def test_collate_packed_restarts_positions_and_ignores_each_first_label():
    samples = _samples()
    packed = collate_packed(samples)
    assert packed["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in packed
    starts = [0, LENGTHS[0], LENGTHS[0] + LENGTHS[1]]
    assert packed["position_ids"][0, starts].tolist() == [0, 0, 0]
    assert packed["labels"][0, starts].tolist() == [-100, -100, -100]
    assert padding_tokens(samples) == 2 * 12 - 7 - 4
