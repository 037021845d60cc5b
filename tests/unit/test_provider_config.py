"""Provider configuration is checked at start: every shape rule of the GOVNOTIFY_* provider
settings, good and bad values, and a refusal that names the variable (never a secret's value).

The notifiers check the same shapes in their ``__init__``; the tables are run against both, so
the two layers cannot drift apart.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from infra.settings import SettingsError, load_settings
from notifiers import registry
from notifiers.base import Notifier
from notifiers.errors import NotifierConfigError
from notifiers.sms.gateway import HttpGatewayNotifier
from notifiers.sms.twilio import TwilioSMSNotifier
from notifiers.staff.email import EmailNotifier

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "f00dfeed" * 4
SECRET = "gw-secret-for-shape-tests"
PASSWORD = "pw-shape-test-1a2b3c"
TWILIO = {
    "GOVNOTIFY_TWILIO_ACCOUNT_SID": SID,
    "GOVNOTIFY_TWILIO_AUTH_TOKEN": TOKEN,
    "GOVNOTIFY_TWILIO_FROM": "+8613800138000",
}
GATEWAY = {
    "GOVNOTIFY_GATEWAY_URL": "https://sms.example.cn",
    "GOVNOTIFY_GATEWAY_KEY_ID": "LTAI5tKeyId",
    "GOVNOTIFY_GATEWAY_SECRET": SECRET,
    "GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE": "SMS_000001",
}
#: Values that must never appear in a refusal, whatever was wrong.
NEVER_SHOWN = (TOKEN, SECRET, PASSWORD)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GOVNOTIFY_* variable of the machine leaks in; nothing is written outside tmp_path."""
    for name in list(os.environ):
        if name.startswith("GOVNOTIFY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GOVNOTIFY_DATA_DIR", str(tmp_path / "data"))


