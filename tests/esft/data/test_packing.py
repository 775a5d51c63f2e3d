"""Packing: which families keep packed samples apart (``PACKING_EXACT``), and the packed collate itself."""

from __future__ import annotations

import pytest
import torch

from esft.data.batching import collate_packed, padding_tokens
from esft.data.tokenize import TokenizedExample
from esft.errors import ConfigError
from esft.models.families import PACKING_EXACT
from esft.models.packed_attention import packed_attention, segments
from esft.models.toy import toy_model
from tests.esft.families import MATRIX, family_guard

LENGTHS = (7, 12, 4)


def _samples() -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(10, 500, (n,), generator=generator).tolist() for n in LENGTHS]
    return [TokenizedExample(ids, ids, False, i + 1) for i, ids in enumerate(rows)]


def packed_logits_match(family: str) -> bool:
    """Whether a packed row gives each sample exactly the logits it gets alone (two arrangements of the samples)."""
    model = toy_model(family, layers=2, experts=8, top_k=2, hidden=64)
    samples = _samples()
    with torch.no_grad():
        alone = {ex.line: model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0] for ex in samples}
        for arrangement in (samples, samples[::-1]):
            packed = collate_packed(arrangement)
            try:
                with packed_attention(model):
                    row = model(**packed | {"labels": None}, use_cache=False).logits[0]
            except (ConfigError, TypeError, AttributeError):  # refused, or the family's own code needs a mask
                return False
            # Exact families differ by float reassociation only (<= 1.5e-6 on these toys); leaking ones by
            # 2.5e-3 to 5.
            if (row - torch.cat([alone[ex.line] for ex in arrangement])).abs().max() > 3e-6:
                return False
    return True


@pytest.mark.parametrize("family", MATRIX)
def test_packing_is_on_exactly_where_packed_logits_equal_per_sample_ones(family):
    with family_guard(family):
        assert packed_logits_match(family) == (family in PACKING_EXACT)


def test_collate_packed_makes_one_row_restarting_positions_and_ignoring_each_first_label():
    samples = _samples()
    packed = collate_packed(samples)
    assert packed["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in packed
    starts = [0, 7, 7 + 12]  # the batch's order
    assert packed["position_ids"][0, starts].tolist() == [0, 0, 0]
    assert packed["labels"][0, starts].tolist() == [-100, -100, -100]
    assert (packed["labels"] != -100).sum() == sum(n - 1 for n in LENGTHS)
    assert padding_tokens(samples) == 3 * 12 - 23  # what the padded collate would have added


def test_segments_follow_the_positions():
    assert segments(torch.tensor([0, 1, 2, 0, 0, 1])) == [(0, 3), (3, 4), (4, 6)]
    assert segments(torch.tensor([5, 6, 7])) == [(0, 3)]  # one sample that does not start at 0


def test_packed_attention_is_restored_after_the_block_even_on_error():
    model = toy_model("qwen3_moe", layers=1, experts=4, top_k=2, hidden=32)
    before = model.config._attn_implementation
    with pytest.raises(IndexError), packed_attention(model):
        assert model.config._attn_implementation == "esft_packed"
        model(input_ids=torch.tensor([[5, 6, 10**6]]))  # a token id outside the vocabulary
    assert model.config._attn_implementation == before
