"""Engine results to OpenAI objects: choices, usage, log-probabilities (token text and bytes), identity.

One ``ResponseMeta`` holds what a response and all its stream chunks share (id, created, model, system
fingerprint, prompt size); ``TokenTexts`` turns token ids into the ``token``/``bytes`` pairs of logprobs.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from esft.serving import Completion, TokenLogprob


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


class TokenTexts:
    """``token id -> (text, UTF-8 bytes)`` for logprobs; a byte-level token may hold part of a character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self._cache:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            decoder = _byte_decoder()
            if isinstance(piece, str) and piece and all(ch in decoder for ch in piece):
                raw = bytes(decoder[ch] for ch in piece)
            else:
                raw = self.tokenizer.decode([token]).encode()
            self._cache[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self._cache[token]

    def chat_entry(self, entry: TokenLogprob) -> dict[str, Any]:
        """One ``ChatCompletionTokenLogprob``."""
        text, raw = self(entry.token)
        top = [{"token": self(t)[0], "logprob": lp, "bytes": self(t)[1]} for t, lp in entry.top]
        return {"token": text, "logprob": entry.logprob, "bytes": raw, "top_logprobs": top}

    def chat_logprobs(self, entries: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
        return None if entries is None else {"content": [self.chat_entry(e) for e in entries], "refusal": None}

    def _by_text(self, top: Sequence[tuple[int, float]]) -> dict[str, float]:
        """``text -> logprob``; tokens whose text is the same (parts of a character) keep the likeliest."""
        out: dict[str, float] = {}
        for token, logprob in top:  # most likely first
            out.setdefault(self(token)[0], logprob)
        return out

    def text_logprobs(self, entries: Sequence[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
        """A completions ``logprobs`` object; ``offset``: characters of the completion before these tokens."""
        if entries is None:
            return None
        tokens = [self(e.token)[0] for e in entries]
        offsets = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [self._by_text(e.top) for e in entries],
            "text_offset": offsets,
        }


@dataclass
class ResponseMeta:
    """Identity shared by a response and all its chunks."""

    model: str
    prompt_tokens: int
    fingerprint: str
    prefix: str = "chatcmpl"
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{self.prefix}-{uuid.uuid4().hex[:24]}"

    def head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def usage(self, completions: Sequence[Completion]) -> dict[str, int]:
        """Usage of all choices: the prompt counted once, completion tokens summed (as OpenAI counts ``n``)."""
        done = sum(c.completion_tokens for c in completions)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }


def chat_completion(meta: ResponseMeta, done: Sequence[Completion], texts: TokenTexts) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text, "refusal": None},
            "finish_reason": c.finish_reason,
            "logprobs": texts.chat_logprobs(c.logprobs),
        }
        for i, c in enumerate(done)
    ]
    return {**meta.head("chat.completion"), "choices": choices, "usage": meta.usage(done)}


def text_completion(meta: ResponseMeta, done: Sequence[Completion], texts: TokenTexts) -> dict[str, Any]:
    choices = [
        {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": texts.text_logprobs(c.logprobs)}
        for i, c in enumerate(done)
    ]
    return {**meta.head("text_completion"), "choices": choices, "usage": meta.usage(done)}