def _load(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str | None:
    """Load settings from ``env``; the refusal's message, or None when they were accepted."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        load_settings()
    except SettingsError as exc:
        return str(exc)
    return None


# ---- Twilio ------------------------------------------------------------------------------------
#: (account sid, auth token, from, the variable refused or None). Shapes: Twilio's API reference
#: (Account SID ^AC[0-9a-fA-F]{32}$), the console's 32-hex-digit Auth Token, and a sender that
#: is an E.164 number or a Messaging Service SID (MG + 32 hex).
TWILIO_SHAPES = [
    (SID, TOKEN, "+8613800138000", None),
    ("AC" + "ABCDEF0123456789" * 2, TOKEN.upper(), "+15017122661", None),
    (SID, TOKEN, "MG" + "0123456789abcdef" * 2, None),
    (SID, TOKEN, "+1234567", None),  # 7 digits: the shortest E.164
    (SID, TOKEN, "+123456789012345", None),  # 15 digits: the longest
    ("AC123", TOKEN, "+8613800138000", "GOVNOTIFY_TWILIO_ACCOUNT_SID"),
    ("AC" + "g" * 32, TOKEN, "+8613800138000", "GOVNOTIFY_TWILIO_ACCOUNT_SID"),
    ("SK" + "0" * 32, TOKEN, "+8613800138000", "GOVNOTIFY_TWILIO_ACCOUNT_SID"),  # an API key
    ("ac" + "0" * 32, TOKEN, "+8613800138000", "GOVNOTIFY_TWILIO_ACCOUNT_SID"),
    (SID + " ", TOKEN, "+8613800138000", "GOVNOTIFY_TWILIO_ACCOUNT_SID"),
    (SID, TOKEN[:-1], "+8613800138000", "GOVNOTIFY_TWILIO_AUTH_TOKEN"),
    (SID, TOKEN + "0", "+8613800138000", "GOVNOTIFY_TWILIO_AUTH_TOKEN"),
    (SID, "z" * 32, "+8613800138000", "GOVNOTIFY_TWILIO_AUTH_TOKEN"),
    (SID, TOKEN + "\n", "+8613800138000", "GOVNOTIFY_TWILIO_AUTH_TOKEN"),
    (SID, TOKEN, "8613800138000", "GOVNOTIFY_TWILIO_FROM"),  # no "+"
    (SID, TOKEN, "+86 138 0013 8000", "GOVNOTIFY_TWILIO_FROM"),
    (SID, TOKEN, "+123456", "GOVNOTIFY_TWILIO_FROM"),  # 6 digits
    (SID, TOKEN, "+1234567890123456", "GOVNOTIFY_TWILIO_FROM"),  # 16 digits
    (SID, TOKEN, "+0861380013800", "GOVNOTIFY_TWILIO_FROM"),
    (SID, TOKEN, "Govnotify", "GOVNOTIFY_TWILIO_FROM"),  # alphanumeric sender id
    (SID, TOKEN, "MG123", "GOVNOTIFY_TWILIO_FROM"),
]


@pytest.mark.parametrize(("sid", "token", "sender", "refused"), TWILIO_SHAPES)
def test_twilio_credentials_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, sid: str, token: str, sender: str, refused: str | None
) -> None:
    # Given the three Twilio variables
    env = {
        "GOVNOTIFY_TWILIO_ACCOUNT_SID": sid,
        "GOVNOTIFY_TWILIO_AUTH_TOKEN": token,
        "GOVNOTIFY_TWILIO_FROM": sender,
    }

    # When the settings are loaded
    message = _load(monkeypatch, env)

    # Then a bad shape is refused naming its variable alone, and the token is never shown
    if refused is None:
        assert message is None
        return
    assert message is not None
    assert refused in message
    assert [v for v in TWILIO if v in message] == [refused]
    assert not any(secret in message for secret in NEVER_SHOWN)


@pytest.mark.parametrize(("sid", "token", "sender", "refused"), TWILIO_SHAPES)
def test_the_twilio_notifier_checks_the_same_shapes(
    sid: str, token: str, sender: str, refused: str | None
) -> None:
    # When the notifier is built from the same values
    try:
        TwilioSMSNotifier(sid, token, sender).close()
    except NotifierConfigError as exc:
        problem: str | None = str(exc)
    else:
        problem = None

    # Then it refuses exactly what the settings refuse, without echoing the token
    assert (problem is None) == (refused is None), problem
    if problem is not None:
        assert TOKEN not in problem


# ---- the HTTP gateway --------------------------------------------------------------------------
#: (variable, value, refused). Plain http only to loopback: every request carries our key id
#: and a signature, every message a citizen's number.
GATEWAY_SHAPES = [
    ("GOVNOTIFY_GATEWAY_URL", "https://sms.example.cn", False),
    ("GOVNOTIFY_GATEWAY_URL", "https://sms.example.cn:8443/v1/", False),
    ("GOVNOTIFY_GATEWAY_URL", "http://127.0.0.1:8080", False),
    ("GOVNOTIFY_GATEWAY_URL", "http://localhost:8080", False),
    ("GOVNOTIFY_GATEWAY_URL", "http://[::1]:8080", False),
    ("GOVNOTIFY_GATEWAY_URL", "http://sms.example.cn", True),
    ("GOVNOTIFY_GATEWAY_URL", "http://10.0.0.8:8080", True),
    ("GOVNOTIFY_GATEWAY_URL", "ftp://sms.example.cn", True),
    ("GOVNOTIFY_GATEWAY_URL", "sms.example.cn", True),
    ("GOVNOTIFY_GATEWAY_URL", "https://", True),
    ("GOVNOTIFY_GATEWAY_URL", "https://sms.example.cn:99999", True),
    ("GOVNOTIFY_GATEWAY_URL", "https://[::1", True),
    ("GOVNOTIFY_GATEWAY_KEY_ID", "LTAI5t-key_01", False),
    ("GOVNOTIFY_GATEWAY_KEY_ID", "   ", True),
    ("GOVNOTIFY_GATEWAY_KEY_ID", "key id", True),
    ("GOVNOTIFY_GATEWAY_KEY_ID", "LTAI5tKeyId\n", True),
    ("GOVNOTIFY_GATEWAY_SECRET", SECRET + " ", True),
    ("GOVNOTIFY_GATEWAY_SECRET", "\t", True),
    ("GOVNOTIFY_GATEWAY_SIGN_NAME", "长安政务", False),
    ("GOVNOTIFY_GATEWAY_SIGN_NAME", "【长安政务】", True),
    ("GOVNOTIFY_GATEWAY_SIGN_NAME", "长" * 13, True),
    ("GOVNOTIFY_GATEWAY_SIGN_NAME", " ", True),
]


@pytest.mark.parametrize(("variable", "value", "refused"), GATEWAY_SHAPES)
def test_gateway_settings_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, refused: bool
) -> None:
    # Given an otherwise complete gateway configuration
    env = {**GATEWAY, variable: value}

    # When the settings are loaded
    message = _load(monkeypatch, env)

    # Then a bad value is refused naming its variable, never the secret
    if not refused:
        assert message is None
        return
    assert message is not None
    assert f"invalid setting {variable}:" in message
    assert not any(secret in message for secret in NEVER_SHOWN)


@pytest.mark.parametrize(("variable", "value", "refused"), GATEWAY_SHAPES)
def test_the_gateway_notifier_checks_the_same_shapes(
    variable: str, value: str, refused: bool
) -> None:
    # Given the notifier's arguments from the same values
    args = {
        "url": GATEWAY["GOVNOTIFY_GATEWAY_URL"],
        "key_id": GATEWAY["GOVNOTIFY_GATEWAY_KEY_ID"],
        "secret": SECRET,
        "generic_template": "SMS_000001",
    }
    parameter = variable.removeprefix("GOVNOTIFY_GATEWAY_").lower()
    args[parameter] = value

    # When it is built
    try:
        HttpGatewayNotifier(**args).close()
    except NotifierConfigError as exc:
        problem: str | None = str(exc)
    else:
        problem = None

    # Then it refuses exactly what the settings refuse, naming the parameter
    assert (problem is not None) == refused, problem
    if problem is not None:
        assert parameter in problem
        assert SECRET not in problem


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # all three, or none (as Twilio's)
        (
            {"GOVNOTIFY_GATEWAY_URL": "https://sms.example.cn"},
            ["GOVNOTIFY_GATEWAY_KEY_ID", "GOVNOTIFY_GATEWAY_SECRET"],
        ),
        ({"GOVNOTIFY_GATEWAY_KEY_ID": "k", "GOVNOTIFY_GATEWAY_SECRET": "s"}, ["GATEWAY_URL"]),
        # a gateway with no template could send nothing
        (
            {**GATEWAY, "GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE": ""},
            ["GOVNOTIFY_GATEWAY_TEMPLATES", "GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE"],
        ),
        (
            {**GATEWAY, "GOVNOTIFY_GATEWAY_TEMPLATES": '{"renewal_reminder": ""}'},
            ["GOVNOTIFY_GATEWAY_TEMPLATES", "renewal_reminder"],
        ),
        (
            {**GATEWAY, "GOVNOTIFY_GATEWAY_TEMPLATES": '{"renewal_reminder": "SMS 01"}'},
            ["GOVNOTIFY_GATEWAY_TEMPLATES", "renewal_reminder"],
        ),
        (
            {**GATEWAY, "GOVNOTIFY_GATEWAY_TEMPLATES": '{"": "SMS_01"}'},
            ["GOVNOTIFY_GATEWAY_TEMPLATES"],
        ),
        (
            {**GATEWAY, "GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE": "SMS 000001"},
            ["GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE"],
        ),
        (
            {**GATEWAY, "GOVNOTIFY_GATEWAY_TEMPLATES": '{"renewal_reminder": "SMS_01"}'},
            [],
        ),
        (
            {
                **GATEWAY,
                "GOVNOTIFY_GATEWAY_TEMPLATES": '{"renewal_reminder": "SMS_01"}',
                "GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE": "",
            },
            [],
        ),
    ],
)
def test_gateway_completeness_and_templates(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: list[str]
) -> None:
    # When the settings are loaded
    message = _load(monkeypatch, env)

    # Then an incomplete gateway is refused naming what to set
    if not named:
        assert message is None
        return
    assert message is not None
    for name in named:
        assert name in message
    assert SECRET not in message


# ---- routes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"GOVNOTIFY_SMS_ROUTES": '{"default": ["twilio"]}'}, True),
        ({"GOVNOTIFY_SMS_ROUTES": '{"green_channel": ["gateway"]}'}, True),
        ({**TWILIO, "GOVNOTIFY_SMS_ROUTES": '{"default": ["twilio", "gateway"]}'}, True),
        ({**GATEWAY, "GOVNOTIFY_SMS_ROUTES": '{"default": ["gateway", "twilio"]}'}, True),
        ({**TWILIO, "GOVNOTIFY_SMS_ROUTES": '{"default": ["twillio"]}'}, True),
        ({**TWILIO, "GOVNOTIFY_SMS_ROUTES": '{"default": []}'}, True),
        ({**TWILIO, "GOVNOTIFY_SMS_ROUTES": '{"default": ["twilio", "twilio"]}'}, True),
        ({"GOVNOTIFY_SMS_ROUTES": '{"default": ["sandbox"]}'}, False),
        ({**TWILIO, "GOVNOTIFY_SMS_ROUTES": '{"default": ["twilio", "sandbox"]}'}, False),
        (
            {
                **TWILIO,
                **GATEWAY,
                "GOVNOTIFY_SMS_ROUTES": '{"default": ["twilio"], "green_channel": ["gateway"]}',
            },
            False,
        ),
    ],
)
def test_a_route_may_name_only_configured_providers(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], refused: bool
) -> None:
    # When the settings are loaded
    message = _load(monkeypatch, env)

    # Then a route naming an unknown or unconfigured provider is refused, naming the routes
    if not refused:
        assert message is None
        return
    assert message is not None
    assert message.startswith("invalid setting GOVNOTIFY_SMS_ROUTES:")


def test_a_malformed_provider_is_not_also_reported_as_unconfigured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a route to Twilio, whose account sid is malformed
    env = {
        **TWILIO,
        "GOVNOTIFY_TWILIO_ACCOUNT_SID": "AC123",
        "GOVNOTIFY_SMS_ROUTES": '{"default": ["twilio"]}',
    }

    # When the settings are loaded
    message = _load(monkeypatch, env)

    # Then only the sid is named: fixing it fixes the route too
    assert message is not None
    assert "GOVNOTIFY_TWILIO_ACCOUNT_SID" in message
    assert "GOVNOTIFY_SMS_ROUTES" not in message


# ---- e-mail ------------------------------------------------------------------------------------
#: (GOVNOTIFY_SMTP_URL, refused). EmailNotifier's rules: smtp or smtps, a host, a port from 1
#: to 65535, no path/query/fragment, user and password together.
SMTP_URLS = [
    (f"smtps://govnotify:{PASSWORD}@mail.changan.gov.cn:465", False),
    ("smtp://mail.changan.gov.cn", False),
    (f"smtp://govnotify%40changan.gov.cn:{PASSWORD}@mail.changan.gov.cn:587", False),
    ("smtp://127.0.0.1:2525", False),
    ("http://mail.changan.gov.cn", True),
    ("mail.changan.gov.cn:587", True),
    ("smtp://", True),
    ("smtp://mail.changan.gov.cn:99999", True),
    ("smtp://mail.changan.gov.cn:0", True),
    ("smtp://mail.changan.gov.cn:port", True),
    ("smtp://govnotify@mail.changan.gov.cn", True),  # a user without a password
    (f"smtp://govnotify:{PASSWORD}@mail.changan.gov.cn/inbox", True),
    (f"smtp://govnotify:{PASSWORD}@mail.changan.gov.cn?starttls=off", True),
]


@pytest.mark.parametrize(("url", "refused"), SMTP_URLS)
def test_smtp_url_is_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, url: str, refused: bool
) -> None:
    # When the settings are loaded
    message = _load(monkeypatch, {"GOVNOTIFY_SMTP_URL": url})

    # Then a bad URL is refused naming the variable, never the password
    if not refused:
        assert message is None
        return
    assert message is not None
    assert message.startswith("invalid setting GOVNOTIFY_SMTP_URL:")
    assert PASSWORD not in message


@pytest.mark.parametrize(("url", "refused"), SMTP_URLS)
def test_the_email_notifier_checks_the_same_url_rules(url: str, refused: bool) -> None:
    # When the notifier is built from the same URL
    try:
        EmailNotifier(url, "govnotify@changan.gov.cn", to="head@changan.gov.cn")
    except NotifierConfigError as exc:
        problem: str | None = str(exc)
    else:
        problem = None

    # Then it refuses exactly what the settings refuse
    assert (problem is not None) == refused, problem


@pytest.mark.parametrize(
    ("sender", "refused"),
    [
        ("govnotify@changan.gov.cn", False),
        ("长安政务 <govnotify@changan.gov.cn>", False),
        ("govnotify@localhost", False),
        ("govnotify", True),
        ("", True),
        ("a@changan.gov.cn, b@changan.gov.cn", True),
        ("govnotify@changan.gov.cn\nBcc: x@y.cn", True),
        ("govnotify@-bad-.cn", True),
    ],
)
def test_smtp_from_must_be_one_address(
    monkeypatch: pytest.MonkeyPatch, sender: str, refused: bool
) -> None:
    # When the settings are loaded
    message = _load(monkeypatch, {"GOVNOTIFY_SMTP_FROM": sender})

    # Then anything but one address is refused, naming the variable
    if not refused:
        assert message is None
        return
    assert message is not None
    assert message.startswith("invalid setting GOVNOTIFY_SMTP_FROM:")


# ---- the staff directory -------------------------------------------------------------------------
@pytest.fixture
def bundled_copy(tmp_path: Path) -> Iterator[Path]:
    """A copy of the bundled staff directory, to spoil."""
    path = tmp_path / "staff.json"
    with resources.as_file(resources.files("schemas") / "data" / "staff_directory.json") as src:
        shutil.copyfile(src, path)
    yield path


@pytest.mark.parametrize(
    ("spoil", "refused", "says"),
    [
        ("nothing", False, ""),
        ("empty variable", False, ""),  # the bundled sample, as documented
        ("missing file", True, "cannot read"),
        ("a folder", True, "cannot read"),
        ("not JSON", True, "not JSON"),
        ("no service points", True, "service_points"),
        ("a bad mobile", True, "service_points[0].on_duty[0].mobile"),
        ("an unknown webhook", True, "webhook"),
    ],
)
def test_staff_directory_is_validated_at_start(
    monkeypatch: pytest.MonkeyPatch, bundled_copy: Path, spoil: str, refused: bool, says: str
) -> None:
    # Given a staff directory, spoiled one way
    document = json.loads(bundled_copy.read_text(encoding="utf-8"))
    value = str(bundled_copy)
    if spoil == "empty variable":
        value = ""
    elif spoil == "missing file":
        value = str(bundled_copy.with_name("nowhere.json"))
    elif spoil == "a folder":
        value = str(bundled_copy.parent)
    elif spoil == "not JSON":
        bundled_copy.write_text("{not json", encoding="utf-8")
    elif spoil == "no service points":
        document["service_points"] = []
    elif spoil == "a bad mobile":
        document["service_points"][0]["on_duty"][0]["mobile"] = "+86123"
    elif spoil == "an unknown webhook":
        document["service_points"][0]["on_duty"][0]["webhook"] = "no-such-robot"
    if spoil in ("no service points", "a bad mobile", "an unknown webhook"):
        bundled_copy.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")

    # When the settings are loaded
    message = _load(monkeypatch, {"GOVNOTIFY_STAFF_DIRECTORY": value})

    # Then a directory that would lose alerts is refused, naming the variable and the field
    if not refused:
        assert message is None
        return
    assert message is not None
    assert message.startswith("invalid setting GOVNOTIFY_STAFF_DIRECTORY:")
    assert says in message


def test_an_empty_staff_directory_variable_means_the_bundled_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given GOVNOTIFY_STAFF_DIRECTORY set but empty
    monkeypatch.setenv("GOVNOTIFY_STAFF_DIRECTORY", "")

    # When / Then
    assert load_settings().staff_directory is None


# ---- the backstop: a notifier refusing what the settings let through -----------------------------
@pytest.fixture
def refusing_twilio() -> Iterator[None]:
    """The twilio factory replaced by one that refuses like a notifier's __init__."""
    original = registry.get_factory("twilio")

    def factory(*args: object, **kwargs: object) -> Notifier:
        raise NotifierConfigError(
            "Twilio notifier misconfigured: from_ is not ours", provider="twilio"
        )

    registry.register("twilio", factory)
    try:
        yield
    finally:
        registry.register("twilio", original)


def test_a_provider_refusal_names_the_variables_it_is_built_from(
    monkeypatch: pytest.MonkeyPatch, refusing_twilio: None
) -> None:
    # Given valid Twilio settings that the notifier refuses anyway
    for name, value in TWILIO.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()

    # When the notifiers are built (as a worker does at start)
    with pytest.raises(NotifierConfigError) as caught:
        registry.notifier_from_settings(settings)

    # Then the error names the GOVNOTIFY_* variables behind the refusal, and the refusal
    message = str(caught.value)
    assert "GOVNOTIFY_TWILIO_ACCOUNT_SID" in message
    assert "GOVNOTIFY_TWILIO_FROM" in message
    assert "from_ is not ours" in message
    assert caught.value.provider == "twilio"
    assert TOKEN not in message
