"""The service's outbound-URL check: the library's rule with the deployment's allowlist (``Settings``)."""

from __future__ import annotations

from api.core.settings import Settings
from esft.outbound import check_outbound_url


def check_url(settings: Settings, url: str, *, param: str) -> None:
    """Raise ``OutboundURLError`` (a 400 naming ``param``) unless ``outbound_url_allowlist`` admits ``url``."""
    check_outbound_url(url, settings.outbound_url_allowlist, param=param)
