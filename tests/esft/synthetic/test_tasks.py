"""Synthetic tasks: deterministic, correct answers, disjoint fact tables, and the character tokenizer."""

from __future__ import annotations

from esft.data.formats import parse_example
from esft.data.tokenize import tokenize_example
from esft.models.tokenizer import special_token_ids
from esft.synthetic.chartok import build_char_tokenizer
from esft.synthetic.tasks import (
    GENERAL_TASKS,
    KNOWN_FACTS,
    NEW_FACTS,
    TASKS,
    pretraining_mixture,
    sample_rows,
    task_splits,
)


def _pairs(rows):
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]


def test_rows_are_deterministic_and_splits_differ():
    assert sample_rows(TASKS["add3"], 5, seed=1) == sample_rows(TASKS["add3"], 5, seed=1)
    splits = task_splits("add3", 50, 50, 50)
    assert _pairs(splits.train) != _pairs(splits.test)


def test_answers_are_correct():
    for prompt, answer in _pairs(sample_rows(TASKS["add3"], 20, seed=0)):
        a, b = [int(t) for t in prompt.replace("?", " ").split() if t.isdigit()]
        assert int(answer) == a + b and 100 <= a <= 999
    for prompt, answer in _pairs(sample_rows(TASKS["keyword"], 20, seed=0)):
        word = next(t for t in prompt.split() if t not in ("grossschreiben", "in", "gross:"))
        assert answer == word.upper()
    for _, answer in _pairs(sample_rows(TASKS["equation"], 5, seed=0)):
        left, total = answer.split("=")
        assert sum(int(x) for x in left.split("+")) == int(total)


def test_fact_tables_are_disjoint_and_only_known_facts_are_pretrained():
    assert not set(KNOWN_FACTS) & set(NEW_FACTS) and not set(KNOWN_FACTS.values()) & set(NEW_FACTS.values())
    prompts = " ".join(p for p, _ in _pairs(pretraining_mixture(3000, seed=0)))
    assert not any(country in prompts for country in NEW_FACTS)
    assert "gross" not in prompts and "equation" not in prompts
    assert set(GENERAL_TASKS) == {"add", "reverse", "upper", "sort", "count", "capital"}


def test_char_tokenizer_round_trips_and_matches_toy_special_ids():
    tokenizer = build_char_tokenizer()
    ids = special_token_ids()
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == tuple(ids.values())[:3]
    text = "what is 123 plus 9?"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    row = sample_rows(TASKS["add"], 1, seed=0)[0]
    tokenized = tokenize_example(parse_example(row, 1), tokenizer, seq_len=128, overflow="truncate")
    answer = [t for t, y in zip(tokenized.input_ids, tokenized.labels, strict=True) if y != -100]
    assert tokenizer.decode(answer).startswith(row["messages"][1]["content"] + "<|end|>")
