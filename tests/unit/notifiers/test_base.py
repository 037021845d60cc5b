"""One notifier base for SMS and staff providers alike (notifiers.base.Notifier).

Every provider inherits ``send`` (validate, then send, then log), the context manager and the
configuration check from one class; staff notifiers validate before any network call as the
SMS ones do, and the registry builds the notifier of each staff-directory entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.settings import load_settings
from notifiers.base import Notifier
from notifiers.errors import InvalidRecipientError, MessageRejectedError, NotifierConfigError
from notifiers.registry import staff_notifier
from notifiers.routing import RoutingNotifier
from notifiers.sms import SMSNotifier
from notifiers.sms.gateway import HttpGatewayNotifier
from notifiers.sms.sandbox import SandboxNotifier
from notifiers.sms.twilio import TwilioSMSNotifier
from notifiers.staff import StaffMessage
from notifiers.staff.email import EmailNotifier
from notifiers.staff.sandbox import SandboxWebhook
from notifiers.staff.webhook import WebhookNotifier
from schemas.staff import Webhook

SMS = [TwilioSMSNotifier, HttpGatewayNotifier, SandboxNotifier, RoutingNotifier]
STAFF = [WebhookNotifier, EmailNotifier, SandboxWebhook]
#: Nothing listens here: a notifier that connected would fail with ProviderUnavailableError.
CLOSED = "127.0.0.1:9"


def _message(**changes: object) -> StaffMessage:
    fields: dict[str, object] = {
        "message_id": "alert-1",
        "kind": "green_channel_alert",
        "title": "绿色通道提醒",
        "text": "窗口3 有一位需要帮助的办事群众",
        "data": {"service_point": "sp-1"},
    }
    fields.update(changes)
    return StaffMessage(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", SMS + STAFF, ids=lambda c: c.__name__)
def test_every_provider_shares_one_send_and_one_context_manager(cls: type[Notifier]) -> None:
    # Then
    assert issubclass(cls, Notifier)
    for inherited in ("send", "__enter__", "__exit__"):
        assert inherited not in cls.__dict__, f"{cls.__name__} redefines {inherited}"
    assert isinstance(cls.name, str) and cls.name
    assert cls.channel in ("sms", "webhook", "email")
    assert issubclass(cls, SMSNotifier) == (cls in SMS)


def test_the_context_manager_closes_a_staff_notifier() -> None:
    # Given
    closed: list[str] = []

    class Recorded(WebhookNotifier):
        def close(self) -> None:
            closed.append(self.endpoint)
            super().close()

    # When
    with Recorded(f"http://{CLOSED}/hook") as notifier:
        assert isinstance(notifier, Recorded)

    # Then
    assert closed == [f"http://{CLOSED}"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (_message(title=" "), MessageRejectedError),
        (_message(data={"when": object()}), MessageRejectedError),
        (_message(mention_mobiles=("13800138000",)), InvalidRecipientError),
        (_message(text="中" * 5000), MessageRejectedError),
    ],
)
def test_a_webhook_refuses_a_bad_message_before_the_network(
    message: StaffMessage, expected: type[Exception]
) -> None:
    # Given a webhook nobody listens at
    with WebhookNotifier(f"http://{CLOSED}/hook") as notifier:
        # When / Then: the refusal is the message's, not a connection failure
        with pytest.raises(expected) as caught:
            notifier.send(message)
    assert caught.value.provider == "webhook"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "message",
    [
        _message(title=""),
        _message(title="两行\n标题"),
        _message(title="长" * 201),
        _message(message_id="not a message id"),
        _message(data={"when": object()}),
    ],
)
def test_an_email_notifier_refuses_a_bad_message_before_the_network(
    message: StaffMessage,
) -> None:
    # Given a mail server nobody listens at
    notifier = EmailNotifier(f"smtp://{CLOSED}", "govnotify@changan.gov.cn", to="a@changan.gov.cn")

    # When / Then
    with pytest.raises(MessageRejectedError) as caught:
        notifier.send(message)
    assert caught.value.provider == "email"


@pytest.mark.parametrize(
    ("cls", "args", "prefix"),
    [
        (WebhookNotifier, ("ftp://robot",), "webhook notifier misconfigured: "),
        (EmailNotifier, ("pop3://mail", "a@b.cn"), "e-mail notifier misconfigured: "),
        (HttpGatewayNotifier, ("https://sms.example.cn", "", "s"), "SMS gateway misconfigured: "),
        (TwilioSMSNotifier, ("AC1", "x", "+1"), "Twilio notifier misconfigured: "),
        (RoutingNotifier, ({},), "SMS routing misconfigured: "),
    ],
)
def test_configuration_is_refused_in_init_naming_the_provider(
    cls: type[Notifier], args: tuple[object, ...], prefix: str
) -> None:
    # When / Then
    kwargs = {"to": "a@b.cn"} if cls is EmailNotifier else {}
    with pytest.raises(NotifierConfigError) as caught:
        cls(*args, **kwargs)
    assert caught.value.message.startswith(prefix)
    assert caught.value.provider == cls.name


# ---- the staff notifier of a directory entry -----------------------------------------------------
def test_registry_builds_each_kind_of_staff_notifier(tmp_path: Path) -> None:
    # Given
    with_smtp = load_settings(
        data_dir=tmp_path, smtp_url="smtps://mail.changan.gov.cn", smtp_from="g@changan.gov.cn"
    )
    without_smtp = load_settings(data_dir=tmp_path, smtp_url="")
    mail = Webhook(url="mailto:head@changan.gov.cn", format="email")
    robot = Webhook(url="https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", format="wecom")
    sandbox = Webhook(url="sandbox://hall")

    # When / Then
    email = staff_notifier("head", mail, with_smtp)
    assert isinstance(email, EmailNotifier) and email.to.addr_spec == "head@changan.gov.cn"
    assert isinstance(staff_notifier("head", mail, without_smtp), SandboxWebhook)
    wecom = staff_notifier("robot", robot, with_smtp)
    assert isinstance(wecom, WebhookNotifier) and wecom.fmt == "wecom"
    assert isinstance(staff_notifier("hall", sandbox, with_smtp), SandboxWebhook)


def test_the_staff_sandbox_records_each_message_under_its_webhook(tmp_path: Path) -> None:
    # Given
    hook = Webhook(url="sandbox://hall")
    notifier = staff_notifier("hall", hook, load_settings(data_dir=tmp_path))

    # When
    with notifier:
        assert notifier.send(_message()) is None

    # Then
    [line] = (tmp_path / "sandbox-webhooks.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert (record["webhook"], record["id"], record["kind"]) == (
        "hall",
        "alert-1",
        "green_channel_alert",
    )
