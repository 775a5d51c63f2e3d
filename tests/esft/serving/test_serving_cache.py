"""Adapter cache: load on first use, LRU eviction under a byte budget, pinning, per-adapter failures."""

from __future__ import annotations

import threading
from unittest import mock

import pytest

from esft.adapters import ESFTAdapter
from esft.serving import AdapterCache, AdapterLoadError, CacheFullError, UnknownModelError, dict_resolver


@pytest.fixture
def sizes(assets) -> dict[str, int]:
    return {name: ESFTAdapter.from_pretrained(assets.adapters[name]).nbytes for name in ("math", "words", "dense")}


def test_lru_eviction_under_small_budget(assets, sizes):
    budget = sizes["math"] + sizes["words"]  # not room for all three
    cache = AdapterCache(dict_resolver(assets.adapters), budget)
    cache.get("math")
    cache.get("words")
    cache.get("math")  # math is now the most recently used
    cache.get("dense")
    names = [entry.name for entry in cache.entries()]
    assert "words" not in names and names[-1] == "dense"
    assert cache.used_bytes <= budget and cache.evictions >= 1


def test_pinned_adapters_are_never_evicted(assets, sizes):
    budget = sizes["dense"] + max(sizes["math"], sizes["words"])  # dense and one of the others
    cache = AdapterCache(dict_resolver(assets.adapters), budget)
    cache.pin("dense")
    for name in ("math", "words", "math"):
        cache.get(name)
        assert "dense" in cache
    cache.pin("math")
    with pytest.raises(CacheFullError) as info:
        cache.get("words")  # only pinned adapters left to evict
    assert info.value.code == "adapter_cache_full"
    cache.pin("math", False)
    cache.get("words")
    assert "math" not in cache and "dense" in cache


def test_failures_are_per_adapter(assets, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    validate = mock.Mock(side_effect=lambda adapter: None)
    cache = AdapterCache(dict_resolver({**assets.adapters, "broken": broken}), 2**30, validate)
    with pytest.raises(UnknownModelError) as unknown:
        cache.get("nope")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(AdapterLoadError):
        cache.get("broken")
    assert cache.get("math").name == "math"  # other adapters unaffected
    validate.side_effect = ValueError("boom")
    with pytest.raises(AdapterLoadError, match="could not be loaded"):
        cache.get("words")
    assert [entry.name for entry in cache.entries()] == ["math"]


def test_concurrent_gets_load_once(assets):
    calls = []
    resolver = dict_resolver(assets.adapters)
    cache = AdapterCache(lambda name: calls.append(name) or resolver(name), 2**30)
    threads = [threading.Thread(target=cache.get, args=("math",)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["math"]
