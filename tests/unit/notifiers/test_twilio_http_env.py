"""The Twilio HTTP client honours the proxy and CA-bundle variables, read once at start."""

from __future__ import annotations

import certifi
import pytest
import urllib3

from notifiers.sms.twilio import _RoutingHttpClient

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
API = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"


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
    manager = client.manager_for(API)
    assert isinstance(manager, urllib3.ProxyManager)
    assert manager.proxy is not None and manager.proxy.host == "proxy.centre.example"
    assert manager.proxy.port == 3128
    assert client.ca_bundle == "/etc/ssl/centre-ca.pem"
    assert manager.connection_pool_kw["ca_certs"] == "/etc/ssl/centre-ca.pem"


def test_without_variables_twilio_is_reached_directly_trusting_certifi() -> None:
    client = _RoutingHttpClient(None, 5.0)
    manager = client.manager_for(API)
    assert not isinstance(manager, urllib3.ProxyManager)
    assert manager.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
    assert manager.connection_pool_kw["ca_certs"] == certifi.where()


def test_the_environment_is_not_read_again_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a client made without a proxy
    client = _RoutingHttpClient("http://127.0.0.1:9", 5.0)

    # When the environment changes afterwards
    monkeypatch.setenv("HTTP_PROXY", "http://elsewhere.example:8080")

    # Then its requests are not affected: it read the environment once (a restart re-reads)
    assert not isinstance(client.manager_for("http://127.0.0.1:9/x"), urllib3.ProxyManager)


def test_no_proxy_exempts_the_loopback_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a proxy for everything except the loopback address the fake listens on
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.centre.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    # When / Then the client talks to the fake directly
    client = _RoutingHttpClient("http://127.0.0.1:9", 5.0)
    assert not client.proxy.get("http")
    assert not isinstance(client.manager_for("http://127.0.0.1:9/x"), urllib3.ProxyManager)
