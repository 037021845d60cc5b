"""The Twilio HTTP client honours the proxy and CA-bundle variables, read once at start."""

from __future__ import annotations

import pytest

from notifiers.sms.twilio import _RoutingHttpClient

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARS, "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def test_the_proxy_and_ca_bundle_of_the_environment_are_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a centre network that reaches Twilio through a proxy, with its own CA bundle
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.centre.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/centre-ca.pem")

    # When the client is made
    client = _RoutingHttpClient(None, 5.0)

    # Then every request goes through that proxy and trusts that bundle
    settings = client.session.merge_environment_settings(
        "https://api.twilio.com/2010-04-01/Accounts", client.proxy, None, None, None
    )
    assert settings["proxies"]["https"] == "http://proxy.centre.example:3128"
    assert settings["verify"] == "/etc/ssl/centre-ca.pem"


def test_the_environment_is_not_read_again_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a client made without a proxy
    client = _RoutingHttpClient("http://127.0.0.1:9", 5.0)

    # When the environment changes afterwards
    monkeypatch.setenv("HTTP_PROXY", "http://elsewhere.example:8080")

    # Then its requests are not affected: it read the environment once (a restart re-reads)
    settings = client.session.merge_environment_settings(
        "http://127.0.0.1:9/2010-04-01/Accounts", client.proxy, None, None, None
    )
    assert not settings["proxies"].get("http")


def test_no_proxy_exempts_the_loopback_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a proxy for everything except the loopback address the fake listens on
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.centre.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    # When / Then the client talks to the fake directly
    client = _RoutingHttpClient("http://127.0.0.1:9", 5.0)
    assert not client.proxy.get("http")
