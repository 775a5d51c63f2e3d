"""The outbound-URL allowlist rule: hosts, host:port, subdomain wildcards and URL prefixes; nothing by default."""

from __future__ import annotations

import pytest

from esft.errors import ESFTError, OutboundURLError
from esft.outbound import check_outbound_url

ALLOW = ["judge.internal", "hooks.example.com:8443", "*.corp.example", "https://api.vendor.com/v1"]


@pytest.mark.parametrize(
    "url",
    [
        "https://judge.internal/v1/chat/completions",
        "http://JUDGE.internal:9000/x",
        "https://hooks.example.com:8443/notify",
        "https://a.corp.example/x",
        "https://api.vendor.com/v1",
        "https://api.vendor.com:443/v1/chat",
    ],
)
def test_admitted(url):
    check_outbound_url(url, ALLOW, param="judge.url")


@pytest.mark.parametrize(
    "url",
    [
        "https://judge.internal.evil.net/",  # lookalike host
        "https://evil-judge.internal/",
        "https://judge.internal@evil.net/",  # userinfo trick: the host is evil.net
        "https://hooks.example.com/notify",  # wrong port
        "https://corp.example/x",  # the wildcard is for subdomains
        "https://api.vendor.com/v10/chat",  # prefix at a path boundary only
        "http://api.vendor.com/v1/chat",  # scheme is part of a prefix
        "file:///etc/passwd",
        "ftp://judge.internal/",
        "judge.internal/v1",
        "https://judge.internal:99999/",
    ],
)
def test_refused_with_param_and_fix(url):
    with pytest.raises(OutboundURLError) as info:
        check_outbound_url(url, ALLOW, param="judge.url")
    assert isinstance(info.value, ESFTError) and info.value.param == "judge.url"
    assert info.value.code == "outbound_url_not_allowed"


def test_empty_allowlist_admits_nothing():
    with pytest.raises(OutboundURLError, match="ESFT_OUTBOUND_URL_ALLOWLIST"):
        check_outbound_url("https://judge.internal/", [], param="webhook.url")
