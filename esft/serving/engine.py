"""Engine: one base model serving many ESFT adapters, with continuous batching on a scheduler thread.

Requests name the base model or an adapter. Adapters are loaded on first use through the resolver and
kept in host memory (``AdapterCache``). With ``batching="mixed"`` an adapter's experts are copied into
extra expert slots (``ExpertSlots``) and requests for different adapters share one forward pass; an
adapter that also changes dense weights, or ``batching="swap"``, is applied in place (hot-swap) for a
batch of its own requests only and restored bit-exactly when that batch drains. All model forwards and
weight changes happen on the scheduler thread under ``weights_lock``, so no request ever sees weights
of an adapter it did not ask for.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from esft.adapters import check_compatible
from esft.adapters.adapter import ESFTAdapter
from esft.errors import AdapterMismatchError
from esft.generation import encode_prompt, stop_token_ids
from esft.methods.esft_lora.adapter import expert_rows_adapter
from esft.models.discovery import find_moe_layers
from esft.models.families import LEFT_PADDING_LEAKS
from esft.serving.batch import Row, RunningBatch
from esft.serving.cache import AdapterCache, CachedAdapter, Resolver
from esft.serving.config import EngineConfig
from esft.serving.decoding import Sampler, TextStream
from esft.serving.errors import EngineClosedError, EngineFailure, ServingError
from esft.serving.grammar import GrammarCompiler
from esft.serving.requests import EventCallback, GenerationRequest, RequestHandle
from esft.serving.slots import ExpertSlots
from esft.serving.swap import HotSwap

log = logging.getLogger(__name__)


def _family_config(model: nn.Module, config: EngineConfig) -> EngineConfig:
    """``config``, decoding one request at a time for a family whose logits change under left padding (a
    batch of prompts of different lengths would answer differently than each prompt alone)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LEFT_PADDING_LEAKS or config.max_batch_size == 1:
        return config
    log.warning("%s: left padding changes this family's logits (esft.models.families.LEFT_PADDING_LEAKS); "
                "requests are decoded one at a time", model_type)
    return replace(config, max_batch_size=1)

MAX_CONSECUTIVE_FAILURES = 3
"""Scheduler iterations failing in a row (each failing the requests it decoded) before the engine gives up:
a fault that repeats is not transient, and failing fast beats requests waiting forever."""
OUTCOMES = ("completed", "failed", "cancelled", "timed_out")


@dataclass
class _Pending:
    """A validated request waiting for a place in the batch, with its sampler and detokeniser built."""

    handle: RequestHandle
    entry: CachedAdapter | None  # None: the base model
    max_tokens: int
    sampler: Sampler
    stream: TextStream


