"""Turning examples into token ids and labels: chat rendering, the loss mask and the overflow policy.

Loss is taken only where the model should learn to write: assistant messages (every turn, including the
end-of-turn marker the template writes after the content) for chat, the completion for prompt/completion,
and everything for text. Other positions get ``IGNORE_INDEX`` labels.

Chat masks come from the template itself: the rendering of ``messages[:i]`` with a generation prompt and of
``messages[:i+1]`` without one bracket the characters of assistant message ``i``, and a fast tokenizer's
offset mapping turns those characters into tokens. This works with any prefix-stable template, without
``{% generation %}`` markers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from esft.constants import IGNORE_INDEX
from esft.errors import ConfigError, DataFormatError, ESFTError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from esft.data.formats import Example

Overflow = Literal["truncate", "reject"]


@dataclass
class TokenizedExample:
    """Token ids and aligned labels of one example.

    Attributes:
        input_ids: token ids, at most ``seq_len`` of them.
        labels: same length as ``input_ids``; the token id where the loss is taken, else ``IGNORE_INDEX``.
            Not shifted: ``esft.training.loss.answer_loss`` pairs position t's logits with label t+1.
        truncated: True if tokens were cut from the end to fit ``seq_len``.
        line: 1-based line of the example in its file.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    line: int


@dataclass
class DataReport:
    """Counts from ``tokenize_examples``.

    Attributes:
        n_examples: examples kept (returned).
        n_truncated: kept examples that were cut to ``seq_len``.
        n_rejected: examples dropped: too long with ``overflow="reject"``, or left with no loss token.
        n_tokens: tokens in the kept examples.
        n_loss_tokens: tokens of the kept examples whose label is not ``IGNORE_INDEX``.
    """

    n_examples: int = 0
    n_truncated: int = 0
    n_rejected: int = 0
    n_tokens: int = 0
    n_loss_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready dict of the counts."""
        return asdict(self)


def _template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # `weight` is a training instruction, not conversation content: templates must never see it.
    return [{key: value for key, value in message.items() if key != "weight"} for message in messages]


def _fallback_render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], generation: bool
) -> str:
    """The format used when the tokenizer has no chat template.

    Each message is one ``"{role}: {content}\\n"`` line; an assistant message ends with the EOS token text
    before its newline (``"assistant: {content}{eos}\\n"``) so the model learns to stop. The generation
    prompt is ``"assistant:"`` without the space, because byte-level BPEs merge that space into the reply's
    first word. It is prefix-stable by construction.
    """
    eos = tokenizer.eos_token or ""
    parts = [f"{m['role']}: {m['content']}{eos if m['role'] == 'assistant' else ''}\n" for m in messages]
    if generation:
        parts.append("assistant:")
    return "".join(parts)


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool
) -> str:
    """Render chat messages to the text the model sees.

    Args:
        tokenizer: uses its ``chat_template`` if set, else the fallback format (``"{role}: {content}\\n"``
            lines, assistant contents followed by the EOS token text, generation prompt ``"assistant:"``).
        messages: ``{"role", "content"}`` dicts (``name`` is passed on; ``weight`` is dropped).
        add_generation_prompt: append the header that opens an assistant reply.

    Returns:
        The rendered text, special tokens included as text (tokenize it with ``add_special_tokens=False``
        when the tokenizer has a template, since templates write their own BOS).

    Raises:
        DataFormatError: the chat template failed on these messages (code ``chat_template_error``).

    >>> render_chat(tok, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)  # doctest: +SKIP
    'user: Hi\\nassistant:'
    """
    plain = _template_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        return _fallback_render(tokenizer, plain, add_generation_prompt)
    if not plain:
        raise DataFormatError(
            "a chat template cannot render an empty conversation; the conversation must start with a system "
            "or user message",
            code="chat_template_error",
        )
    try:
        text = tokenizer.apply_chat_template(
            plain, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja errors and templates' own raise_exception() have no common base class
        raise DataFormatError(f"the chat template failed: {exc}", code="chat_template_error") from exc
    return str(text)


def _render_at(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]], generation: bool, line: int
) -> str:
    """``render_chat`` whose errors carry the example's line."""
    try:
        return render_chat(tokenizer, messages, add_generation_prompt=generation)
    except DataFormatError as exc:
        raise DataFormatError(exc.message, line=line, code=exc.code) from exc


