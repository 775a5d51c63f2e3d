"""The one stop-token rule: generation config EOS ids, the chat template's end-of-turn token and the tokenizer's EOS."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from esft.generation import end_of_turn_id, stop_token_ids
from esft.models.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_toy_stops_at_end_of_turn_and_eos(tokenizer):
    end, eos = tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id
    assert end_of_turn_id(tokenizer) == end
    assert stop_token_ids(tokenizer) == {end, eos}


@pytest.mark.parametrize("configured", [7, [7, 8]])
def test_generation_config_eos_ids_join_the_set(tokenizer, configured):
    ids = stop_token_ids(tokenizer, SimpleNamespace(eos_token_id=configured))
    assert {7} <= ids and ({8} <= ids) == isinstance(configured, list)
    assert {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")} <= ids


def test_end_of_turn_is_read_from_any_template(tokenizer):
    """A template with another end marker (``<|im_end|>`` here) is found without naming it."""
    other = build_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    other.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    assert end_of_turn_id(other) == other.convert_tokens_to_ids("<|im_end|>")


def test_plain_text_after_a_reply_is_no_stop_token(tokenizer):
    plain = build_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_id(plain) is None
    assert stop_token_ids(plain) == {plain.eos_token_id}


def test_no_template_falls_back_to_eos(tokenizer):
    bare = build_tokenizer()
    bare.chat_template = None
    assert stop_token_ids(bare) == {bare.eos_token_id}