class Engine:
    """Serves a base model and its ESFT adapters.

    Args:
        model: the base causal LM (on its serving device).
        tokenizer: its tokenizer.
        resolver: adapter name -> adapter directory (``None`` when unknown).
        config: memory budgets, batching mode and sizes.
        base_name: the ``model`` name that means the base model.

    >>> with Engine.from_pretrained("toy", resolver=dict_resolver({"math": "out/adapter"})) as engine:  # doctest: +SKIP
    ...     engine.complete(GenerationRequest(engine.encode("add 2 and 3"), model="math")).text
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        resolver: Resolver | None = None,
        config: EngineConfig | None = None,
        base_name: str = "base",
    ):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.config = _family_config(model, config or EngineConfig())
        self.base_name = base_name
        self.layers = {layer.layer_index: layer for layer in find_moe_layers(model)}
        self.cache = AdapterCache(resolver or (lambda _name: None), self.config.cache_bytes, self._validate,
                                  load=self._read_adapter)
        self.slots = self._make_slots()
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.grammars = GrammarCompiler(tokenizer, self.vocab_size, self.stop_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batch = RunningBatch(model, pad, self.slots.set_rows if self.slots else None)
        self.weights_lock = threading.RLock()
        self.swap = HotSwap(model)
        self._waiting: deque[_Pending] = deque()
        self._unload: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._dead: str | None = None  # why the scheduler thread ended, if it did
        self._failures = 0  # scheduler iterations that failed (each failing only what it decoded)
        self._consecutive = 0  # of them, in a row
        self._last_failure: str | None = None
        self._outcomes: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        self._unfinished = 0  # submitted requests without an outcome yet
        self._outcomes_lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        resolver: Resolver | None = None,
        config: EngineConfig | None = None,
        base_name: str | None = None,
    ) -> Engine:
        """Load a local base model (never from a hub) and build an engine around it."""
        from esft.models.loading import load_model

        config = config or EngineConfig()
        model, tokenizer = load_model(model_dir, dtype=config.dtype, device=config.device)
        return cls(model, tokenizer, resolver=resolver, config=config, base_name=base_name or Path(model_dir).name)

    def _make_slots(self) -> ExpertSlots | None:
        if self.config.batching != "mixed":
            return None
        rows = self.config.slot_rows
        if rows is None:  # a quarter of the experts: ESFT adapters replace ~2-15% of a layer's experts
            rows = max(1, max(layer.num_experts for layer in self.layers.values()) // 4)
        return ExpertSlots(self.model, rows, self.config.max_adapters_in_batch) if rows > 0 else None

    def _validate(self, adapter: ESFTAdapter) -> None:
        check_compatible(self.model, adapter)
        for layer_index, ids in adapter.expert_config.experts.items():
            layer = self.layers.get(layer_index)
            if layer is None or any(not 0 <= i < layer.num_experts for i in ids):
                raise AdapterMismatchError(
                    f"adapter selects experts {ids} of layer {layer_index}, which this model's MoE layers do not have",
                    param="adapter",
                )

    # ----------------------------------------------------------------------------------------- lifecycle

    def start(self) -> Engine:
        """Start the scheduler thread (idempotent)."""
        with self._cond:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="esft-engine", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop the scheduler, fail queued and running requests, restore the base weights exactly.

        Works after any scheduler failure (even a dead scheduler thread), so a server can always shut down.
        """
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        closed = EngineClosedError("the engine was shut down")
        for pending in waiting:
            pending.handle.fail(closed)
        if self._thread is not None:
            self._thread.join(timeout)
        with self.weights_lock:
            self.batch.fail_all(closed)
            self._restore_swap()
            if self.slots is not None:
                self.slots.detach()
                self.slots = self.batch.set_rows = None

    def health(self) -> dict[str, Any]:
        """Whether the scheduler can serve (``alive``), and the iteration failures it survived so far."""
        thread = self._thread
        alive = not self._closed and self._dead is None and (thread is None or thread.is_alive())
        return {
            "alive": alive,
            "closed": self._closed,
            "stopped_by": self._dead,
            "errors": self._failures,
            "last_error": self._last_failure,
        }

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ requests

    def encode(self, prompt: str | list[dict[str, str]], *, chat: bool = True) -> list[int]:
        """Token ids of a prompt: chat messages (or text as one user turn) through the chat template,
        or raw text with ``chat=False`` (``/v1/completions``)."""
        if chat:
            return encode_prompt(self.tokenizer, prompt)
        return self.tokenizer(prompt)["input_ids"]

    def is_base(self, model: str | None) -> bool:
        return not model or model == self.base_name

    def submit(self, request: GenerationRequest, on_event: EventCallback | None = None) -> RequestHandle:
        """Queue a request; loads its adapter first, so unknown or broken adapters raise here.

        Everything a request needs is checked and built here, on the caller's thread, so a bad request
        fails alone before it joins a batch.

        Raises:
            UnknownModelError, AdapterLoadError, CacheFullError: the request's adapter cannot be served.
            ServingError: the prompt does not fit the model's context or has token ids outside the
                vocabulary, ``max_tokens`` exceeds what is left of it (or ``max_new_tokens``), a ``logit_bias``
                token is outside the vocabulary, or the JSON schema cannot be used (``GrammarUnsupportedError``).
            EngineClosedError: the engine is shut down, or its scheduler stopped.
        """
        self._check_open()
        request.check(self.vocab_size)
        max_tokens = self._max_tokens(request)
        params = request.params
        grammar = self.grammars.compile(params.json_schema) if params.json_schema else None
        sampler, stream = Sampler(params, self.device, grammar), TextStream(self.tokenizer, params.stop)
        entry = None if self.is_base(request.model) else self.cache.get(request.model)
        timeout = request.timeout_s if request.timeout_s is not None else self.config.request_timeout_s
        handle = RequestHandle(request, on_event, timeout_s=timeout, on_done=self._count)
        pending = _Pending(handle, entry, max_tokens, sampler, stream)
        with self._cond:
            self._check_open()
            with self._outcomes_lock:
                self._unfinished += 1
            self._waiting.append(pending)
            self._cond.notify_all()
        if self._thread is None:
            self.start()
        return pending.handle

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is shut down")
        if self._dead is not None:
            raise EngineClosedError(f"The inference engine stopped ({self._dead}); the server needs a restart.")

    def _count(self, outcome: str) -> None:
        with self._outcomes_lock:
            self._outcomes[outcome] += 1
            self._unfinished -= 1

    def in_flight(self) -> int:
        """Requests submitted and not finished yet (queued, joining the batch or decoding): an engine with none
        can be closed without failing a request."""
        with self._outcomes_lock:
            return self._unfinished

    def complete(self, request: GenerationRequest, timeout: float | None = None):
        """Submit and wait: the ``Completion``."""
        return self.submit(request).result(timeout)

    def _max_tokens(self, request: GenerationRequest) -> int:
        """``max_tokens``, or the most allowed when unset: min(context - prompt, ``max_new_tokens``).
        Asking for more is an error, never a silent cut."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        prompt = len(request.prompt_ids)
        if prompt == 0:
            raise ServingError("The prompt is empty.", param="messages", code="empty_prompt")
        if context is not None and prompt >= context:
            raise ServingError(
                f"The prompt has {prompt} tokens; this model's context is {context} tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        allowed = self.config.max_new_tokens if context is None else min(self.config.max_new_tokens, context - prompt)
        wanted = request.params.max_tokens
        if wanted is not None and wanted > allowed:
            raise ServingError(
                f"`max_tokens` is too large: {wanted}. With this {prompt}-token prompt this server generates at most "
                f"{allowed} tokens (min(context {context} - prompt, max_new_tokens {self.config.max_new_tokens})).",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        return wanted or allowed

    # ---------------------------------------------------------------------------------------- adapters

    def _read_adapter(self, path: Path) -> ESFTAdapter:
        """An adapter directory as expert rows: ESFT as saved, ESFT-LoRA materialised on the base rows."""
        with self.weights_lock:  # the hot swap's snapshot is read while no step changes the weights
            return expert_rows_adapter(path, self.model, self.swap.base_rows)

    def load_adapter(self, name: str) -> CachedAdapter:
        """Load an adapter into host memory now (it would otherwise load on first request)."""
        return self.cache.get(name)

    def unload_adapter(self, name: str) -> bool:
        """Drop an adapter from host memory and, once no running request uses it, from the slots."""
        with self._cond:
            self._unload.add(name)
            self._cond.notify_all()
        return self.cache.unload(name)

    def pin_adapter(self, name: str, pinned: bool = True) -> CachedAdapter:
        """(Un)pin an adapter: pinned adapters are never evicted from host memory."""
        return self.cache.pin(name, pinned)

    def stats(self) -> dict[str, Any]:
        """What is loaded, resident and queued (for ``/v1/adapters`` and metrics)."""
        with self._cond:
            waiting = len(self._waiting)
        with self.weights_lock:  # the scheduler changes slots between steps only
            resident = sorted(self.slots.residents) if self.slots is not None else []
        return {
            "base_model": self.base_name,
            "batching": self.config.batching,
            "running": len(self.batch),
            "peak_adapters_in_batch": self.batch.peak_adapters,
            "waiting": waiting,
            "swapped_in": self.swap.active,
            "requests": dict(self._outcomes),
            "cache": {
                "budget_bytes": self.cache.budget_bytes,
                "used_bytes": self.cache.used_bytes,
                "evictions": self.cache.evictions,
                "adapters": [
                    {"name": e.name, "bytes": e.nbytes, "pinned": e.pinned, "load_ms": round(e.load_ms, 2)}
                    for e in self.cache.entries()
                ],
            },
            "slots": None
            if self.slots is None
            else {"rows_per_layer": self.slots.rows_per_layer, "bytes": self.slots.slot_bytes, "resident": resident},
        }

    # --------------------------------------------------------------------------------------- scheduler

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not len(self.batch):
                        self._cond.wait(self.config.idle_wait_s)
                    if self._closed:
                        return
                with self.weights_lock:
                    try:
                        self._iteration()
                        self._consecutive = 0
                    except Exception as exc:  # noqa: BLE001 - the scheduler outlives any error
                        self._recover(exc)
        except BaseException as exc:  # noqa: BLE001 - the thread ends: fail every request rather than hang
            self._stopped(exc)

    def _recover(self, error: Exception) -> None:
        """An iteration failed outside any request's own error handling: fail what it was decoding, go on."""
        log.exception("engine iteration failed; failing the %d requests it was decoding", len(self.batch))
        self._failures += 1
        self._consecutive += 1
        self._last_failure = f"{type(error).__name__}: {error}"
        self.batch.fail_all(EngineFailure(f"The engine failed while decoding this request: {self._last_failure}"))
        if self._consecutive >= MAX_CONSECUTIVE_FAILURES:
            raise error

    def _stopped(self, error: BaseException) -> None:
        """The scheduler thread ends on an error: refuse new requests, fail every queued and running one."""
        log.critical("engine scheduler stopped: %s: %s", type(error).__name__, error, exc_info=error)
        with self._cond:
            self._dead = f"{type(error).__name__}: {error}"
            waiting, self._waiting = list(self._waiting), deque()
        stopped = EngineClosedError(f"The inference engine stopped ({self._dead}); the server needs a restart.")
        for pending in waiting:
            pending.handle.fail(stopped)
        with self.weights_lock:
            self.batch.fail_all(stopped)

    def _iteration(self) -> None:
        """Admit what fits, then decode one step; an error fails only the requests it touched."""
        self._drop_stopped()
        self._process_unloads()
        if not len(self.batch) and not self._next_uses(self.swap.active):
            self._restore_swap()  # lazily: kept while the next request wants the same adapter
        cohort = self._admit()
        if cohort:
            self._prefill(cohort)
        elif len(self.batch):
            try:
                self.batch.step()
            except Exception as exc:  # noqa: BLE001
                log.exception("decode step failed")
                self.batch.fail_all(exc)

    def _drop_stopped(self) -> None:
        """Fail queued requests that were cancelled or are past their deadline (they never reach the batch)."""
        with self._cond:
            stopped = [(p, error) for p in self._waiting if (error := p.handle.stop_error()) is not None]
            for pending, _ in stopped:
                self._waiting.remove(pending)
        for pending, error in stopped:
            pending.handle.fail(error)

    def _prefill(self, cohort: list[Row]) -> None:
        """Join ``cohort`` to the batch. If its forward fails before any row joined, each row is retried
        alone, so only the request that breaks the forward fails; otherwise the cohort fails."""
        try:
            self.batch.add(cohort)
        except Exception as exc:  # noqa: BLE001 - a prefill failure fails requests, never the engine
            log.exception("prefill of %d requests failed", len(cohort))
            joined = {id(row.handle) for row in self.batch.rows}
            if len(cohort) > 1 and not any(id(row.handle) in joined for row in cohort):
                for row in cohort:
                    self._prefill([row])
            else:
                self._fail_cohort(cohort, exc)

    def _next_uses(self, name: str | None) -> bool:
        with self._cond:
            head = self._waiting[0] if self._waiting else None
        return name is not None and head is not None and head.entry is not None and head.entry.name == name

    def _fail_cohort(self, cohort: Sequence[Row], error: BaseException) -> None:
        handles = {id(row.handle) for row in cohort}
        indices = [i for i, row in enumerate(self.batch.rows) if id(row.handle) in handles]
        self.batch.drop(indices)
        for row in cohort:
            row.handle.fail(error)

    def _process_unloads(self) -> None:
        with self._cond:
            names, self._unload = self._unload, set()
        busy = self.batch.adapters
        for name in names:
            if name in busy:
                with self._cond:
                    self._unload.add(name)  # evict once its requests are done
            else:
                self.swap.forget(name)
                if self.slots is not None:
                    self.slots.evict(name)

    def _admit(self) -> list[Row]:
        """Move waiting requests into the batch, FIFO, while they fit (size, slots, weights mode)."""
        cohort: list[Row] = []
        if not self.batch.can_join():
            return cohort
        while len(self.batch) + len(cohort) < self.config.max_batch_size:
            with self._cond:
                if not self._waiting:
                    break
                pending = self._waiting[0]
            if (stop := pending.handle.stop_error()) is not None:
                self._pop(pending).handle.fail(stop)
                continue
            try:
                table_row = self._route(pending, cohort)
            except Exception as exc:  # noqa: BLE001 - e.g. an adapter that fails to place: only its request
                self._pop(pending).handle.fail(exc)
                continue
            if table_row is None:
                break
            cohort.append(self._row(self._pop(pending), table_row))
        return cohort

    def _pop(self, pending: _Pending) -> _Pending:
        with self._cond:
            self._waiting.remove(pending)
        return pending

    def _route(self, pending: _Pending, cohort: list[Row]) -> int | None:
        """The routing-table row for this request, or ``None`` if it must wait (batch full of others)."""
        entry, empty = pending.entry, not len(self.batch) and not cohort
        if entry is None:
            return 0 if self.swap.active is None else None
        needs_swap = self.slots is None or not self.slots.fits(entry.adapter)
        if needs_swap:
            if self.swap.active == entry.name:
                return 0
            if not empty:
                return None
            self.swap.apply(entry.name, entry.adapter)
            return 0
        if self.swap.active is not None:
            return None
        keep = self.batch.adapters | {row.adapter for row in cohort if row.adapter}
        return self.slots.place(entry.name, entry.adapter, keep=keep)

    def _row(self, pending: _Pending, table_row: int) -> Row:
        name = pending.entry.name if pending.entry else None
        return Row(pending.handle, name, table_row, pending.max_tokens, pending.sampler, pending.stream, self.stop_ids)

    def _restore_swap(self) -> None:
        self.swap.restore()

    @property
    def swapped_name(self) -> str | None:
        """The adapter applied in place right now (hot-swap), if any."""
        return self.swap.active


def batch_generate(engine: Engine, requests: Sequence[GenerationRequest], timeout: float | None = None) -> list:
    """Submit all ``requests`` at once and return their completions in order (they share batches)."""
    handles = [engine.submit(request) for request in requests]
    return [handle.result(timeout) for handle in handles]
