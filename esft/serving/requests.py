"""Requests to the engine and their handles: sampling parameters, streamed tokens, the final completion."""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from esft.errors import ConfigError
from esft.serving.errors import RequestCancelled, RequestTimeout, ServingError

log = logging.getLogger(__name__)

MIN_TEMPERATURE = 1e-4
"""Temperatures below this decode greedily: dividing logits by them overflows float32 (and the
distribution is one-hot at that precision anyway)."""
BAN_BIAS = -100.0
"""A ``logit_bias`` this low bans the token outright (OpenAI: -100 "should result in a ban")."""
MAX_SEED = 2**63 - 1
MAX_TOP_LOGPROBS = 20
MAX_JSON_SCHEMA_CHARS = 65_536
"""The longest ``json_schema`` (as JSON text): its grammar masks every decode step of its batch."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    Attributes:
        max_tokens: new tokens at most (``None``: as many as the engine's ``max_new_tokens`` and the
            context allow; more than that is refused).
        temperature: 0 is greedy (so is anything below ``MIN_TEMPERATURE``); otherwise logits are divided
            by it before sampling.
        top_p: nucleus sampling: sample among the most likely tokens whose probabilities sum to ``top_p``.
        stop: strings that end the completion (not included in the text).
        seed: seeds this request's own random generator, so sampling does not depend on the batch.
        ignore_eos: keep generating past the stop tokens up to ``max_tokens`` (vLLM's ``ignore_eos``; for benchmarks).
        presence_penalty: subtracted once from the logit of every token already generated (-2 to 2).
        frequency_penalty: subtracted from a token's logit per time it was generated (-2 to 2).
        logit_bias: ``(token id, bias)`` pairs added to the logits (-100 to 100; -100 bans the token).
        logprobs: ``None``: no log-probabilities; ``k`` (0 to 20): the chosen token's and the top ``k``.
        json_schema: a JSON schema (as JSON text) the completion must follow (constrained decoding);
            ``{"type": "object"}`` for any JSON object.
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    json_schema: str | None = None

    def __post_init__(self) -> None:
        problems = [message for ok, message in self._checks() if not ok]
        if problems:
            raise ConfigError(problems, param="sampling")

    def _checks(self) -> list[tuple[bool, str]]:
        def bounded(value, low, high) -> bool:
            return isinstance(value, int | float) and math.isfinite(value) and low <= value <= high

        return [
            (self.max_tokens is None or self.max_tokens >= 1, f"`max_tokens` must be >= 1, got {self.max_tokens}"),
            (bounded(self.temperature, 0.0, 2.0), f"`temperature` must be between 0 and 2, got {self.temperature}"),
            (bounded(self.top_p, 0.0, 1.0) and self.top_p > 0, f"`top_p` must be in (0, 1], got {self.top_p}"),
            (len(self.stop) <= 4 and all(self.stop), "`stop` takes at most 4 non-empty strings"),
            (self.seed is None or 0 <= self.seed <= MAX_SEED, f"`seed` must be in [0, 2**63 - 1], got {self.seed}"),
            (bounded(self.presence_penalty, -2.0, 2.0), "`presence_penalty` must be between -2 and 2"),
            (bounded(self.frequency_penalty, -2.0, 2.0), "`frequency_penalty` must be between -2 and 2"),
            (all(t >= 0 and bounded(b, -100, 100) for t, b in self.logit_bias), "`logit_bias` values: -100 to 100"),
            (self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS, "`logprobs` must be in [0, 20]"),
            (self.json_schema is None or _is_json_object(self.json_schema), "`json_schema` must be a JSON object"),
            (
                self.json_schema is None or len(self.json_schema) <= MAX_JSON_SCHEMA_CHARS,
                f"`json_schema` is too long: at most {MAX_JSON_SCHEMA_CHARS} characters of JSON",
            ),
            (not (self.json_schema and self.ignore_eos), "`ignore_eos` cannot be combined with a JSON schema"),
        ]


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the ``(token id, logprob)`` of the most likely alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class GenerationRequest:
    """One completion to compute: prompt token ids, the model (adapter name or base) and sampling.

    ``timeout_s`` is its deadline from submission (``None``: the engine's ``request_timeout_s``); past it the
    request fails with ``RequestTimeout`` wherever it is (queued or decoding) and frees its slot.
    """

    prompt_ids: list[int]
    model: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timeout_s: float | None = None

    def check(self, vocab_size: int) -> None:
        """Raise ``ServingError`` naming the field if this request cannot be decoded by a ``vocab_size`` model."""
        if not isinstance(self.params, SamplingParams):
            raise ServingError("`params` must be SamplingParams.", param="params")
        if not all(isinstance(t, int) and 0 <= t < vocab_size for t in self.prompt_ids):
            raise ServingError(f"Prompt token ids must be in [0, {vocab_size}).", param="prompt", code="invalid_prompt")
        if any(token >= vocab_size for token, _ in self.params.logit_bias):
            raise ServingError(
                f"`logit_bias` token ids must be < {vocab_size}.", param="logit_bias", code="invalid_value"
            )
        if self.timeout_s is not None and not (isinstance(self.timeout_s, int | float) and self.timeout_s > 0):
            raise ServingError(
                f"`timeout_s` must be > 0, got {self.timeout_s}", param="timeout_s", code="invalid_value"
            )


@dataclass
class TokenEvent:
    """A newly generated token and the text it adds (possibly empty while a stop string may start), with
    the log-probabilities of the tokens generated since the previous event (when asked for)."""

    token_id: int
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Completion:
    """The finished answer: text, token ids, why it stopped (``stop``/``length``) and token counts."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None  # one per token id, when asked for

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

    def __init__(
        self,
        request: GenerationRequest,
        on_event: EventCallback | None = None,
        *,
        timeout_s: float | None = None,
        on_done: Callable[[str], None] | None = None,
    ):
        self.request = request
        self._on_event = on_event
        self._on_done = on_done  # the engine's outcome counter: completed, cancelled, timed_out, failed
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
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

    def stop_error(self) -> ServingError | None:
        """Why the engine must stop this request now (cancelled, or past its deadline), if it must."""
        if self._cancelled.is_set():
            return cancelled_error(self.request)
        if self.deadline is not None and time.monotonic() > self.deadline:
            return RequestTimeout(
                f"Request {self.request.id} did not finish within its {self.timeout_s:g} s deadline.",
                param=None,
            )
        return None

    def _emit(self, event: TokenEvent | Completion | BaseException) -> None:
        if self._on_event is None:
            self._events.put(event)
            return
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001 - a broken consumer loses its own request, never its batch
            log.exception("the event callback of request %s failed; cancelling it", self.request.id)
            self._cancelled.set()

    def push(self, event: TokenEvent) -> None:
        """Engine side: one new token."""
        self._emit(event)

    def finish(self, completion: Completion) -> None:
        """Engine side: the request completed."""
        if not self._done.is_set():
            self._completion = completion
            self._done.set()
            self._report("completed")
            self._emit(completion)

    def fail(self, error: BaseException) -> None:
        """Engine side: the request failed (only this request)."""
        if not self._done.is_set():
            self._error = error
            self._done.set()
            kinds = ((RequestCancelled, "cancelled"), (RequestTimeout, "timed_out"))
            self._report(next((name for kind, name in kinds if isinstance(error, kind)), "failed"))
            self._emit(error)

    def _report(self, outcome: str) -> None:
        if self._on_done is not None:
            self._on_done(outcome)

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
