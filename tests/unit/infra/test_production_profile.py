"""``GOVNOTIFY_ENV=production`` refuses every development fall-back, all of them at once.

Each fall-back (sandbox SMS or e-mail, SQLite, the embedded Kafka, the bundled staff directory,
a relative data folder, a loopback metrics host, RabbitMQ's guest user) gives one line naming
the variable to set; the real CLI exits 2 with them. In development the sandboxes are named in
one warning line instead.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings, SettingsError, load_settings, warn_sandboxes
from tests.support import clean_env, run_cli

SMS = "GOVNOTIFY_TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _FROM or GOVNOTIFY_GATEWAY_URL, _KEY_ID, _SECRET"
AMQP_PASSWORD = "amqpP4ss-not-shown"


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test gives counts: a GOVNOTIFY_* variable of the shell running the tests
    (a CI's database URL) would hide a fall-back."""
    for name in [n for n in os.environ if n.startswith("GOVNOTIFY_")]:
        monkeypatch.delenv(name)


def _staff_directory(folder: Path, *, sandbox: bool = False, email: bool = False) -> Path:
    """The bundled sample with its sandbox:// robots on https (or left as they are), and
    optionally one head reached by e-mail."""
    raw = json.loads(
        resources.files("schemas").joinpath("data/staff_directory.json").read_text("utf-8")
    )
    for key, hook in raw["webhooks"].items():
        if not sandbox:
            hook["url"] = f"https://robots.changan.gov.cn/{key}"
    if email:
        raw["webhooks"]["market-head-mail"] = {
            "url": "mailto:market-head@changan.gov.cn",
            "format": "email",
        }
    path = folder / f"staff-{sandbox}-{email}.json"
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    return path


def _ready(folder: Path) -> dict[str, Any]:
    """Settings a production start accepts."""
    return {
        "environment": "production",
        "data_dir": folder / "data",
        "amqp_url": f"amqps://govnotify:{AMQP_PASSWORD}@mq.changan.gov.cn:5671/govnotify",
        "kafka_url": "kafka://k1.changan.gov.cn:9092;kafka://k2.changan.gov.cn:9092",
        "kafka_broker_kind": "kafka",
        "database_url": "postgresql+psycopg://govnotify:dbP4ss@db.changan.gov.cn/govnotify",
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "0123456789abcdef0123456789abcdef",
        "twilio_from": "+15017122661",
        "staff_directory": _staff_directory(folder),
        "metrics_host": "10.20.0.5",
    }


def _ready_env(folder: Path) -> dict[str, str]:
    """:func:`_ready` as the environment of a child process."""
    return Settings(**_ready(folder)).env()


def _gateway_instead_of_twilio(folder: Path) -> dict[str, Any]:
    return {
        "twilio_account_sid": "",
        "twilio_auth_token": "",
        "twilio_from": "",
        "gateway_url": "https://sms.changan.gov.cn",
        "gateway_key_id": "key-1",
        "gateway_secret": "gw-secret",
        "gateway_generic_template": "SMS_GENERIC",
    }


def test_a_production_ready_configuration_starts_with_no_fall_back(tmp_path: Path) -> None:
    # Given every production setting
    # When they are loaded
    settings = load_settings(**_ready(tmp_path))

    # Then nothing falls back and nothing is warned of
    assert settings.environment == "production"
    assert settings.fallbacks() == []
    assert warn_sandboxes(settings) is None


