"""The JSONL training-data formats: parsing lines into ``Example`` (whole-file reports: ``validation.py``).

This module is torch-free and transformers-free on purpose: the service validates uploads with it.

Three shapes are accepted, one JSON object per line (blank lines are skipped):

* chat (OpenAI): ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``;
  messages may also carry ``name`` (str) and ``weight`` (0 or 1; ``0`` means "do not train on this
  assistant message", as in the OpenAI API). Other top-level keys (``id``, ``metadata``...) are ignored.
* completion: ``{"prompt": str, "completion": str}`` (loss on the completion only).
* text: ``{"text": str}`` (loss on every token).

Errors use the OpenAI cookbook codes (``data_type``, ``missing_messages_list``, ``message_missing_key``,
``message_unrecognized_key``, ``unrecognized_role``, ``missing_content``,
``example_missing_assistant_message``) plus ``invalid_json``, ``invalid_utf8``, ``unknown_format``,
``invalid_weight``, ``empty_file``, ``too_few_examples`` and ``too_many_tokens``.

>>> parse_example({"text": "hello"}, line=1).kind
'text'
"""

from __future__ import annotations

import json
import os
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from esft.errors import DataFormatError

ROLES = ("system", "user", "assistant")
_MESSAGE_KEYS = ("role", "content")
_OPTIONAL_MESSAGE_KEYS = ("name", "weight")

ExampleKind = Literal["chat", "completion", "text"]

# Values quoted in error messages are cut short: a hostile line must not become a huge report.
_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring = _EXCERPT.maxother = 60
_EXCERPT.maxlist = _EXCERPT.maxdict = 8
_EXCERPT.maxlevel = 2


def _show(value: Any) -> str:
    """A short ``repr`` of a value from the data, for error messages."""
    return _EXCERPT.repr(value)


@dataclass(frozen=True)
class Example:
    """One validated training example.

    Attributes:
        kind: ``"chat"``, ``"completion"`` or ``"text"``; only that kind's fields are set.
        messages: chat messages (``role``, ``content`` and optionally ``name``, ``weight``).
        prompt: completion-format prompt (may be empty).
        completion: completion-format target.
        text: text-format document.
        line: 1-based line of the example in its file.
    """

    kind: ExampleKind
    messages: tuple[dict[str, Any], ...] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None
    line: int = 0