def _assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]], line: int
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the character span of each trained assistant message."""
    full = _render_at(tokenizer, messages, False, line)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _render_at(tokenizer, messages[:i], True, line)
        through = _render_at(tokenizer, messages[: i + 1], False, line)
        reply = through[len(before) :]
        stable = through.startswith(before) and full.startswith(through)
        if not stable or message["content"].strip() not in reply:
            raise DataFormatError(
                f"the chat template is not prefix-stable at message {i + 1}: rendering the conversation "
                "up to an assistant reply does not extend the rendering of the turns before it, so the "
                "reply's tokens cannot be located; use a template that renders earlier turns the same way "
                "whatever follows them",
                line=line,
                code="chat_template_error",
            )
        spans.append((len(before), len(through)))
    return full, spans


def _tokenize_chat(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ESFTError(
            "chat loss masks need a fast tokenizer (offset mapping); load it with `use_fast=True`",
            param="tokenizer",
            code="slow_tokenizer",
        )
    text, spans = _assistant_spans(tokenizer, example.messages or (), example.line)
    # A template writes its own BOS; the fallback does not, so let the tokenizer add its usual specials.
    has_template = bool(getattr(tokenizer, "chat_template", None))
    encoding = tokenizer(text, add_special_tokens=not has_template, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (start, end) in enumerate(encoding["offset_mapping"]):
        # Overlap, not containment: a token merged across a span edge is still part of the reply.
        if any(end > span_start and start < span_end for span_start, span_end in spans):
            labels[position] = input_ids[position]
    return input_ids, labels


def _with_eos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def _tokenize_plain(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], list[int]]:
    if example.kind == "text":
        input_ids = _with_eos(tokenizer, list(tokenizer(example.text or "")["input_ids"]))
        return input_ids, list(input_ids)
    # Prompt and completion are tokenized apart so that no token straddles the boundary of the loss mask.
    prompt_ids = list(tokenizer(example.prompt or "")["input_ids"])
    completion_ids = list(tokenizer(example.completion or "", add_special_tokens=False)["input_ids"])
    completion_ids = _with_eos(tokenizer, completion_ids)
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def _check_policy(seq_len: int, overflow: str) -> None:
    problems = []
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        problems.append(f"`seq_len` must be a positive integer, got {seq_len!r}")
    if overflow not in ("truncate", "reject"):
        problems.append(f"`overflow` must be 'truncate' or 'reject', got {overflow!r}")
    if problems:
        raise ConfigError(problems)


def tokenize_example(
    example: Example, tokenizer: PreTrainedTokenizerBase, *, seq_len: int, overflow: Overflow
) -> TokenizedExample | None:
    """Tokenize one example with its loss mask, applying the overflow policy.

    Args:
        example: a parsed example.
        tokenizer: a Hugging Face tokenizer (fast, for chat examples).
        seq_len: the most tokens an example may have.
        overflow: for longer examples, ``"truncate"`` keeps the first ``seq_len`` tokens (the start of the
            prompt is never dropped) and ``"reject"`` drops the example.

    Returns:
        The tokenized example, or None if it was rejected: too long under ``"reject"``, or left without any
        loss token (e.g. truncation cut every assistant token).

    Raises:
        DataFormatError: the chat template failed or is not prefix-stable (with the example's line).
        ConfigError: ``seq_len`` or ``overflow`` is invalid.
        ESFTError: a chat example with a slow tokenizer (code ``slow_tokenizer``).
    """
    _check_policy(seq_len, overflow)
    if example.kind == "chat":
        input_ids, labels = _tokenize_chat(tokenizer, example)
    else:
        input_ids, labels = _tokenize_plain(tokenizer, example)
    truncated = len(input_ids) > seq_len
    if truncated:
        if overflow == "reject":
            return None
        input_ids, labels = input_ids[:seq_len], labels[:seq_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None  # nothing to learn from
    return TokenizedExample(input_ids=input_ids, labels=labels, truncated=truncated, line=example.line)


def tokenize_examples(
    examples: Iterable[Example], tokenizer: PreTrainedTokenizerBase, *, seq_len: int, overflow: Overflow
) -> tuple[list[TokenizedExample], DataReport]:
    """Tokenize many examples and count what happened to them.

    Args:
        examples: parsed examples, e.g. from ``esft.data.formats.read_examples``.
        tokenizer: a Hugging Face tokenizer.
        seq_len: the most tokens an example may have.
        overflow: ``"truncate"`` or ``"reject"``, see ``tokenize_example``.

    Returns:
        The kept examples in input order, and a ``DataReport``.

    Raises:
        DataFormatError, ConfigError, ESFTError: as ``tokenize_example``.
    """
    kept: list[TokenizedExample] = []
    report = DataReport()
    for example in examples:
        tokenized = tokenize_example(example, tokenizer, seq_len=seq_len, overflow=overflow)
        if tokenized is None:
            report.n_rejected += 1
            continue
        kept.append(tokenized)
        report.n_examples += 1
        report.n_truncated += tokenized.truncated
        report.n_tokens += len(tokenized.input_ids)
        report.n_loss_tokens += sum(response_mask(tokenized))
    return kept, report


def response_mask(tok: TokenizedExample) -> list[bool]:
    """Which positions are trained on (label is not ``IGNORE_INDEX``), e.g. to score only responses."""
    return [label != IGNORE_INDEX for label in tok.labels]