#: (case, overrides given the production-ready settings and the test's folder, the one variable
#: its line names, a word its line must carry).
REFUSED = [
    (
        "no SMS provider",
        lambda d: {"twilio_account_sid": "", "twilio_auth_token": "", "twilio_from": ""},
        SMS,
        "sandbox outbox",
    ),
    (
        "a route to the sandbox",
        lambda d: {"sms_routes": {"default": ["twilio"], "green_channel": ["sandbox"]}},
        "GOVNOTIFY_SMS_ROUTES",
        "'green_channel'",
    ),
    ("no database URL", lambda d: {"database_url": ""}, "GOVNOTIFY_DATABASE_URL", "SQLite"),
    (
        "a SQLite URL",
        lambda d: {"database_url": f"sqlite:///{d}/govnotify.db"},
        "GOVNOTIFY_DATABASE_URL",
        "SQLite",
    ),
    ("the embedded Kafka", lambda d: {"kafka_url": ""}, "GOVNOTIFY_KAFKA_URL", "Tansu"),
    (
        "the bundled staff directory",
        lambda d: {"staff_directory": None},
        "GOVNOTIFY_STAFF_DIRECTORY",
        "bundled sample",
    ),
    (
        "sandbox robots in the staff directory",
        lambda d: {"staff_directory": _staff_directory(d, sandbox=True)},
        "GOVNOTIFY_STAFF_DIRECTORY",
        "sandbox://",
    ),
    (
        "e-mail without a mail server",
        lambda d: {"staff_directory": _staff_directory(d, email=True)},
        "GOVNOTIFY_SMTP_URL",
        "market-head-mail",
    ),
    (
        "a relative data folder",
        lambda d: {"data_dir": Path(".govnotify")},
        "GOVNOTIFY_DATA_DIR",
        "absolute path",
    ),
    (
        "metrics on 127.0.0.1",
        lambda d: {"metrics_host": "127.0.0.1"},
        "GOVNOTIFY_METRICS_HOST",
        "loopback",
    ),
    (
        "metrics on localhost",
        lambda d: {"metrics_host": "localhost"},
        "GOVNOTIFY_METRICS_HOST",
        "loopback",
    ),
    ("metrics on ::1", lambda d: {"metrics_host": "::1"}, "GOVNOTIFY_METRICS_HOST", "loopback"),
    (
        "RabbitMQ's guest user",
        lambda d: {"amqp_url": f"amqps://guest:{AMQP_PASSWORD}@mq.changan.gov.cn:5671/"},
        "GOVNOTIFY_AMQP_URL",
        "guest",
    ),
    (
        "no RabbitMQ user (pika's guest)",
        lambda d: {"amqp_url": "amqps://mq.changan.gov.cn:5671/"},
        "GOVNOTIFY_AMQP_URL",
        "guest",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "variable", "word"),
    [pytest.param(o, v, w, id=case) for case, o, v, w in REFUSED],
)
def test_production_refuses_each_fall_back_with_one_line_naming_the_variable(
    tmp_path: Path, overrides: Any, variable: str, word: str
) -> None:
    # Given production-ready settings but for one fall-back
    given = {**_ready(tmp_path), **overrides(tmp_path)}

    # When they are loaded
    with pytest.raises(SettingsError) as refused:
        load_settings(**given)

    # Then one line names the variable to set, and no secret is echoed
    message = str(refused.value)
    header, *lines = message.splitlines()
    assert header.startswith("GOVNOTIFY_ENV=production refuses to start with 1 development")
    assert len(lines) == 1
    assert lines[0].startswith(f"  {variable}: ")
    assert word in lines[0]
    assert AMQP_PASSWORD not in message


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(_gateway_instead_of_twilio, id="the gateway instead of Twilio"),
        pytest.param(
            lambda d: {
                "staff_directory": _staff_directory(d, email=True),
                "smtp_url": "smtps://govnotify:mailP4ss@mail.changan.gov.cn:465",
            },
            id="e-mail with a mail server",
        ),
        pytest.param(lambda d: {"metrics_host": "0.0.0.0"}, id="metrics on every address"),
        pytest.param(
            lambda d: {"sms_routes": {"default": ["twilio"]}}, id="a route to configured providers"
        ),
    ],
)
def test_production_accepts_the_real_alternatives(tmp_path: Path, overrides: Any) -> None:
    # Given production-ready settings with another real choice
    given = {**_ready(tmp_path), **overrides(tmp_path)}

    # When they are loaded
    settings = load_settings(**given)

    # Then nothing is refused
    assert settings.fallbacks() == []


