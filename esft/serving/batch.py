"""RunningBatch: the requests decoded together, their KV cache, attention mask and positions.

Requests join a running batch (continuous batching): the newcomers are prefilled together as one
left-padded cohort, then their cache is merged into the running one by left-padding the shorter of
the two along the sequence axis. Merging is exact for plain KV caches (every layer a ``DynamicLayer``);
for other caches (sliding windows, recurrent states) newcomers wait until the batch drains. Finished
requests leave at once, and columns that are padding for every remaining row are trimmed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicLayer

from esft.serving.decoding import Sampler, TextStream, TokenChoice, next_tokens
from esft.serving.requests import Completion, RequestHandle, TokenEvent, TokenLogprob


@dataclass
class Row:
    """One request being decoded."""

    handle: RequestHandle
    adapter: str | None  # adapter name (None: base model)
    table_row: int  # routing-table row in the expert slots (0: base experts)
    max_tokens: int
    sampler: Sampler
    stream: TextStream
    stop_ids: frozenset[int]  # esft.generation.stop_token_ids
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per generated token, when asked for
    unsent_logprobs: int = 0  # of them, not yet attached to a streamed event

    def accept(self, choice: TokenChoice) -> bool:
        """Record one new token, stream its text; True when this request is finished."""
        token = choice.token
        if token in self.stop_ids and not self.sampler.params.ignore_eos:
            self.finish_reason = "stop"
            return True
        self.generated.append(token)
        self.sampler.observe(token)
        if choice.logprob is not None:
            self.logprobs.append(choice.logprob)
            self.unsent_logprobs += 1
        text, stopped = self.stream.push(token)
        if text:
            self._push(token, text)
        if stopped or (self.sampler.grammar is not None and self.sampler.grammar.done):
            self.finish_reason = "stop"
        elif len(self.generated) >= self.max_tokens:
            self.finish_reason = "length"
        return self.finish_reason is not None

    def _push(self, token: int, text: str) -> None:
        fresh = self.logprobs[len(self.logprobs) - self.unsent_logprobs :] if self.unsent_logprobs else []
        self.unsent_logprobs = 0
        self.handle.push(TokenEvent(token, text, fresh))

    def complete(self) -> None:
        tail = self.stream.flush()
        if tail or self.unsent_logprobs:
            self._push(self.generated[-1], tail)
        prompt = len(self.handle.request.prompt_ids)
        logprobs = list(self.logprobs) if self.sampler.params.logprobs is not None else None
        self.handle.finish(Completion(self.stream.text, list(self.generated), self.finish_reason, prompt, logprobs))


SetRows = Callable[[torch.Tensor], None]
"""Tells the expert slots which routing-table row each batch row of the next forward uses."""


class RunningBatch:
    """Decodes a set of rows step by step with one shared KV cache.

    Args:
        model: the causal LM (with expert slots attached, if mixed batching is on).
        pad_id: token id used for left padding.
        set_rows: called with ``[B]`` table rows before every forward (mixed batching), or ``None``.
    """

    def __init__(self, model: nn.Module, pad_id: int, set_rows: SetRows | None = None):
        self.model = model
        self.pad_id = pad_id
        self.set_rows = set_rows
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # [B, L] 1 = real token, 0 = left padding
        self.next_input: torch.Tensor | None = None  # [B, 1] token fed at the next step
        self.positions: torch.Tensor | None = None  # [B, 1] its position id
        self.peak_adapters = 0  # most distinct adapters decoded together so far (a metric)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def adapters(self) -> set[str]:
        return {row.adapter for row in self.rows if row.adapter is not None}

    def can_join(self) -> bool:
        """True when newcomers can be merged into the running batch now."""
        return not self.rows or _mergeable(self.cache)

    @torch.inference_mode()
    def add(self, rows: Sequence[Row]) -> None:
        """Prefill ``rows`` as one cohort, emit their first tokens and merge them into the batch."""
        prompts = [row.handle.request.prompt_ids for row in rows]
        length = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (length - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [b, L] as `generate` numbers left-padded rows
        out = self._forward(rows, input_ids, mask, positions, cache=None)
        self._merge(out.cache, mask, positions[:, -1:])
        self.rows.extend(rows)
        self.peak_adapters = max(self.peak_adapters, len(self.adapters))
        self._advance(out.logits[:, -1], first=len(self.rows) - len(rows))

    @torch.inference_mode()
    def step(self) -> None:
        """One decode step for every row."""
        ones = torch.ones_like(self.next_input)
        self.mask = torch.cat([self.mask, ones], dim=1)
        self.positions = self.positions + 1
        out = self._forward(self.rows, self.next_input, self.mask, self.positions, cache=self.cache)
        self.cache = out.cache
        self._advance(out.logits[:, -1], first=0)

    def _forward(self, rows: Sequence[Row], input_ids, mask, positions, cache):
        if self.set_rows is not None:
            self.set_rows(torch.tensor([row.table_row for row in rows]))
        attention_mask = None if bool(mask.all()) else mask  # as `generate` does: no mask without padding
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )

    def _advance(self, logits: torch.Tensor, first: int) -> None:
        """Pick the next token of rows ``first:`` from ``logits [b, V]``, then drop finished rows."""
        rows = self.rows[first:]
        choices = next_tokens(logits, [row.sampler for row in rows])
        tokens = [self.pad_id if isinstance(c, Exception) else c.token for c in choices]  # failed rows leave below
        chosen = torch.tensor(tokens, device=self.device).unsqueeze(1)
        self.next_input = chosen if first == 0 else torch.cat([self.next_input, chosen])
        for row, choice in zip(rows, choices, strict=True):
            if (stop := row.handle.stop_error()) is not None:  # cancelled, or past its deadline
                row.handle.fail(stop)
            elif isinstance(choice, Exception):
                row.handle.fail(choice)  # its sampling failed: only this request
            else:
                try:
                    if row.accept(choice):
                        row.complete()
                except Exception as exc:  # noqa: BLE001 - e.g. its grammar broke: only this request
                    row.handle.fail(exc)
        self.drop([i for i, row in enumerate(self.rows) if row.handle.done])

    def drop(self, indices: Sequence[int]) -> list[Row]:
        """Remove rows at ``indices`` from the batch (their handles are not touched); returns them."""
        if not indices:
            return []
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        dropped = [self.rows[i] for i in sorted(gone)]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.next_input = self.positions = None
            return dropped
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.next_input, self.positions = self.mask[index], self.next_input[index], self.positions[index]
        self._trim()
        return dropped

    def _trim(self) -> None:
        """Cut leading columns that are padding in every row (only for plain KV caches)."""
        if not _mergeable(self.cache):
            return
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    def _merge(self, cache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        if not self.rows:
            self.cache, self.mask, self.positions = cache, mask, positions
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)])
        self.mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(mask, length, dim=1)])
        self.positions = torch.cat([self.positions, positions])

    def fail_all(self, error: BaseException) -> None:
        """Fail every row (after an error in a batched forward) and empty the batch."""
        for row in self.drop(list(range(len(self.rows)))):
            row.handle.fail(error)


def _mergeable(cache) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


def _left_pad(tensor: torch.Tensor, length: int, dim: int = -2) -> torch.Tensor:
    """Zero-pad ``tensor`` on the left of ``dim`` (``-2``: a cache's sequence axis) to ``length``."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    if dim == 1 and tensor.dim() == 2:
        return F.pad(tensor, (missing, 0))
    return F.pad(tensor, (0, 0, missing, 0))
