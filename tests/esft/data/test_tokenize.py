"""Tests of esft.data.tokenize on a real byte-level BPE tokenizer trained here (no download)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from esft.constants import IGNORE_INDEX
from esft.data.formats import parse_example
from esft.data.tokenize import (
    DataReport,
    TokenizedExample,
    render_chat,
    response_mask,
    tokenize_example,
    tokenize_examples,
)
from esft.errors import ConfigError, DataFormatError

SPECIAL = ["<|endoftext|>", "<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you? I am fine, thank you. What is two plus two? Four.",
]
MESSAGES = [
    {"role": "system", "content": "You are a fox."},
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I am fine, thank you."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
]


def make_tokenizer(chat_template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE whose post-processor adds BOS, like Llama's (so double BOS would show)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[3:],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def plain_tok() -> PreTrainedTokenizerFast:
    return make_tokenizer(chat_template=None)


def trained_runs(tokenizer, tokenized: TokenizedExample) -> list[str]:
    """Decode each contiguous run of trained tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, trained in zip(tokenized.input_ids, response_mask(tokenized), strict=True):
        if trained and not previous:
            runs.append([])
        if trained:
            runs[-1].append(token)
        previous = trained
    return [tokenizer.decode(run) for run in runs]


def chat(messages=MESSAGES, line: int = 1):
    return parse_example({"messages": messages}, line=line)


def test_multi_turn_chat_trains_only_on_assistant_turns(tok):
    result = tokenize_example(chat(), tok, seq_len=512, overflow="truncate")
    assert trained_runs(tok, result) == ["I am fine, thank you.<|end|>\n", "Four.<|end|>\n"]
    # The ids are exactly the template's, with one BOS: the tokenizer's own BOS is not added again.
    rendered = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert result.input_ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert result.input_ids.count(tok.bos_token_id) == 1 and result.input_ids[0] == tok.bos_token_id
    assert len(result.labels) == len(result.input_ids) and not result.truncated and result.line == 1
    for token, label in zip(result.input_ids, result.labels, strict=True):
        assert label in (IGNORE_INDEX, token)


def test_weight_zero_turn_is_not_trained(tok):
    messages = [dict(m) for m in MESSAGES]
    messages[2]["weight"] = 0
    result = tokenize_example(chat(messages), tok, seq_len=512, overflow="truncate")
    assert trained_runs(tok, result) == ["Four.<|end|>\n"]
    assert "weight" not in render_chat(tok, chat(messages).messages, add_generation_prompt=False)


def test_render_chat_uses_the_template(tok):
    text = render_chat(tok, MESSAGES[:2], add_generation_prompt=True)
    assert text == "<s><|system|>\nYou are a fox.<|end|>\n<|user|>\nHello, how are you?<|end|>\n<|assistant|>\n"


def test_fallback_format_without_template(plain_tok):
    text = render_chat(plain_tok, MESSAGES[1:3], add_generation_prompt=False)
    assert text == "user: Hello, how are you?\nassistant: I am fine, thank you.<|endoftext|>\n"
    assert render_chat(plain_tok, MESSAGES[1:2], add_generation_prompt=True).endswith("\nassistant:")
    result = tokenize_example(chat(), plain_tok, seq_len=512, overflow="truncate")
    # The reply starts after "assistant:", so its leading space is trained (and never split from the word).
    expected = [" I am fine, thank you.<|endoftext|>\n", " Four.<|endoftext|>\n"]
    assert trained_runs(plain_tok, result) == expected
    assert result.input_ids.count(plain_tok.bos_token_id) == 1 and result.input_ids[0] == plain_tok.bos_token_id


def test_completion_trains_on_completion_and_eos_only(tok):
    example = parse_example({"prompt": "What is two plus two?", "completion": " Four."}, line=4)
    result = tokenize_example(example, tok, seq_len=512, overflow="truncate")
    assert trained_runs(tok, result) == [" Four.<|endoftext|>"]
    assert result.input_ids[0] == tok.bos_token_id and result.input_ids[-1] == tok.eos_token_id
    assert tok.decode(result.input_ids) == "<s>What is two plus two? Four.<|endoftext|>"
    n_prompt = len(tok("What is two plus two?")["input_ids"])
    assert result.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert result.labels[n_prompt:] == result.input_ids[n_prompt:]