def _has_content(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _parse_message(message: Any, index: int, line: int) -> dict[str, Any]:
    """Validate one chat message; ``index`` is 1-based in messages, as users count them."""
    where = f"message {index}"
    if not isinstance(message, dict):
        raise DataFormatError(
            f"{where} is a {type(message).__name__}; a message must be an object with 'role' and 'content'",
            line=line,
            code="data_type",
        )
    missing = [key for key in _MESSAGE_KEYS if key not in message]
    if missing:
        raise DataFormatError(f"{where} is missing key(s) {missing}", line=line, code="message_missing_key")
    unknown = sorted(set(message) - set(_MESSAGE_KEYS) - set(_OPTIONAL_MESSAGE_KEYS))
    if unknown:
        allowed = ", ".join(_MESSAGE_KEYS + _OPTIONAL_MESSAGE_KEYS)
        raise DataFormatError(
            f"{where} has unrecognized key(s) {_show(unknown)}; allowed keys are {allowed}",
            line=line,
            code="message_unrecognized_key",
        )
    role = message["role"]
    if role not in ROLES:
        raise DataFormatError(
            f"{where} has role {_show(role)}; expected one of {', '.join(ROLES)}",
            line=line,
            code="unrecognized_role",
        )
    if not _has_content(message["content"]):
        raise DataFormatError(
            f"{where} ({role}) has empty or non-string content {_show(message['content'])}; content must be text",
            line=line,
            code="missing_content",
        )
    if "name" in message and not isinstance(message["name"], str):
        raise DataFormatError(f"{where} has a non-string 'name'", line=line, code="data_type")
    if "weight" in message and (isinstance(message["weight"], bool) or message["weight"] not in (0, 1)):
        raise DataFormatError(
            f"{where} has weight {_show(message['weight'])}; weight must be 0 or 1",
            line=line,
            code="invalid_weight",
        )
    return dict(message)


def _parse_chat(obj: dict[str, Any], line: int) -> Example:
    raw = obj["messages"]
    if not isinstance(raw, list) or not raw:
        raise DataFormatError(
            "'messages' must be a non-empty list of {role, content} objects",
            line=line,
            code="missing_messages_list",
        )
    messages = tuple(_parse_message(message, i, line) for i, message in enumerate(raw, start=1))
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        raise DataFormatError(
            "no assistant message; a chat example needs at least one to train on",
            line=line,
            code="example_missing_assistant_message",
        )
    if all(m.get("weight", 1) == 0 for m in assistants):
        raise DataFormatError(
            "every assistant message has weight 0, so there is nothing to train on",
            line=line,
            code="example_missing_assistant_message",
        )
    return Example(kind="chat", messages=messages, line=line)


def _parse_completion(obj: dict[str, Any], line: int) -> Example:
    if "prompt" not in obj or "completion" not in obj:
        present, absent = ("prompt", "completion") if "prompt" in obj else ("completion", "prompt")
        raise DataFormatError(f"has {present!r} but no {absent!r}", line=line, code="unknown_format")
    if not isinstance(obj["prompt"], str):
        raise DataFormatError("'prompt' must be a string", line=line, code="missing_content")
    if not _has_content(obj["completion"]):
        raise DataFormatError("'completion' must be a non-empty string", line=line, code="missing_content")
    return Example(kind="completion", prompt=obj["prompt"], completion=obj["completion"], line=line)


def parse_example(obj: Any, line: int) -> Example:
    """Validate one decoded JSON value and turn it into an ``Example``.

    Args:
        obj: the value ``json.loads`` returned for the line.
        line: 1-based line number, copied into the example and into any error.

    Returns:
        The example; a chat example keeps ``messages`` as a tuple of copied dicts.

    Raises:
        DataFormatError: with ``line`` and a cookbook ``code`` saying what is wrong and where.
    """
    if not isinstance(obj, dict):
        raise DataFormatError(
            f"expected a JSON object, got {type(obj).__name__}", line=line, code="data_type"
        )
    if "messages" in obj:
        return _parse_chat(obj, line)
    if "prompt" in obj or "completion" in obj:
        return _parse_completion(obj, line)
    if "text" in obj:
        if not _has_content(obj["text"]):
            raise DataFormatError("'text' must be a non-empty string", line=line, code="missing_content")
        return Example(kind="text", text=obj["text"], line=line)
    raise DataFormatError(
        f"unknown format with keys {_show(sorted(obj))}; expected 'messages', 'prompt' and 'completion', or 'text'",
        line=line,
        code="unknown_format",
    )


@dataclass(frozen=True)
class LineLimits:
    """The largest JSONL line this reader accepts: bytes, and nesting depth of its JSON value.

    The defaults are generous; a service passes its deployment's limits so one hostile line cannot
    exhaust memory or the parser's recursion.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_depth: int = 64


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _parse_line(raw: bytes, line: int, limits: LineLimits = LineLimits()) -> Example | None:
    """Decode and parse one raw line; None for a blank line."""
    if len(raw) - raw.endswith(b"\n") > limits.max_bytes:
        message = f"the line is longer than {limits.max_bytes} bytes; split or shorten the example"
        raise DataFormatError(message, line=line, code="line_too_long")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"not valid UTF-8 (bad byte at offset {exc.start}); save the file as UTF-8"
        raise DataFormatError(message, line=line, code="invalid_utf8") from None
    if line == 1:
        decoded = decoded.removeprefix("\ufeff")  # editors on Windows write a byte-order mark
    if not decoded.strip():
        return None
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON ({exc.msg} at column {exc.colno}); each line must hold one JSON object"
        raise DataFormatError(message, line=line, code="invalid_json") from None
    except ValueError:  # an integer longer than Python's int_max_str_digits (4300 digits)
        message = "invalid JSON (a number with too many digits); each line must hold one JSON object"
        raise DataFormatError(message, line=line, code="invalid_json") from None
    except RecursionError:
        obj = None  # deeper than the parser's own limit: reported as too deep below
    if obj is None or _depth(obj) > limits.max_depth:
        message = f"the JSON value is nested deeper than {limits.max_depth} levels"
        raise DataFormatError(message, line=line, code="too_deeply_nested")
    return parse_example(obj, line)


def _raw_lines(handle, max_bytes: int) -> Iterator[bytes]:
    """Lines of a binary file; a line longer than ``max_bytes`` comes back as its first ``max_bytes + 1`` bytes
    (enough to reject it) while the rest of it is skipped, so no line is ever held whole in memory."""
    while raw := handle.readline(max_bytes + 1):
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        yield raw


def iter_lines(
    path: str | os.PathLike, limits: LineLimits = LineLimits()
) -> Iterator[tuple[int, Example | DataFormatError | None]]:
    """Yield ``(line, Example | error | None)`` for every physical line; ``None`` marks a blank line.

    Errors are yielded, not raised, so that validation can keep going after a bad line.
    """
    with open(path, "rb") as handle:  # bytes: a bad UTF-8 line must fail alone, with its line number
        for line, raw in enumerate(_raw_lines(handle, limits.max_bytes), start=1):
            try:
                item: Example | DataFormatError | None = _parse_line(raw, line, limits)
            except DataFormatError as exc:
                item = exc
            yield line, item


def iter_examples(path: str | os.PathLike) -> Iterator[Example]:
    """Stream the examples of a JSONL file, one line at a time.

    Args:
        path: the JSONL file.

    Yields:
        Each example in file order; blank lines are skipped.

    Raises:
        DataFormatError: on the first bad line, with its line number (``invalid_utf8``, ``invalid_json``
            or a format code).
    """
    for _, item in iter_lines(path):
        if isinstance(item, DataFormatError):
            raise item
        if item is not None:
            yield item


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read every example of a JSONL file into a list.

    Args:
        path: the JSONL file.

    Returns:
        The examples in file order.

    Raises:
        DataFormatError: on the first bad line, or with code ``empty_file`` if there is no example.
    """
    examples = list(iter_examples(path))
    if not examples:
        raise DataFormatError(f"{os.fspath(path)} has no examples (it is empty or blank)", code="empty_file")
    return examples


def example_text(example: Example) -> str:
    """A simple rendering of an example, used to estimate its token count.

    Chat contents are joined with newlines, without the chat template's role markers, so counts made on it
    are an estimate that falls a few tokens per message short of the templated length.
    """
    if example.kind == "chat":
        return "\n".join(message["content"] for message in example.messages or ())
    if example.kind == "completion":
        return (example.prompt or "") + (example.completion or "")
    return example.text or ""
