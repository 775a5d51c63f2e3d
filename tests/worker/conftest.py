"""Worker fixtures: the API fixtures, an inline queue running real steps, and a fault-injecting library."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from api.testing import (  # noqa: F401
    auth,
    base_model,
    client,
    other_auth,
    settings,
    toy_model_dir,
    training_file,
    upload,
)
from worker.library import EsftLibrary
from worker.testing import InlineQueue


class FaultyLibrary(EsftLibrary):
    """The real library, plus call counting and hooks that run before a call or inside its progress callback."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.before: dict[str, Callable[..., None]] = {}
        self.on_progress: dict[str, Callable[..., None]] = {}
        self.kwargs: dict[str, dict] = {}

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

    def score(self, *args, **kwargs):
        return super().score(*args, **self._hooked("score", kwargs))

    def select(self, *args, **kwargs):
        self._hooked("select", kwargs)
        return super().select(*args, **kwargs)

    def train(self, *args, **kwargs):
        return super().train(*args, **self._hooked("train", kwargs))

    def compare(self, *args, **kwargs):
        return super().compare(*args, **self._hooked("compare", kwargs))


@pytest.fixture
def lib() -> FaultyLibrary:
    return FaultyLibrary()


@pytest.fixture
def queue(settings, lib) -> InlineQueue:  # noqa: F811
    """Overrides the API's recording queue: sends are kept and ``drain()`` runs them with ``lib``."""
    return InlineQueue(settings, lib)
