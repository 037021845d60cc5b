"""Secrets in the settings never show: not in repr, str, model_dump or a validation error.

Settings objects end up in test failures, tracebacks and log lines; each secret here is one a
real deployment sets (database and AMQP passwords in their URLs, the Twilio token, the gateway
secret, the SMTP password).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from infra.settings import SECRET_FIELDS, Settings, SettingsError, load_settings, redact_url

TOKEN = "0123456789abcdef0123456789abcdef"
GATEWAY_SECRET = "gw-S3cret-Value"
SECRETS = {
    "amqp_url": ("amqp://notify:amqpP4ss@mq.example.gov.cn:5672/govnotify", "amqpP4ss"),
    "database_url": ("postgresql+psycopg://notify:dbP4ss@db.example.gov.cn/govnotify", "dbP4ss"),
    "kafka_url": ("kafka://user:kafkaP4ss@k1:9092;kafka://k2:9092", "kafkaP4ss"),
    "smtp_url": ("smtps://notify:smtpP4ss@mail.example.gov.cn:465", "smtpP4ss"),
    "twilio_auth_token": (TOKEN, TOKEN),
    "gateway_secret": (GATEWAY_SECRET, GATEWAY_SECRET),
    "outcome_signing_key": ("outcome-master-Key-0123456789abcdef", "outcome-master-Key"),
}


def configured(tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path,
        twilio_account_sid="AC" + "0" * 32,
        twilio_from="+15017122661",
        gateway_url="https://sms.example.gov.cn",
        gateway_key_id="key-1",
        gateway_generic_template="SMS_GENERIC",
        **{name: value for name, (value, _) in SECRETS.items()},
    )


def test_every_secret_field_is_listed() -> None:
    # Given / When / Then: the table above and the settings agree on what is secret
    assert set(SECRET_FIELDS) == set(SECRETS)


@pytest.mark.parametrize(
    "show",
    [
        repr,
        str,
        lambda s: repr(s.model_dump()),
        lambda s: str(s.model_dump()),
        lambda s: s.model_dump_json(),
        lambda s: json.dumps(s.model_dump(mode="json")),
        lambda s: f"{s}",
        lambda s: f"{s!r}",
    ],
    ids=["repr", "str", "dump-repr", "dump-str", "dump-json", "dump-json-mode", "f", "f-repr"],
)
def test_no_display_of_the_settings_shows_a_secret(tmp_path: Path, show: Any) -> None:
    # Given settings with every secret set
    settings = configured(tmp_path)

    # When they are displayed
    text = show(settings)

    # Then no secret is in it
    for name, (_, secret) in SECRETS.items():
        assert secret not in text, name


def test_urls_are_shown_with_the_password_starred_and_secrets_not_at_all(
    tmp_path: Path,
) -> None:
    # Given / When
    settings = configured(tmp_path)
    shown = repr(settings)
    dumped = settings.model_dump(mode="json")

    # Then the URLs are still recognisable, their passwords not
    assert "amqp_url='amqp://notify:***@mq.example.gov.cn:5672/govnotify'" in shown
    assert dumped["database_url"] == "postgresql+psycopg://notify:***@db.example.gov.cn/govnotify"
    assert dumped["kafka_url"] == "kafka://user:***@k1:9092;kafka://k2:9092"
    assert dumped["twilio_auth_token"] == "**********"
    assert "twilio_auth_token" not in shown and "gateway_secret" not in shown


def test_callers_read_the_values_as_before_and_children_get_them(tmp_path: Path) -> None:
    # Given settings with every secret set
    settings = configured(tmp_path)

    # When / Then the attributes are the plain values (pika, psycopg, Twilio take them as is)
    for name, (value, _) in SECRETS.items():
        assert getattr(settings, name) == value
        assert type(getattr(settings, name)) is str
    # … model_dump gives SecretStr, whose value is explicit
    dumped = settings.model_dump()
    assert isinstance(dumped["amqp_url"], SecretStr)
    assert dumped["amqp_url"].get_secret_value() == SECRETS["amqp_url"][0]
    # … a child process gets the real values, and settings rebuilt from a dump are equal
    env = settings.env()
    assert env["GOVNOTIFY_TWILIO_AUTH_TOKEN"] == TOKEN
    assert env["GOVNOTIFY_DATABASE_URL"] == SECRETS["database_url"][0]
    assert Settings(**dumped) == settings
    assert settings.model_copy(update={"namespace": "other"}).amqp_url == settings.amqp_url


def test_unset_secrets_stay_empty_and_out_of_the_childs_environment(tmp_path: Path) -> None:
    # Given default settings (no Twilio, no gateway, no SMTP)
    settings = load_settings(data_dir=tmp_path)

    # When / Then
    assert settings.model_dump()["twilio_auth_token"] == ""
    assert "GOVNOTIFY_SMTP_URL" not in settings.env()


@pytest.mark.parametrize(
    ("field", "value", "secret"),
    [
        ("amqp_url", "http://notify:leakP4ss@mq", "leakP4ss"),
        ("database_url", "mysql://notify:leakP4ss@db/x", "leakP4ss"),
        ("smtp_url", "smtp://notify:leakP4ss@mail/path", "leakP4ss"),
        ("twilio_auth_token", "not-a-token-leakP4ss", "leakP4ss"),
    ],
)
def test_a_rejected_value_is_not_quoted_in_the_error(field: str, value: str, secret: str) -> None:
    # Given / When a bad secret is set, through load_settings and through the class itself
    with pytest.raises(SettingsError) as loaded:
        load_settings(**{field: value})
    with pytest.raises(ValidationError) as built:
        Settings(**{field: value})

    # Then neither error quotes it
    assert secret not in str(loaded.value)
    assert secret not in str(built.value) and secret not in repr(built.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqp://127.0.0.1:5672/", "amqp://127.0.0.1:5672/"),
        ("postgresql+psycopg://u:p%40ss@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("kafka://a:b@h1:1,kafka://h2:2", "kafka://a:***@h1:1,kafka://h2:2"),
        ("smtp://u:p@[::1:25", "**********"),  # unparseable: hidden whole
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    # Given / When / Then
    assert redact_url(url) == shown


# ---- settings added for issue 11 ------------------------------------------------------------
def test_trusted_ingest_settings_defaults(tmp_path: Path) -> None:
    # Given / When
    settings = load_settings(data_dir=tmp_path)

    # Then
    assert settings.max_clock_skew_s == 300
    assert settings.sources_cache_s == 2.0
    assert settings.api_max_connections == 1000
    assert settings.api_idle_timeout_s == 15
    assert settings.api_max_body_bytes == 1024 * 1024
    assert settings.retention_purge_at.isoformat() == "02:30:00"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GOVNOTIFY_MAX_CLOCK_SKEW_S", "-1"),
        ("GOVNOTIFY_SOURCES_CACHE_S", "-0.5"),
        ("GOVNOTIFY_API_MAX_CONNECTIONS", "0"),
        ("GOVNOTIFY_API_IDLE_TIMEOUT_S", "0"),
        ("GOVNOTIFY_API_MAX_BODY_BYTES", "10"),
        ("GOVNOTIFY_RETENTION_PURGE_AT", "25:00"),
    ],
)
def test_trusted_ingest_settings_are_checked_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # Given a bad value in the environment
    monkeypatch.setenv(variable, value)

    # When / Then the error names the variable
    with pytest.raises(SettingsError, match=variable):
        load_settings()
