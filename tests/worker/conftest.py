"""Worker fixtures: the API fixtures, an inline queue running real steps, and a fault-injecting library."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.service_support import (  # noqa: F401
    auth,
    base_model,
    client,
    other_auth,
    settings,
    toy_model_dir,
    training_file,
    upload,
)
from tests.worker.inline_queue import InlineQueue
from worker.library import esft_library, set_library


class FaultyLibrary:
    """The real library, plus call counting and hooks that run before a call or inside its progress callback."""

    def __init__(self) -> None:
        self.real = esft_library()
        self.calls: Counter[str] = Counter()
        self.before: dict[str, Callable[..., None]] = {}
        self.on_progress: dict[str, Callable[..., None]] = {}
        self.kwargs: dict[str, dict] = {}

    def __getattr__(self, name: str) -> Callable:
        real = getattr(self.real, name)
        return lambda *args, **kwargs: real(*args, **self._hooked(name, kwargs))

    def _hooked(self, name: str, kwargs: dict) -> dict:
        self.calls[name] += 1
        self.kwargs[name] = kwargs
        if name in self.before:
            self.before[name]()
        if name in self.on_progress and kwargs.get("progress") is not None:
            inner, hook = kwargs["progress"], self.on_progress[name]

            def progress(event) -> None:
                hook(event)
                inner(event)

            kwargs = {**kwargs, "progress": progress}
        return kwargs


@pytest.fixture
def lib() -> Iterator[FaultyLibrary]:
    """The library every step calls during the test (through ``worker.library.set_library``)."""
    faulty = FaultyLibrary()
    set_library(faulty)
    yield faulty
    set_library(None)


@pytest.fixture
def queue(settings, lib) -> InlineQueue:  # noqa: F811
    """Overrides the API's recording queue: sends are kept and ``drain()`` runs them with ``lib``."""
    return InlineQueue(settings)