def test_text_trains_on_every_token(tok):
    result = tokenize_example(parse_example({"text": "The lazy dog."}, 2), tok, seq_len=512, overflow="reject")
    assert result.labels == result.input_ids
    assert tok.decode(result.input_ids) == "<s>The lazy dog.<|endoftext|>"


def test_truncate_keeps_the_start_and_cuts_the_end(tok):
    full = tokenize_example(chat(), tok, seq_len=10_000, overflow="truncate")
    seq_len = len(full.input_ids) - 4
    cut = tokenize_example(chat(), tok, seq_len=seq_len, overflow="truncate")
    assert cut.truncated
    assert cut.input_ids == full.input_ids[:seq_len]
    assert cut.labels == full.labels[:seq_len]
    assert tok.decode(cut.input_ids).startswith("<s><|system|>\nYou are a fox.")


def test_reject_drops_overlong_examples(tok):
    full = tokenize_example(chat(), tok, seq_len=10_000, overflow="reject")
    assert tokenize_example(chat(), tok, seq_len=len(full.input_ids), overflow="reject") == full
    assert tokenize_example(chat(), tok, seq_len=len(full.input_ids) - 1, overflow="reject") is None


def test_truncation_that_leaves_no_loss_token_rejects(tok):
    full = tokenize_example(chat(), tok, seq_len=10_000, overflow="truncate")
    first_trained = response_mask(full).index(True)
    assert tokenize_example(chat(), tok, seq_len=first_trained, overflow="truncate") is None
    kept = tokenize_example(chat(), tok, seq_len=first_trained + 1, overflow="truncate")
    assert sum(response_mask(kept)) == 1


def test_tokenize_examples_reports_counts(tok):
    examples = [
        chat(line=1),
        parse_example({"text": "A zebra quietly vexed jumpy wizards."}, 2),  # unseen words: many tokens
        parse_example({"prompt": "Hello, how are you? I am fine, thank you.", "completion": " Four."}, 3),
        parse_example({"text": "Hi"}, 4),
    ]
    seq_len = 12
    kept, report = tokenize_examples(examples, tok, seq_len=seq_len, overflow="truncate")
    # The chat's first 12 tokens hold no assistant token and the completion's prompt alone is over 12.
    assert [k.line for k in kept] == [2, 4]
    assert isinstance(report, DataReport)
    assert report.to_dict() == {
        "n_examples": 2,
        "n_truncated": sum(k.truncated for k in kept),
        "n_rejected": 2,
        "n_tokens": sum(len(k.input_ids) for k in kept),
        "n_loss_tokens": sum(sum(response_mask(k)) for k in kept),
    }
    assert (report.n_truncated, report.n_tokens, report.n_loss_tokens) == (1, 16, 16)
    assert [k.truncated for k in kept] == [True, False]


def test_prefix_unstable_template_is_an_error(tok):
    unstable = make_tokenizer(
        # Renders the last message differently, as templates that strip earlier reasoning do.
        "{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]"
        "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    with pytest.raises(DataFormatError) as info:
        tokenize_example(chat(line=9), unstable, seq_len=512, overflow="truncate")
    assert info.value.code == "chat_template_error" and info.value.line == 9
    assert "prefix-stable at message 3" in str(info.value)


def test_template_errors_carry_the_line(tok):
    strict = make_tokenizer("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(DataFormatError, match="roles must alternate") as info:
        tokenize_example(chat(line=5), strict, seq_len=512, overflow="truncate")
    assert info.value.line == 5
    assistant_first = chat([{"role": "assistant", "content": "Four."}], line=6)
    with pytest.raises(DataFormatError, match="start with a system or user message") as info:
        tokenize_example(assistant_first, tok, seq_len=512, overflow="truncate")
    assert info.value.line == 6


def test_policy_arguments_are_checked(tok):
    with pytest.raises(ConfigError, match="overflow"):
        tokenize_example(chat(), tok, seq_len=8, overflow="drop")
    with pytest.raises(ConfigError, match="seq_len"):
        tokenize_example(chat(), tok, seq_len=0, overflow="truncate")
