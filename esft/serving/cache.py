"""AdapterCache: adapters loaded on first use through a resolver, kept in host memory under a byte budget.

Eviction is least-recently-used among unpinned adapters. Loading happens outside the cache lock (one
lock per name stops two threads reading the same adapter twice), so a slow or failing adapter never
blocks requests for other adapters, and a failure is raised only to the requests that asked for it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from esft.adapters import ESFTAdapter
from esft.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from esft.errors import ESFTError
from esft.serving.errors import AdapterLoadError, CacheFullError, UnknownModelError

Resolver = Callable[[str], "str | Path | None"]
"""Maps an adapter name to its directory; returns ``None`` for names it does not know."""

Validator = Callable[[ESFTAdapter], None]
"""Raises (an ``ESFTError``) when an adapter cannot be served with this engine's base model."""


@dataclass
class CachedAdapter:
    """One adapter in host memory."""

    name: str
    adapter: ESFTAdapter
    path: Path
    load_ms: float
    pinned: bool = False
    revision: str = ""  # the sha256 of its weights (from adapter_config.json): names this exact version

    @property
    def fingerprint_part(self) -> str:
        return self.revision[:12] or "unversioned"

    @property
    def nbytes(self) -> int:
        return self.adapter.nbytes


def dict_resolver(adapters: dict[str, str | Path]) -> Resolver:
    """A resolver over a fixed ``name -> directory`` mapping."""
    table = {name: Path(path) for name, path in adapters.items()}
    return table.get


class AdapterCache:
    """Thread-safe LRU cache of adapters in host memory.

    Args:
        resolver: ``name -> adapter directory`` (``None`` when unknown).
        budget_bytes: the most bytes of adapter tensors to keep.
        validate: called on every freshly loaded adapter (e.g. ``check_compatible`` with the base model).

    >>> cache = AdapterCache(dict_resolver({"math": "out/adapter"}), budget_bytes=2**30)  # doctest: +SKIP
    >>> cache.get("math").adapter.nbytes  # doctest: +SKIP
    """

    def __init__(self, resolver: Resolver, budget_bytes: int, validate: Validator | None = None):
        self.resolver = resolver
        self.budget_bytes = budget_bytes
        self.validate = validate
        self._entries: OrderedDict[str, CachedAdapter] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.evictions = 0
        self.hits = 0  # lookups served from the cache (for metrics)
        self.misses = 0  # lookups that loaded the adapter

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def entries(self) -> list[CachedAdapter]:
        """Snapshot of the cached adapters, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def get(self, name: str) -> CachedAdapter:
        """The cached adapter ``name``, loading it on a miss (and evicting LRU adapters to fit).

        Raises:
            UnknownModelError: the resolver does not know ``name``.
            AdapterLoadError: the adapter could not be read or failed validation.
            CacheFullError: pinned adapters leave no room for it.
        """
        with self._lock:
            entry = self._touch(name)
            if entry is not None:
                self.hits += 1
                return entry
            self.misses += 1
            name_lock = self._loading.setdefault(name, threading.Lock())
        with name_lock:
            with self._lock:
                entry = self._touch(name)  # another thread may have loaded it meanwhile
            if entry is not None:
                return entry
            entry = self._load(name)
            with self._lock:
                self._make_room(entry.nbytes, name)
                self._entries[name] = entry
                self._loading.pop(name, None)
            return entry

    def _touch(self, name: str) -> CachedAdapter | None:
        entry = self._entries.get(name)
        if entry is not None:
            self._entries.move_to_end(name)
        return entry

    def _load(self, name: str) -> CachedAdapter:
        path = self.resolver(name)
        if path is None:
            raise UnknownModelError(
                f"The model {name!r} does not exist: it is neither the base model nor a known adapter.", param="model"
            )
        started = time.perf_counter()
        try:
            adapter = ESFTAdapter.from_pretrained(path)
            if self.validate is not None:
                self.validate(adapter)
        except ESFTError as exc:
            raise AdapterLoadError(
                f"Adapter {name!r} cannot be served: {exc.message}", param="model", code=exc.code
            ) from exc
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise AdapterLoadError(f"Adapter {name!r} could not be loaded from {path}: {exc}", param="model") from exc
        load_ms = (time.perf_counter() - started) * 1000
        return CachedAdapter(name, adapter, Path(path), load_ms, revision=_weights_sha256(Path(path)))

    def _make_room(self, nbytes: int, name: str) -> None:
        """Evict LRU unpinned adapters until ``nbytes`` more fit; caller holds the lock."""
        if nbytes > self.budget_bytes:
            raise CacheFullError(
                f"Adapter {name!r} needs {nbytes} bytes, more than the whole adapter cache "
                f"({self.budget_bytes} bytes); raise the engine's `cache_bytes`.",
                param="model",
            )
        used = sum(entry.nbytes for entry in self._entries.values())
        for victim in [e for e in self._entries.values() if not e.pinned]:
            if used + nbytes <= self.budget_bytes:
                break
            del self._entries[victim.name]
            used -= victim.nbytes
            self.evictions += 1
        if used + nbytes > self.budget_bytes:
            raise CacheFullError(
                f"Adapter {name!r} ({nbytes} bytes) does not fit next to the pinned adapters "
                f"({used} of {self.budget_bytes} bytes); unpin one first.",
                param="model",
            )

    def unload(self, name: str) -> bool:
        """Drop ``name`` from the cache (pinned or not); False if it was not loaded."""
        with self._lock:
            return self._entries.pop(name, None) is not None

    def pin(self, name: str, pinned: bool = True) -> CachedAdapter:
        """Load ``name`` if needed and (un)pin it: pinned adapters are never evicted."""
        while True:
            entry = self.get(name)
            with self._lock:
                if self._entries.get(name) is entry:  # not evicted between get and here
                    entry.pinned = pinned
                    return entry


def _weights_sha256(path: Path) -> str:
    """The weights' sha256 recorded in the adapter's config ("" when it records none)."""
    try:
        config = json.loads((path / ADAPTER_CONFIG_NAME).read_text())
        return str(config.get("weights", {}).get(ADAPTER_WEIGHTS_NAME, {}).get("sha256") or "")
    except (OSError, ValueError, AttributeError):
        return ""
