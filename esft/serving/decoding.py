"""Logits to tokens and tokens to text: per-request sampling, incremental detokenisation, stop strings."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esft.serving.requests import SamplingParams


class Sampler:
    """Picks one request's next token: greedy at temperature 0, else temperature + top-p with its own RNG."""

    def __init__(self, params: SamplingParams, device: torch.device):
        self.params = params
        self.greedy = params.temperature == 0.0
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()

    def sample(self, logits: torch.Tensor) -> int:
        """A token id from ``logits [V]`` (only called when not greedy)."""
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.params.top_p  # keeps at least the first
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def next_tokens(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[int]:
    """Next token of every batch row from ``logits [B, V]``: one argmax for all, sampling where asked."""
    chosen = logits.argmax(dim=-1).tolist()
    for row, sampler in enumerate(samplers):
        if not sampler.greedy:
            chosen[row] = sampler.sample(logits[row])
    return chosen


class TextStream:
    """Detokenises a growing completion and cuts it at the first stop string.

    Text is released only when it is final: never the tail that could still become a stop string, never
    a half-decoded UTF-8 character.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""
        self.sent = 0

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; returns ``(new text to send, hit a stop string)``."""
        self.token_ids.append(token_id)
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if self.stop:
            cut = self._stop_index()
            if cut is not None:
                self.text = self.text[:cut]
                return self._release(len(self.text)), True
        ready = len(self.text) - self._hold
        if self.text.endswith("\ufffd"):
            ready = min(ready, len(self.text) - 1)
        return self._release(ready), False

    def _stop_index(self) -> int | None:
        start = max(0, self.sent - self._hold)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : upto], upto
        return delta

    def flush(self) -> str:
        """The text still held back, once the completion has ended."""
        return self._release(len(self.text))
