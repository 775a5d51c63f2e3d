"""Token buckets for requests per second: in this process (embedded mode) or in Redis (shared by every API process).

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one token. ``take``
returns 0 when the request may go on, else the seconds until a token is back (the ``Retry-After``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)


class Buckets(Protocol):
    def take(self, key: str, rate: float, burst: float) -> float: ...


def _refill(tokens: float, elapsed: float, rate: float, burst: float) -> tuple[float, float]:
    """(tokens left, seconds to wait): one token taken when there is one."""
    tokens = min(burst, tokens + max(0.0, elapsed) * rate)
    if tokens >= 1:
        return tokens - 1, 0.0
    return tokens, (1 - tokens) / rate


class LocalBuckets:
    """Buckets in a dict, for a single API process."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: float) -> float:
        with self._lock:
            now = self.clock()
            tokens, last = self._state.get(key, (burst, now))
            tokens, wait = _refill(tokens, now - last, rate, burst)
            self._state[key] = (tokens, now)
            return wait


# The same arithmetic as ``_refill``, atomically in Redis on the server's clock; the key expires once full again.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisBuckets:
    """Buckets in Redis. If Redis cannot be reached the request goes on (logged): limits never take the API down."""

    def __init__(self, url: str, prefix: str = "esft:ratelimit:"):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.script = self.client.register_script(_TAKE)
        self.prefix = prefix
        self.errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

    def take(self, key: str, rate: float, burst: float) -> float:
        try:
            return float(self.script(keys=[self.prefix + key], args=[rate, burst]))
        except self.errors as exc:
            log.warning("rate limit not checked, Redis unavailable: %s", exc)
            return 0.0


def buckets_for(redis_url: str | None) -> Buckets:
    return RedisBuckets(redis_url) if redis_url else LocalBuckets()