def test_production_names_every_fall_back_at_once(tmp_path: Path) -> None:
    # Given no settings but the production profile (and a folder to run in)
    # When they are loaded
    with pytest.raises(SettingsError) as refused:
        load_settings(environment="production")

    # Then all seven fall-backs come in one message, one line each
    header, *lines = str(refused.value).splitlines()
    assert header.startswith("GOVNOTIFY_ENV=production refuses to start with 7 development")
    assert [line.split(": ", 1)[0].strip() for line in lines] == [
        SMS,
        "GOVNOTIFY_DATABASE_URL",
        "GOVNOTIFY_KAFKA_URL",
        "GOVNOTIFY_STAFF_DIRECTORY",
        "GOVNOTIFY_DATA_DIR",
        "GOVNOTIFY_METRICS_HOST",
        "GOVNOTIFY_AMQP_URL",
    ]


def test_every_command_refuses_a_production_start_with_exit_2(tmp_path: Path) -> None:
    # Given GOVNOTIFY_ENV=production and nothing else configured
    env = clean_env(GOVNOTIFY_ENV="production", GOVNOTIFY_DATA_DIR=str(tmp_path))

    # When a command that needs no service runs
    result = run_cli("workdays", "--json", env=env)

    # Then it exits 2, naming every variable still to set, without a traceback or a report
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("govnotify: GOVNOTIFY_ENV=production refuses to start with 6")
    for variable in (SMS, "GOVNOTIFY_DATABASE_URL", "GOVNOTIFY_KAFKA_URL", "GOVNOTIFY_AMQP_URL"):
        assert f"\n  {variable}: " in result.stderr
    assert "GOVNOTIFY_DATA_DIR" not in result.stderr  # given, absolute
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("environment", "returncode", "stderr_start"),
    [
        ("production", 0, ""),
        ("staging", 2, "govnotify: invalid setting GOVNOTIFY_ENV: Input should be"),
    ],
)
def test_a_production_ready_environment_runs_and_an_unknown_profile_is_refused(
    tmp_path: Path, environment: str, returncode: int, stderr_start: str
) -> None:
    # Given the production-ready settings as a child's environment, with this profile
    env = clean_env(**{**_ready_env(tmp_path), "GOVNOTIFY_ENV": environment})

    # When a command that needs no service runs
    result = run_cli("workdays", "--json", env=env)

    # Then a production start runs; an unknown profile is a bad setting
    assert result.returncode == returncode, result.stderr
    assert result.stderr.startswith(stderr_start)
    if returncode == 0:
        assert json.loads(result.stdout)["package"]["name"] == "chinesecalendar"


def test_the_profile_reaches_child_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given production settings handed on as environment variables
    env = Settings(**_ready(tmp_path)).env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    # When a child reads them
    child = load_settings()

    # Then it runs the production profile too (GOVNOTIFY_ENV, not GOVNOTIFY_ENVIRONMENT)
    assert env["GOVNOTIFY_ENV"] == "production"
    assert "GOVNOTIFY_ENVIRONMENT" not in env
    assert child.environment == "production"


def test_development_warns_once_naming_each_sandbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given development with nothing configured
    settings = load_settings(data_dir=tmp_path)

    # When a component starts
    with caplog.at_level(logging.WARNING, logger="govnotify.settings"):
        line = warn_sandboxes(settings)

    # Then one warning line names each sandbox and its variable, not what is merely unfit
    assert [r.getMessage() for r in caplog.records] == [line]
    assert line is not None and "\n" not in line
    for words in (
        f"SMS go to the sandbox outbox (set {SMS})",
        "the database is SQLite (set GOVNOTIFY_DATABASE_URL)",
        "Kafka is the embedded Tansu (set GOVNOTIFY_KAFKA_URL)",
        "bundled sample's sandbox robots (set GOVNOTIFY_STAFF_DIRECTORY)",
    ):
        assert words in line
    assert "GOVNOTIFY_METRICS_HOST" not in line


def test_development_with_real_services_warns_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given development with every real service configured
    settings = load_settings(**{**_ready(tmp_path), "environment": "development"})

    # When a component starts
    with caplog.at_level(logging.WARNING, logger="govnotify.settings"):
        line = warn_sandboxes(settings)

    # Then nothing is logged
    assert line is None
    assert caplog.records == []
