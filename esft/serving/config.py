"""EngineConfig: the serving engine's knobs (memory budgets, batch size, batching mode), validated at construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from esft.errors import ConfigError

BatchingMode = Literal["mixed", "swap"]


@dataclass
class EngineConfig:
    """How the engine holds adapters and batches requests.

    Attributes:
        cache_bytes: host-memory budget for loaded adapters; least recently used unpinned adapters are
            evicted past it.
        batching: ``"mixed"`` serves requests for different adapters in one forward pass (adapter experts
            live in extra expert slots); ``"swap"`` applies one adapter in place at a time (hot-swap).
            Adapters that also change dense weights (shared experts, non-expert modules) always hot-swap.
        slot_rows: extra expert rows per MoE layer for mixed batches (``None``: a quarter of the layer's
            experts). Memory cost: ``slot_rows`` experts per layer. An adapter that selects more experts
            in some layer than fit is hot-swapped instead.
        max_adapters_in_batch: adapters that can be resident in the slots at once.
        max_batch_size: requests decoded together.
        max_new_tokens: the most tokens a request may ask for (also bounded by the context left after
            the prompt); a larger ``max_tokens`` is refused, an unset one means as many as allowed.
        max_choices: the most choices (OpenAI's ``n``) one HTTP request may ask for.
        device: ``"cuda"``/``"cpu"``; ``None`` picks CUDA when available.
        dtype: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        idle_wait_s: how long the scheduler sleeps when there is nothing to do (woken by new requests).
        request_timeout_s: default deadline of a request from its submission (``None``: none); past it the
            request fails with ``RequestTimeout`` and frees its slot. A request's own ``timeout_s`` wins.

    >>> EngineConfig(max_batch_size=4).batching
    'mixed'
    """

    cache_bytes: int = 4 * 1024**3
    batching: BatchingMode = "mixed"
    slot_rows: int | None = None
    max_adapters_in_batch: int = 16
    max_batch_size: int = 8
    max_new_tokens: int = 512
    max_choices: int = 16
    device: str | None = None
    dtype: str = "auto"
    idle_wait_s: float = 0.5
    request_timeout_s: float | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.cache_bytes > 0, f"`cache_bytes` must be > 0, got {self.cache_bytes}"),
            (self.batching in ("mixed", "swap"), f"`batching` must be 'mixed' or 'swap', got {self.batching!r}"),
            (self.slot_rows is None or self.slot_rows >= 0, f"`slot_rows` must be >= 0, got {self.slot_rows}"),
            (self.max_adapters_in_batch >= 1, "`max_adapters_in_batch` must be >= 1"),
            (self.max_batch_size >= 1, f"`max_batch_size` must be >= 1, got {self.max_batch_size}"),
            (self.max_new_tokens >= 1, f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}"),
            (self.max_choices >= 1, f"`max_choices` must be >= 1, got {self.max_choices}"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"), f"`dtype` {self.dtype!r} is not known"),
            (self.idle_wait_s > 0, "`idle_wait_s` must be > 0"),
            (self.request_timeout_s is None or self.request_timeout_s > 0, "`request_timeout_s` must be > 0"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError(problems, param="engine_config")
