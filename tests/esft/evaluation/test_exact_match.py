"""Exact match by teacher forcing: an oracle scores 1, one wrong answer token fails its row, text after
the end-of-turn token does not count."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from esft.evaluation import exact_match, tokenize_rows
from esft.generation import stop_token_ids
from esft.synthetic.chartok import build_char_tokenizer
from esft.synthetic.tasks import TASKS, sample_rows


class Oracle(nn.Module):
    """Predicts each next token of the batch it is given, except where ``wrong`` says (row, position)."""

    def __init__(self, vocab: int, wrong: set[tuple[int, int]] = frozenset()):
        super().__init__()
        self.vocab, self.wrong = vocab, wrong
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        nxt = torch.roll(input_ids, -1, dims=1)
        for row, pos in self.wrong:
            nxt[row, pos] = (nxt[row, pos] + 1) % self.vocab
        return SimpleNamespace(logits=nn.functional.one_hot(nxt, self.vocab).float() * 10)


def _data():
    tokenizer = build_char_tokenizer()
    return tokenizer, tokenize_rows(sample_rows(TASKS["add"], 4, seed=0), tokenizer)


def test_oracle_scores_one_and_a_wrong_answer_token_fails_only_its_row():
    tokenizer, data = _data()
    kwargs = dict(pad_id=tokenizer.pad_token_id, stop_ids=stop_token_ids(tokenizer))
    assert exact_match(Oracle(len(tokenizer)), data, **kwargs).accuracy == 1.0
    first_answer = data[1].labels.index(next(y for y in data[1].labels if y != -100)) - 1
    assert exact_match(Oracle(len(tokenizer), {(1, first_answer)}), data, **kwargs).accuracy == 0.75
    after_end = len(data[2].input_ids) - 2  # predicts the "\n" the template writes after <|end|>
    assert exact_match(Oracle(len(tokenizer), {(2, after_end)}), data, **kwargs).accuracy == 1.0
