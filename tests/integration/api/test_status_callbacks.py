"""Provider status callbacks through `govnotify api` (a real process) into PostgreSQL.

Twilio's callbacks are posted by FakeTwilio, signed with its auth token as Twilio signs them;
the gateway's are signed with :func:`notifiers.sms.gateway.signed_headers`. Every refusal is
read back from the api's own /metrics over HTTP.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from infra.db import session
from infra.settings import Settings
from notifiers.sms import OutboundMessage, ProviderStatus
from notifiers.sms.gateway import signed_headers
from notifiers.sms.twilio import TwilioSMSNotifier
from schemas.models import Notification, NotificationStatusEvent, Suppression, utcnow
from tests.fakes.twilio_server import FakeTwilio
from tests.integration.api.conftest import BODY, FROM, GATEWAY_KEY, GATEWAY_SECRET
from tests.support import Pipeline, enqueue, metric, scrape, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def twilio(fake_twilio: FakeTwilio) -> Iterator[TwilioSMSNotifier]:
    notifier = TwilioSMSNotifier(
        fake_twilio.account_sid, fake_twilio.auth_token, FROM, api_base=fake_twilio.base_url
    )
    yield notifier
    notifier.close()


def twilio_url(settings: Settings) -> str:
    return settings.api_public_url + "/callbacks/twilio/status"


def gateway_url(settings: Settings) -> str:
    return settings.api_public_url + "/callbacks/gateway/status"


def mobile(i: int) -> str:
    return f"+861380013{i:04d}"


def add_notification(
    settings: Settings,
    *,
    recipient: str,
    status: str = "sent",
    provider: str | None = "twilio",
    provider_ref: str | None = None,
) -> str:
    """A notification row as the worker leaves it (``sent`` with the provider's reference)."""
    now = utcnow()
    row = Notification(
        idempotency_key=f"test:{uuid.uuid4().hex}",
        flow="callback_notice",
        channel="sms",
        subject_id="CASE-1",
        recipient=recipient,
        body=BODY,
        status=status,
        provider=provider if provider_ref else None,
        provider_ref=provider_ref,
        category="callbacks",
        critical=True,
        attempts=1 if status != "created" else 0,
        claimed_at=None if status == "created" else now,
        sent_at=now if status == "sent" else None,
    )
    with session(settings) as s:
        s.add(row)
        s.commit()
    return row.id


def notification(settings: Settings, notification_id: str) -> Notification:
    with session(settings) as s:
        row = s.get(Notification, notification_id)
    assert row is not None
    return row


def history(settings: Settings, provider_ref: str) -> list[NotificationStatusEvent]:
    with session(settings) as s:
        return list(
            s.execute(
                select(NotificationStatusEvent)
                .where(NotificationStatusEvent.provider_ref == provider_ref)
                .order_by(NotificationStatusEvent.received_at)
            ).scalars()
        )


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def post_twilio_form(url: str, params: dict[str, str], signature: str) -> int:
    return post(
        url,
        urllib.parse.urlencode(params).encode(),
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )


def callback_counts(settings: Settings, provider: str) -> dict[str, float]:
    samples = scrape(settings.api_metrics_port)
    return {
        outcome: metric(
            samples, "govnotify_callback_requests_total", provider=provider, outcome=outcome
        )
        for outcome in ("accepted", "unsigned", "forged", "malformed")
    }


# ---- Twilio: signatures ------------------------------------------------------------------------
def test_only_signed_twilio_callbacks_are_applied_and_every_refusal_is_counted(
    api_settings: Settings,
    pipeline: Pipeline,
    fake_twilio: FakeTwilio,
    twilio: TwilioSMSNotifier,
) -> None:
    # Given an SMS Twilio took, its row `sent`, and the api running
    receipt = twilio.send(OutboundMessage("n-1", mobile(1), BODY))
    sid = receipt.provider_ref
    notification_id = add_notification(api_settings, recipient=mobile(1), provider_ref=sid)
    api = pipeline.api()
    url = twilio_url(api_settings)
    params = {
        "MessageSid": sid,
        "MessageStatus": "undelivered",
        "ErrorCode": "30005",
        "AccountSid": fake_twilio.account_sid,
    }
    validator = RequestValidator(fake_twilio.auth_token)

    # When callbacks that do not prove they come from Twilio try to fail the message …
    refused = {
        "unsigned": fake_twilio.send_status_callback(url, sid, "failed", sign=False),
        "other token": fake_twilio.send_status_callback(
            url, sid, "failed", error_code=30005, auth_token="an-attackers-guess"
        ),
        "edited after signing": fake_twilio.send_status_callback(
            url, sid, "delivered", tamper={"MessageStatus": "undelivered", "ErrorCode": "30005"}
        ),
        "signed for another URL": post_twilio_form(
            url, params, validator.compute_signature("https://evil.example/cb", params)
        ),
        "signed, no status": post_twilio_form(
            url,
            {"MessageSid": sid, "AccountSid": fake_twilio.account_sid},
            validator.compute_signature(
                url, {"MessageSid": sid, "AccountSid": fake_twilio.account_sid}
            ),
        ),
    }
    unchanged = notification(api_settings, notification_id)

    # … and then Twilio's own callback says it was delivered
    accepted = fake_twilio.send_status_callback(url, sid, "delivered")

    # Then every forgery was refused and changed nothing; the signed one was applied
    assert refused == {
        "unsigned": 403,
        "other token": 403,
        "edited after signing": 403,
        "signed for another URL": 403,
        "signed, no status": 400,
    }
    assert (unchanged.status, unchanged.error_code) == ("sent", None)
    assert accepted == 204
    row = notification(api_settings, notification_id)
    assert (row.status, row.error_code) == ("delivered", None)
    assert [(e.provider_status, e.status, e.source) for e in history(api_settings, sid)] == [
        ("delivered", "delivered", "callback")
    ]
    assert callback_counts(api_settings, "twilio") == {
        "accepted": 1,
        "unsigned": 1,
        "forged": 3,
        "malformed": 1,
    }
    # and the api stops cleanly on SIGTERM
    api.stop()
    assert api.popen.returncode == 0, api.log_tail()
    assert "api stopped" in api.log_tail()


# ---- Twilio: order and repetition --------------------------------------------------------------
@dataclass(frozen=True)
class CallbackRun:
    name: str
    #: (MessageStatus, ErrorCode) as Twilio posts them, in arrival order.
    callbacks: tuple[tuple[str, int | None], ...]
    status: str
    error_code: str | None
    #: Each distinct (MessageStatus, our status, ErrorCode) once, in arrival order.
    history: tuple[tuple[str, str, str | None], ...]


SEQUENCES = (
    CallbackRun(
        "a late `sent` after `delivered`",
        (("delivered", None), ("sent", None), ("queued", None)),
        "delivered",
        None,
        (("delivered", "delivered", None), ("sent", "sent", None), ("queued", "sent", None)),
    ),
    CallbackRun(
        "one callback per segment",
        (("sent", None), ("sent", None), ("delivered", None), ("delivered", None)),
        "delivered",
        None,
        (("sent", "sent", None), ("delivered", "delivered", None)),
    ),
    CallbackRun(
        "an unknown handset, then a stray `delivered`",
        (("undelivered", 30005), ("delivered", None), ("undelivered", 30005)),
        "permanent-failure",
        "30005",
        (
            ("undelivered", "permanent-failure", "30005"),
            ("delivered", "delivered", None),
        ),
    ),
    CallbackRun(
        "handset off: a second final status does not overwrite the first",
        (("sent", None), ("undelivered", 30003), ("failed", 21610)),
        "temporary-failure",
        "30003",
        (
            ("sent", "sent", None),
            ("undelivered", "temporary-failure", "30003"),
            ("failed", "permanent-failure", "21610"),
        ),
    ),
)


def test_out_of_order_and_repeated_callbacks_never_move_a_status_backwards(
    api_settings: Settings,
    pipeline: Pipeline,
    fake_twilio: FakeTwilio,
    twilio: TwilioSMSNotifier,
) -> None:
    # Given one sent SMS per sequence
    pipeline.api()
    url = twilio_url(api_settings)
    rows = {}
    for i, case in enumerate(SEQUENCES):
        sid = twilio.send(OutboundMessage(f"n-{i}", mobile(i), BODY)).provider_ref
        rows[case.name] = (
            sid,
            add_notification(api_settings, recipient=mobile(i), provider_ref=sid),
        )

    # When Twilio's callbacks arrive in that order, repeats included
    answers = [
        fake_twilio.send_status_callback(url, rows[case.name][0], status, error_code=code)
        for case in SEQUENCES
        for status, code in case.callbacks
    ]

    # Then each message ends where its first final status put it, with that status's code,
    # and its history holds each report once, with the time it came
    assert set(answers) == {204}
    for case in SEQUENCES:
        sid, notification_id = rows[case.name]
        row = notification(api_settings, notification_id)
        assert (row.status, row.error_code) == (case.status, case.error_code), case.name
        events = history(api_settings, sid)
        assert [(e.provider_status, e.status, e.error_code) for e in events] == list(
            case.history
        ), case.name
        assert all(e.applied and e.notification_id == notification_id for e in events), case.name
        assert all(e.received_at.tzinfo is not None for e in events), case.name
    # the unknown handset is suppressed for the category; the handset that was off is not
    with session(api_settings) as s:
        suppressed = {(r.recipient, r.error_code) for r in s.execute(select(Suppression)).scalars()}
    assert suppressed == {(mobile(2), "30005")}
    repeats = sum(len(c.callbacks) - len(c.history) for c in SEQUENCES)
    samples = scrape(api_settings.api_metrics_port)
    assert metric(samples, "govnotify_status_callbacks_total", result="duplicate") == repeats
    assert metric(samples, "govnotify_callback_requests_total", outcome="accepted") == len(answers)


# ---- Twilio: a callback faster than the worker ---------------------------------------------------
def test_a_callback_that_beats_the_worker_is_applied_when_the_worker_writes_the_reference(
    api_settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given a worker whose Twilio answer is held after Twilio took the message
    pipeline.api()
    pipeline.worker()
    fake_twilio.hold_next(1, taken=True)
    notification_id = add_notification(
        api_settings, recipient=mobile(7), status="created", provider=None
    )
    enqueue(api_settings, "delivery", "deliver_notification", notification_id)
    fake_twilio.wait_held(1, timeout=60)
    [message] = fake_twilio.messages

    # When Twilio's `delivered` callback arrives before the worker has the sid
    answer = fake_twilio.send_status_callback(twilio_url(api_settings), message["sid"], "delivered")
    waiting = notification(api_settings, notification_id)
    kept = history(api_settings, message["sid"])
    fake_twilio.release_held()

    # Then it is accepted and kept, and applied once the worker writes the sid
    assert answer == 204
    assert (waiting.status, waiting.provider_ref) == ("sending", None)
    assert [(e.provider_status, e.applied) for e in kept] == [("delivered", False)]
    wait_until(
        lambda: notification(api_settings, notification_id).status == "delivered",
        30,
        message="the waiting callback was not applied",
    )
    row = notification(api_settings, notification_id)
    assert (row.provider, row.provider_ref) == ("twilio", message["sid"])
    [event] = history(api_settings, message["sid"])
    assert (event.applied, event.notification_id) == (True, notification_id)
    # the worker asked Twilio to call the api back, at its public URL
    assert message["status_callback"] == twilio_url(api_settings)
    assert len(fake_twilio.messages) == 1
    samples = scrape(api_settings.worker_metrics_port)
    assert metric(samples, "govnotify_status_callbacks_total", result="advanced") == 1


# ---- the mainland gateway ----------------------------------------------------------------------
def gateway_post(settings: Settings, reports: list[dict[str, object]], **sign: object) -> int:
    raw = json.dumps({"reports": reports}).encode()
    key = str(sign.pop("key", GATEWAY_KEY))
    secret = str(sign.pop("secret", GATEWAY_SECRET))
    headers = signed_headers(key, secret, raw, **sign)  # type: ignore[arg-type]
    headers["Content-Type"] = "application/json"
    return post(gateway_url(settings), raw, headers)


def test_signed_gateway_reports_are_applied_and_forged_or_stale_ones_refused(
    api_settings: Settings, pipeline: Pipeline
) -> None:
    # Given two SMS the gateway took
    delivered = add_notification(
        api_settings, recipient=mobile(20), provider="gateway", provider_ref="9006197469364984^0"
    )
    invalid = add_notification(
        api_settings, recipient=mobile(21), provider="gateway", provider_ref="9006197469364985^0"
    )
    pipeline.api()
    report = {"biz_id": "9006197469364984^0", "status": "DELIVERED", "error_code": None}
    raw = json.dumps({"reports": [report]}).encode()

    # When reports arrive unsigned, forged, stale and unreadable …
    refused = {
        "unsigned": post(gateway_url(api_settings), raw, {"Content-Type": "application/json"}),
        "another secret": gateway_post(api_settings, [report], secret="not-our-secret"),
        "another key": gateway_post(api_settings, [report], key="someone-else"),
        "an hour old": gateway_post(api_settings, [report], timestamp=int(time.time()) - 3600),
        "unknown status": gateway_post(api_settings, [{**report, "status": "LOST"}]),
    }
    unchanged = notification(api_settings, delivered)
    # … and then a signed batch with both outcomes
    accepted = gateway_post(
        api_settings,
        [
            {**report, "reported_at": "2026-11-26T10:00:05+08:00"},
            {
                "biz_id": "9006197469364985^0",
                "status": "FAILED",
                "error_code": "isv.MOBILE_NUMBER_ILLEGAL",
                "reported_at": "2026-11-26T10:00:06+08:00",
            },
        ],
    )

    # Then only the signed batch counted
    assert refused == {
        "unsigned": 403,
        "another secret": 403,
        "another key": 403,
        "an hour old": 403,
        "unknown status": 400,
    }
    assert unchanged.status == "sent"
    assert accepted == 200
    assert notification(api_settings, delivered).status == "delivered"
    failed = notification(api_settings, invalid)
    assert (failed.status, failed.error_code) == ("permanent-failure", "isv.MOBILE_NUMBER_ILLEGAL")
    assert callback_counts(api_settings, "gateway") == {
        "accepted": 1,
        "unsigned": 1,
        "forged": 3,
        "malformed": 1,
    }


# ---- the Twilio notifier's side ------------------------------------------------------------------
def test_twilio_notifier_asks_for_callbacks_and_fetches_a_status_by_sid(
    fake_twilio: FakeTwilio,
) -> None:
    # Given a notifier configured with the api's callback URL
    callback = "https://notify.example.gov.cn/callbacks/twilio/status"
    with TwilioSMSNotifier(
        fake_twilio.account_sid,
        fake_twilio.auth_token,
        FROM,
        api_base=fake_twilio.base_url,
        status_callback_url=callback,
    ) as notifier:
        # When it sends, and Twilio later knows the message's fate
        sid = notifier.send(OutboundMessage("n-1", mobile(30), BODY)).provider_ref
        queued = notifier.fetch_status(sid)
        fake_twilio.set_status(sid, "undelivered", error_code=30005)
        failed = notifier.fetch_status(sid)
        missing = notifier.fetch_status("SM" + "0" * 32)

    # Then the create named the callback, and the fetches read status and error code
    assert fake_twilio.messages[0]["status_callback"] == callback
    assert (queued, queued.error_code) == ("queued", None)
    assert isinstance(failed, ProviderStatus)
    assert (failed, failed.error_code) == ("undelivered", "30005")
    assert missing is None
