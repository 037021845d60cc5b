"""Number suppression after permanent failures, on PostgreSQL and through the real worker.

A number that failed for good (invalid, unsubscribed) at either provider is suppressed for the
message's category: the next message of that category is ``suppressed`` without any provider
call, other categories still send, and ``govnotify suppression lift`` lets it send again.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.db import session
from infra.settings import Settings, load_settings
from notifiers.errors import (
    InvalidRecipientError,
    MessageRejectedError,
    PermanentDeliveryError,
    RecipientUnsubscribedError,
    UnsupportedRecipientError,
)
from tests.fakes.sms_gateway import FakeSmsGateway
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, env_for, metric, scrape, wait_until
from tests.support.delivery import (
    GATEWAY_TEMPLATES,
    notification,
    queue_sms,
    settled,
    suppressions,
    with_providers,
)
from workers import suppression

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BAD = "+8613800000666"
BODY = "【长安政务】您的食品经营许可证将于2026年12月31日到期。退订请致电12345"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def gateway() -> Iterator[FakeSmsGateway]:
    with FakeSmsGateway(templates=GATEWAY_TEMPLATES) as fake:
        yield fake


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> Settings:
    """Settings on a fresh PostgreSQL database only (no broker, no Kafka)."""
    return load_settings(database_url=database_url, data_dir=tmp_path / "data")


def provider_requests(twilio: FakeTwilio, gateway: FakeSmsGateway) -> int:
    return twilio.attempts + gateway.attempts


def lift(settings: Settings, mobile: str, category: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "infra.cli", "suppression", "lift", mobile, category),
            *("--operator", "cli"),
        ],
        env=env_for(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- the rules, on the database --------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "category", "suppressed"),
    [
        (InvalidRecipientError("bad", code=21211, provider="twilio"), "reminders", True),
        (RecipientUnsubscribedError("stop", provider="gateway"), "surveys", True),
        (UnsupportedRecipientError("landline", provider="twilio"), "callbacks", True),
        # the content's fault, not the number's
        (MessageRejectedError("too long", provider="twilio"), "reminders", False),
        (PermanentDeliveryError("refused", provider="gateway"), "reminders", False),
        # staff messages have no category: nothing to suppress them for
        (InvalidRecipientError("bad", provider="twilio"), "", False),
    ],
)
def test_which_failures_suppress(
    db: Settings, error: PermanentDeliveryError, category: str, suppressed: bool
) -> None:
    # When
    with session(db) as s:
        created = suppression.suppress_after(s, recipient=BAD, category=category, error=error)

    # Then
    assert created is suppressed
    rows = suppressions(db)
    assert len(rows) == int(suppressed)
    if suppressed:
        [row] = rows
        assert (row.recipient, row.category, row.status) == (BAD, category, "active")
        assert (row.reason, row.provider) == (error.reason, error.provider)
        assert row.error_code == error.code


def test_suppress_is_once_per_number_and_category_and_comes_back_after_a_lift(
    db: Settings,
) -> None:
    # Given
    with session(db) as s:
        first = suppression.suppress(
            s, recipient=BAD, category="reminders", reason="invalid_number"
        )
        again = suppression.suppress(
            s, recipient=BAD, category="reminders", reason="invalid_number"
        )
        other = suppression.suppress(s, recipient=BAD, category="surveys", reason="unsubscribed")

        # When
        lifted = suppression.lift(s, recipient=BAD, category="reminders", by="test")
        lifted_again = suppression.lift(s, recipient=BAD, category="reminders", by="test")
        active_after_lift = [(r.category, r.status) for r in suppression.active(s, BAD)]
        back = suppression.suppress(s, recipient=BAD, category="reminders", reason="unsubscribed")

    # Then
    assert (first, again, other) == (True, False, True)
    assert (lifted, lifted_again) == (1, 0)
    assert active_after_lift == [("surveys", "active")]
    assert back is True
    by_category = {r.category: r for r in suppressions(db)}
    assert by_category["reminders"].status == "active"
    assert by_category["reminders"].reason == "unsubscribed"
    assert by_category["reminders"].lifted_at is None


# ---- through the worker ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("primary", "code"),
    [("twilio", "21211"), ("gateway", "isv.MOBILE_NUMBER_ILLEGAL")],
)
def test_a_permanently_failing_number_is_suppressed_for_its_category_until_lifted(
    settings: Settings,
    pipeline: Pipeline,
    twilio: FakeTwilio,
    gateway: FakeSmsGateway,
    primary: str,
    code: str,
) -> None:
    # Given: the primary refuses the number as invalid
    fallback = "gateway" if primary == "twilio" else "twilio"
    routed = with_providers(settings, twilio, gateway, sms_routes={"default": [primary, fallback]})
    if primary == "twilio":
        twilio.fail_number(BAD, 400, int(code))
    else:
        gateway.fail_number(BAD, code)
    pipeline.set_env(**routed.env())
    pipeline.worker()
    pipeline.scheduler()

    # When: a reminder to it fails for good
    failed = queue_sms(routed, flow="callback_notice", to=BAD, body=BODY, category="reminders")
    wait_until(lambda: settled(routed, [failed]), 30, message="first message did not settle")

    # Then: the number is suppressed for reminders, saying who refused it and why
    assert notification(routed, failed).status == "permanent-failure"
    [row] = suppressions(routed)
    assert (row.recipient, row.category, row.status) == (BAD, "reminders", "active")
    assert (row.reason, row.provider, row.error_code) == ("invalid_number", primary, code)
    samples = scrape(routed.worker_metrics_port)
    assert (
        metric(samples, "govnotify_suppressions_total", category="reminders", reason="invalid") == 1
    )
    assert provider_requests(twilio, gateway) == 1

    # When: the next reminder to the same number
    skipped = queue_sms(routed, flow="callback_notice", to=BAD, body=BODY, category="reminders")
    wait_until(lambda: settled(routed, [skipped]), 30, message="second message did not settle")

    # Then: suppressed, with no provider call at all
    row2 = notification(routed, skipped)
    assert row2.status == "suppressed"
    assert "number suppressed" in (row2.status_reason or "")
    assert provider_requests(twilio, gateway) == 1

    # When: the provider would take the number now (say it was ported); another category
    twilio.clear()
    gateway.clear()
    survey = queue_sms(routed, flow="callback_notice", to=BAD, body=BODY, category="surveys")
    wait_until(lambda: settled(routed, [survey]), 30, message="survey did not settle")

    # Then: that category was never suppressed, so it sends
    assert notification(routed, survey).status == "sent"
    assert notification(routed, survey).provider == primary

    # When: staff lift the reminders suppression, and a reminder follows
    result = lift(routed, "13800000666", "reminders")
    after = queue_sms(routed, flow="callback_notice", to=BAD, body=BODY, category="reminders")
    wait_until(lambda: settled(routed, [after]), 30, message="reminder after lift")

    # Then: it sends again; the CLI said so without printing the whole number
    assert result.returncode == 0, result.stderr
    assert "1 suppression(s) lifted" in result.stdout
    assert "13800000666" not in result.stdout
    assert notification(routed, after).status == "sent"
    [lifted] = suppressions(routed)
    assert (lifted.status, lifted.lifted_by) == ("lifted", "cli")
    assert provider_requests(twilio, gateway) == 2


def test_a_content_refusal_does_not_suppress_the_number(
    settings: Settings, pipeline: Pipeline, twilio: FakeTwilio, gateway: FakeSmsGateway
) -> None:
    # Given: the gateway refuses one message's template parameters
    routed = with_providers(settings, twilio, gateway, sms_routes={"default": ["gateway"]})
    pipeline.set_env(**routed.env())
    pipeline.worker()
    pipeline.scheduler()

    # When: a renewal template without one of its parameters, then a good message
    refused = queue_sms(
        routed,
        flow="callback_notice",
        to=BAD,
        body=BODY,
        category="reminders",
        template="renewal_reminder",
        params={"category_name": "食品经营许可证", "license_id": "JY1"},
    )
    wait_until(lambda: settled(routed, [refused]), 30, message="refused did not settle")
    good = queue_sms(routed, flow="callback_notice", to=BAD, body=BODY, category="reminders")
    wait_until(lambda: settled(routed, [good]), 30, message="good did not settle")

    # Then
    assert notification(routed, refused).status == "permanent-failure"
    assert "content_rejected" in (notification(routed, refused).status_reason or "")
    assert suppressions(routed) == []
    assert notification(routed, good).status == "sent"
