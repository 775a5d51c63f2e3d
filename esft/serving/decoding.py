"""Logits to tokens and tokens to text: per-request logit processing and sampling, incremental
detokenisation, stop strings.

A request's logits go through, in order: its ``logit_bias`` (a bias of -100 bans the token), its presence
and frequency penalties over the tokens it generated so far, and its grammar's mask (``response_format``).
Log-probabilities are reported from these processed logits (before temperature and top-p), so the token a
greedy request picks is always its top log-probability. Then greedy argmax, or temperature + top-p sampling
with the request's own generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from esft.serving.errors import ServingError
from esft.serving.requests import BAN_BIAS, MIN_TEMPERATURE, SamplingParams, TokenLogprob


@dataclass
class TokenChoice:
    """The token picked for one row and, when asked, its log-probability and the top alternatives."""

    token: int
    logprob: TokenLogprob | None = None


@dataclass
class Sampler:
    """Picks one request's next token; holds its generator, its grammar and the counts the penalties need."""

    params: SamplingParams
    device: torch.device
    grammar: object | None = None  # esft.serving.grammar.JsonConstraint
    generator: torch.Generator | None = field(default=None, init=False)
    counts: dict[int, int] = field(default_factory=dict, init=False)  # generated token -> times

    def __post_init__(self) -> None:
        self.greedy = self.params.temperature < MIN_TEMPERATURE  # tiny temperatures overflow the softmax
        if not self.greedy:
            self.generator = torch.Generator(device=self.device)
            if self.params.seed is not None:
                self.generator.manual_seed(self.params.seed)
            else:
                self.generator.seed()
        p = self.params
        self.plain = self.greedy and not (
            p.logit_bias or p.presence_penalty or p.frequency_penalty or p.logprobs is not None or self.grammar
        )
        ids = [token for token, _ in p.logit_bias]
        biases = [float("-inf") if bias <= BAN_BIAS else bias for _, bias in p.logit_bias]
        self.bias_ids = torch.tensor(ids, dtype=torch.long, device=self.device)  # [n_biased]
        self.bias_values = torch.tensor(biases, dtype=torch.float32, device=self.device)  # -inf: banned

    def observe(self, token: int) -> None:
        """Record a generated token (penalties count it; the grammar consumes it)."""
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.grammar is not None:
            self.grammar.consume(token)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [V]`` after bias, penalties and grammar mask (a float32 copy)."""
        out = logits.float().clone()
        p = self.params
        if p.logit_bias:
            out.index_add_(0, self.bias_ids.to(out.device), self.bias_values.to(out.device))
        if self.counts and (p.presence_penalty or p.frequency_penalty):
            ids = torch.tensor(list(self.counts), device=out.device)
            times = torch.tensor(list(self.counts.values()), device=out.device, dtype=out.dtype)
            out[ids] -= p.presence_penalty + p.frequency_penalty * times
        if self.grammar is not None:
            self.grammar.mask(out)
        return out

    def choose(self, logits: torch.Tensor) -> TokenChoice:
        """The next token from this row's ``logits [V]``."""
        processed = self.process(logits)
        if not torch.isfinite(processed.max()):
            raise ServingError("No token is left to generate: `logit_bias` or the grammar forbids every one.")
        token = int(processed.argmax()) if self.greedy else self._sample(processed)
        if self.params.logprobs is None:
            return TokenChoice(token)
        logprobs = torch.log_softmax(processed, dim=-1)
        k = self.params.logprobs
        top = torch.topk(logprobs, k) if k else None
        alternatives = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        return TokenChoice(token, TokenLogprob(token, float(logprobs[token]), alternatives))

    def _sample(self, logits: torch.Tensor) -> int:
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.params.top_p  # keeps at least the first
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def next_tokens(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[TokenChoice | Exception]:
    """Next token of every batch row from ``logits [B, V]``: one argmax for the plain greedy rows, the
    processing pass for the others. A row whose sampling fails gets its exception, not the batch."""
    argmax = logits.argmax(dim=-1).tolist()
    chosen: list[TokenChoice | Exception] = []
    for row, sampler in enumerate(samplers):
        if sampler.plain:
            chosen.append(TokenChoice(argmax[row]))
            continue
        try:
            chosen.append(sampler.choose(logits[row]))
        except Exception as exc:  # noqa: BLE001 - e.g. every token banned: only this request fails
            chosen.append(exc)
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
