"""Requests to the engine and their handles: sampling parameters, streamed tokens, the final completion."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from esft.errors import ConfigError
from esft.serving.errors import RequestCancelled


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    Attributes:
        max_tokens: new tokens at most (``None``: the engine's ``max_new_tokens``).
        temperature: 0 is greedy; otherwise logits are divided by it before sampling.
        top_p: nucleus sampling: sample among the most likely tokens whose probabilities sum to ``top_p``.
        stop: strings that end the completion (not included in the text).
        seed: seeds this request's own random generator, so sampling does not depend on the batch.
        ignore_eos: keep generating past the stop tokens up to ``max_tokens`` (vLLM's ``ignore_eos``; for benchmarks).
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens is not None and self.max_tokens < 1:
            problems.append(f"`max_tokens` must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"`temperature` must be between 0 and 2, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"`top_p` must be in (0, 1], got {self.top_p}")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            problems.append("`stop` takes at most 4 non-empty strings")
        if problems:
            raise ConfigError(problems, param="sampling")


@dataclass
class GenerationRequest:
    """One completion to compute: prompt token ids, the model (adapter name or base) and sampling."""

    prompt_ids: list[int]
    model: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class TokenEvent:
    """A newly generated token and the text it adds (possibly empty while a stop string may start)."""

    token_id: int
    text: str


@dataclass
class Completion:
    """The finished answer: text, token ids, why it stopped (``stop``/``length``) and token counts."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


EventCallback = Callable[["TokenEvent | Completion | BaseException"], None]
"""Receives each ``TokenEvent``, then exactly one ``Completion`` or exception. Called from the engine thread."""


class RequestHandle:
    """The caller's side of a submitted request: wait for the result, stream events, or cancel.

    >>> handle = engine.submit(GenerationRequest(ids, model="math"))  # doctest: +SKIP
    >>> handle.result(timeout=30).text  # doctest: +SKIP
    """

    def __init__(self, request: GenerationRequest, on_event: EventCallback | None = None):
        self.request = request
        self._on_event = on_event
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._events: queue.SimpleQueue | None = None if on_event else queue.SimpleQueue()
        self._completion: Completion | None = None
        self._error: BaseException | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Ask the engine to stop this request; it is dropped at the next step."""
        self._cancelled.set()

    def _emit(self, event: TokenEvent | Completion | BaseException) -> None:
        if self._on_event is not None:
            self._on_event(event)
        else:
            self._events.put(event)

    def push(self, event: TokenEvent) -> None:
        """Engine side: one new token."""
        self._emit(event)

    def finish(self, completion: Completion) -> None:
        """Engine side: the request completed."""
        if not self._done.is_set():
            self._completion = completion
            self._done.set()
            self._emit(completion)

    def fail(self, error: BaseException) -> None:
        """Engine side: the request failed (only this request)."""
        if not self._done.is_set():
            self._error = error
            self._done.set()
            self._emit(error)

    def result(self, timeout: float | None = None) -> Completion:
        """Block until the request finishes; raise its error if it failed."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request.id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._completion

    def stream(self, timeout: float | None = None) -> Iterator[TokenEvent]:
        """Yield token events as they come (only without ``on_event``); raise the error if it failed."""
        if self._events is None:
            raise RuntimeError("this handle reports through its `on_event` callback")
        while True:
            event = self._events.get(timeout=timeout)
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Completion):
                return
            yield event


def cancelled_error(request: GenerationRequest) -> RequestCancelled:
    return RequestCancelled(f"request {request.id} was cancelled", param=None)
