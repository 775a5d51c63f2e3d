"""Constrained decoding for ``response_format`` with llguidance: a request's JSON schema becomes a token mask.

``GrammarCompiler`` wraps the model's tokenizer once (llguidance reads byte-level BPE tokenizers offline;
others, such as a character-level tokenizer, are refused with a 400-style ``ServingError``) and compiles
one ``JsonConstraint`` per request. JSON is compact (no free whitespace: a weak model could otherwise spend
every token on spaces). Once the JSON is complete the mask allows only the stop tokens, so the request ends
with ``finish_reason: "stop"``; cut by ``max_tokens`` it ends unfinished, as OpenAI's do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import torch

from esft.serving.errors import ServingError

JSON_OPTIONS = {"whitespace_flexible": False}


class GrammarUnsupportedError(ServingError):
    """The tokenizer cannot drive constrained decoding, or the schema does not compile."""

    code = "response_format_unsupported"


class JsonConstraint:
    """One request's grammar state: masks logits and consumes the tokens picked under the mask."""

    def __init__(self, matcher, vocab_size: int):
        import llguidance.torch as llg_torch

        self._llg = llg_torch
        self.matcher = matcher
        self.bitmask = llg_torch.allocate_token_bitmask(1, vocab_size)  # [1, ceil(V / 32)] int32, on CPU

    @property
    def done(self) -> bool:
        """The JSON is complete and nothing more may follow (the next token can only be a stop token)."""
        return self.matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids to -inf, in place (``logits [V]``)."""
        self._llg.fill_next_token_bitmask(self.matcher, self.bitmask)
        masked = logits.unsqueeze(0).cpu() if logits.device.type != "cpu" else logits.unsqueeze(0)
        self._llg.apply_token_bitmask_inplace(masked, self.bitmask)
        if masked.data_ptr() != logits.data_ptr():
            logits.copy_(masked[0])

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ServingError(f"the grammar rejected token {token}: {self.matcher.get_error()}", param=None)


class GrammarCompiler:
    """Compiles JSON schemas against one tokenizer; the llguidance tokenizer is built on first use.

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        vocab_size: the model's logits width (may exceed the tokenizer's length).
        stop_ids: the tokens that end a completion; the grammar allows them once the JSON is complete.
    """

    def __init__(self, tokenizer, vocab_size: int, stop_ids: Iterable[int]):
        self.tokenizer, self.vocab_size, self.stop_ids = tokenizer, vocab_size, sorted(stop_ids)
        self._lock = threading.Lock()
        self._llg_tokenizer = None
        self._error: str | None = None

    def _wrapped(self):
        with self._lock:
            if self._llg_tokenizer is None and self._error is None:
                try:
                    import llguidance.hf

                    self._llg_tokenizer = llguidance.hf.from_tokenizer(
                        self.tokenizer, n_vocab=self.vocab_size, eos_token=self.stop_ids or None
                    )
                except Exception as exc:  # noqa: BLE001 - llguidance refuses tokenizers it cannot read
                    self._error = f"{type(exc).__name__}: {exc}"
            if self._error is not None:
                raise GrammarUnsupportedError(
                    f"`response_format` needs constrained decoding, which this model's tokenizer does not support "
                    f"({self._error}).",
                    param="response_format",
                )
            return self._llg_tokenizer

    def compile(self, schema_json: str) -> JsonConstraint:
        """A fresh constraint for one request.

        Raises:
            GrammarUnsupportedError: the tokenizer cannot be used, or the schema is not one llguidance supports.
        """
        import llguidance

        tokenizer = self._wrapped()
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=JSON_OPTIONS)
        except ValueError as exc:
            raise GrammarUnsupportedError(f"Invalid JSON schema: {exc}", param="response_format") from exc
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarUnsupportedError(
                f"The JSON schema cannot be used for constrained decoding: {matcher.get_error()}",
                param="response_format.json_schema.schema",
            )
        return JsonConstraint(matcher, self.vocab_size)
