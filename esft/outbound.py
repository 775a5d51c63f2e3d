"""The outbound-URL allowlist: the only URLs the service calls on a user's behalf (LLM judges, webhooks).

An allowlist entry is a host name (``judge.internal``: any http(s) URL on that host) or a URL prefix
(``https://api.example.com/v1``: same scheme, host and port, and a path under that path). An empty list
allows nothing, so a deployment opts in to each destination.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from esft.errors import ConfigError

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return None
    return parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme], parts.path.rstrip("/")


def _allows(entry: str, target: tuple[str, str, int, str]) -> bool:
    if "://" not in entry:
        return target[1] == entry.strip().lower()
    allowed = _origin(entry)
    if allowed is None or allowed[:3] != target[:3]:
        return False
    return target[3] == allowed[3] or target[3].startswith(allowed[3] + "/")


def check_outbound_url(url: str, allowlist: Iterable[str], *, param: str) -> str:
    """Return ``url`` if the allowlist lets the service call it; else raise ``ConfigError`` naming ``param``."""
    target = _origin(url)
    if target is None:
        raise ConfigError(f"{url!r} is not an http(s) URL with a host (and no credentials in it)", param=param)
    entries = list(allowlist)
    if not any(_allows(entry, target) for entry in entries):
        hint = "ask the administrator to add it to ESFT_OUTBOUND_URL_ALLOWLIST" if not entries else (
            f"allowed: {entries}")
        raise ConfigError(f"{url!r} is not in this deployment's outbound-URL allowlist; {hint}", param=param)
    return url
