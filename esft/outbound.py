"""Outbound calls are the operator's choice: a URL is called only when an allowlist entry admits it.

An entry is a URL prefix (``https://judge.internal/v1/``: same scheme, host and port, path under it at a ``/``
boundary) or a host (``judge.internal``, ``judge.internal:8080``, ``*.internal`` for its subdomains, any http(s)
scheme). An empty allowlist admits nothing.

>>> check_outbound_url("https://judge.internal/v1/chat", ["judge.internal"], param="judge.url")
>>> try:
...     check_outbound_url("https://judge.internal.evil.net/", ["https://judge.internal"], param="judge.url")
... except OutboundURLError as exc:
...     print(exc.code, exc.param)
outbound_url_not_allowed judge.url
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from esft.errors import OutboundURLError

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of an http(s) URL; ValueError when it is not one."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    port = parts.port or _DEFAULT_PORTS[scheme]  # raises ValueError for a bad port
    return scheme, parts.hostname.lower().rstrip("."), port, parts.path or "/"


def _admits(entry: str, scheme: str, host: str, port: int | None, path: str) -> bool:
    entry = entry.strip()
    if "://" in entry:
        try:
            e_scheme, e_host, e_port, e_path = _split(entry)
        except ValueError:
            return False
        prefix = e_path if e_path.endswith("/") else e_path + "/"
        return (e_scheme, e_host, e_port) == (scheme, host, port) and (path == e_path or path.startswith(prefix))
    name, _, e_port = entry.lower().rstrip(".").partition(":")
    if e_port and (not e_port.isdigit() or int(e_port) != port):
        return False
    if name.startswith("*."):
        return host.endswith(name[1:])
    return host == name


def check_outbound_url(url: str, allowlist: Sequence[str], *, param: str) -> None:
    """Raise ``OutboundURLError`` (naming ``param`` and the fix) unless an allowlist entry admits ``url``."""
    try:
        scheme, host, port, path = _split(url)
    except ValueError:
        raise OutboundURLError(f"{url!r} is not an http(s) URL with a host.", param=param) from None
    if not allowlist:
        raise OutboundURLError(
            f"This server makes no outbound calls; an operator can allow {host!r} by adding it to the outbound "
            "URL allowlist (ESFT_OUTBOUND_URL_ALLOWLIST).",
            param=param,
        )
    if not any(_admits(entry, scheme, host, port, path) for entry in allowlist):
        raise OutboundURLError(
            f"{scheme}://{host}:{port}{path} is not in this server's outbound URL allowlist; use an allowed URL or "
            "ask an operator to add it (ESFT_OUTBOUND_URL_ALLOWLIST).",
            param=param,
        )
