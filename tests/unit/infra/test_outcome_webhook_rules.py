"""The rules of outcome webhooks that need no service: which URLs a source may be given, how
its signing key is derived, and what of a status reason may leave as a code."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from infra.settings import Settings, load_settings
from infra.sources import SourceError, check_outcome_url, outcome_key
from workers.outcomes import reason_code, sign

MASTER = "m" * 40


def settings_for(tmp_path: Path, **values: object) -> Settings:
    return load_settings(data_dir=tmp_path, outcome_signing_key=MASTER, **values)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://permits.example.gov.cn/govnotify/outcomes", True),
        ("http://permits.example.gov.cn/outcomes", True),  # development: plain http allowed
        ("http://127.0.0.1:9000/outcomes", True),
        ("ftp://permits.example.gov.cn/outcomes", False),
        ("https:///no-host", False),
        ("permits.example.gov.cn/outcomes", False),
        ("https://user:pw@permits.example.gov.cn/", False),
        ("https://permits.example.gov.cn:99999/", False),
        ("https://permits.example.gov.cn/" + "a" * 500, False),
    ],
)
def test_outcome_urls_in_development(tmp_path: Path, url: str, accepted: bool) -> None:
    # Given development settings
    settings = settings_for(tmp_path)

    # When / Then: http(s) with a host is taken, anything else refused with a reason
    if accepted:
        assert check_outcome_url(settings, url) == url
    else:
        with pytest.raises(SourceError):
            check_outcome_url(settings, url)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://permits.example.gov.cn/outcomes", True),
        ("http://127.0.0.1:9000/outcomes", True),
        ("http://localhost/outcomes", True),
        ("http://permits.example.gov.cn/outcomes", False),
    ],
)
def test_production_takes_plain_http_to_loopback_only(url: str, accepted: bool) -> None:
    # Given production settings (built without the profile's checks: only the field matters)
    settings = Settings.model_construct(environment="production", outcome_signing_key=MASTER)

    # When / Then
    if accepted:
        assert check_outcome_url(settings, url) == url
    else:
        with pytest.raises(SourceError, match="must be https://"):
            check_outcome_url(settings, url)


def test_each_source_has_its_own_derived_key_and_none_without_a_master(tmp_path: Path) -> None:
    # Given a master key, and settings without one
    settings = settings_for(tmp_path)
    none = load_settings(data_dir=tmp_path)

    # When keys are derived
    a, b = outcome_key(settings, "permit-portal"), outcome_key(settings, "case-portal")

    # Then each source's is its own, stable, and not the master; without a master, a refusal
    expected = hmac.new(MASTER.encode(), b"govnotify-outcome-v1\0permit-portal", hashlib.sha256)
    assert a == expected.hexdigest() and a != b and len(a) == 64
    assert MASTER not in a
    with pytest.raises(SourceError, match="GOVNOTIFY_OUTCOME_SIGNING_KEY"):
        outcome_key(none, "permit-portal")


def test_a_short_master_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    # Given / When / Then
    with pytest.raises(Exception) as raised:
        load_settings(data_dir=tmp_path, outcome_signing_key="short-Secret-1")
    assert "short-Secret-1" not in str(raised.value)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (None, None),
        ("invalid_number: The 'To' number +8613800138000 is not valid", "invalid_number"),
        ("license revoked", "license revoked"),
        ("already evaluated", "already evaluated"),
        ("provider timeout: outcome unknown", "provider timeout"),
        ("号码无效", None),
        ("error 30005 from carrier", None),
        ("Unknown destination handset", None),
    ],
)
def test_only_a_plain_code_of_the_reason_is_sent(reason: str | None, code: str | None) -> None:
    # Given / When / Then: lowercase ASCII words before the first colon; never digits or text
    assert reason_code(reason) == code


def test_the_signature_covers_the_timestamp_and_the_body() -> None:
    # Given a body signed at one time
    signed = sign("k" * 64, "1765000000", b'{"status":"delivered"}')

    # Then another time or another body gives another signature
    assert signed.startswith("sha256=") and len(signed) == 7 + 64
    assert sign("k" * 64, "1765000001", b'{"status":"delivered"}') != signed
    assert sign("k" * 64, "1765000000", b'{"status":"cancelled"}') != signed
