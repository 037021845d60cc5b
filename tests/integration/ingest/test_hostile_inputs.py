"""Issue 11's proof: a table of hostile inputs through the real pipeline, each with its outcome,
then a scan of everything the run wrote or sent.

One pipeline (relay, stream, worker, scheduler, api as processes, on the real RabbitMQ, Tansu
and PostgreSQL; Twilio and the staff robots are loopback fakes) takes every row of
:func:`hostile_inputs`: over AMQP as govnotify's own user (``guest`` here, which owns the sample
sources), as an upstream user owning one source, as a user owning none, without a ``user_id``,
or over ``POST /events`` with a source's token. Each row says what must become of it: a dead
letter with its reason (in PostgreSQL), an HTTP status (and per-event reason), or accepted
(in the ingest journal) and harmless. Genuine control events run beside them, so a defence
that refuses everything would fail too: a reminder SMS goes out, a renewal after a forged
revocation applies, green-channel alerts reach the on-duty staff (an 18-digit case id masked),
an acknowledgement from its owner stops an escalation and one from anyone else does not.

Then every log line of the run, the sandbox files under the data folder and what the Twilio
and webhook fakes received are scanned for a full mobile number, an 18-digit ID number, the
run's passwords and tokens, and a raw control character (tests/support/hostile.py).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from infra.sources import HTTP_SOURCE_HEADER, RabbitmqUsers, add_source
from notifiers.registry import STAFF_SANDBOX_OUTBOX
from producers.generator import license_event
from producers.rabbitmq import Publisher
from schemas.events import DEFAULT_RATING_SOURCE, Event, make_event
from schemas.models import DeadLetter, IngestEvent, LicenseRecord, Notification, StaffAlert
from tests.conftest import SECRETS
from tests.fakes.twilio_server import FakeTwilio
from tests.fakes.webhook_server import FakeWebhook
from tests.support import Pipeline, wait_until
from tests.support.cases import CST, content, env, rows
from tests.support.hostile import (
    RAW_CONTROL,
    Leak,
    leaks_in_jsonl,
    leaks_in_log,
    leaks_in_records,
    post,
    raw_event,
)

pytestmark = pytest.mark.integration

#: The pipeline's clock is pinned here (10:00 on a working day: no quiet hours).
START = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
TODAY = START.date()
#: Seconds before an unacknowledged green-channel alert escalates: long enough for a genuine
#: acknowledgement to land first on a busy machine, short enough for the test.
ESCALATE_AFTER_S = 8
#: The upstream source user ``a`` owns (license.issued only), and the HTTP-only source.
PERMIT = "permit-registry"
KIOSK = "kiosk"
#: Marks a forged log line: no log line may start with it.
FORGED = "2026-01-01 00:00:00,000 INFO govnotify.relay: forged"


# ---- the table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    """What must become of a row: a dead letter ``reason``; accepted (journaled); or an HTTP
    ``status`` with the per-event ``results`` (accepted, or the reject reason)."""

    reason: str | None = None
    accepted: bool = False
    status: int | None = None
    results: tuple[str, ...] = ()


def dead(reason: str) -> Expect:
    return Expect(reason=reason)


ACCEPTED = Expect(accepted=True)


def http(status: int, *results: str) -> Expect:
    return Expect(status=status, results=results)


@dataclass(frozen=True)
class Row:
    """One hostile input: its id, how it is sent, the bytes, and the expected outcome.

    ``via``: ``amqp`` as ``user`` (``guest`` = govnotify's own, ``a`` = the upstream owning
    :data:`PERMIT`, ``c`` = a user owning nothing, ``None`` = no ``user_id`` property), with
    ``routing_key`` (default: the body's event type) and AMQP ``headers``; or ``http``: a
    ``POST /events`` with ``token`` (``kiosk``, ``None`` for none, ``forged``) and
    ``content_type``.
    """

    id: str
    via: str
    body: bytes
    expect: Expect
    user: str | None = "guest"
    routing_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = KIOSK
    content_type: str = "application/json"

    @property
    def event_ids(self) -> list[str]:
        """The ids of the events in the body (one, or each of a batch; none if unreadable)."""
        parsed = _parsed(self.body)
        items = parsed if isinstance(parsed, list) else [parsed]
        return [i["event_id"] for i in items if isinstance(i, dict) and "event_id" in i]


def _parsed(body: bytes) -> object:
    """``body`` as JSON, or None when it is not (or nests too deeply for this process)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def case_payload(case_id: str, **fields: Any) -> dict[str, Any]:
    """A valid case.submitted payload; ``fields`` replace values by dotted path
    (``service_point__name`` for ``service_point.name``)."""
    payload: dict[str, Any] = {
        "case_id": case_id,
        "service_item": "食品经营许可证核发",
        "department": "长安区市场监督管理局",
        "service_point": {
            "id": "SC-CHANGAN",
            "name": "长安区政务服务中心",
            "level": "service_centre",
        },
        "applicant": {"kind": "citizen", "name": "王秀英", "mobile": "13900000001"},
        "key_project": False,
        "submitted_at": START.isoformat(),
    }
    for path, value in fields.items():
        *parents, leaf = path.split("__")
        target = payload
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return payload


def steward_case(case_id: str, **steward: str) -> dict[str, Any]:
    payload = case_payload(case_id, key_project=True)
    payload["applicant"] = {
        "kind": "enterprise",
        "name": "西安长安科技有限公司",
        "mobile": "13900000002",
    }
    payload["project_steward"] = {
        "staff_id": "STW-01",
        "name": "刘管家",
        "department": "长安区政务服务中心",
        **steward,
    }
    return payload


def license_payload(license_id: str, **fields: str) -> dict[str, Any]:
    return {
        "license_id": license_id,
        "category": "food_business",
        "holder_name": "王伟",
        "holder_mobile": "13800138000",
        "issuing_department": "长安区市场监督管理局",
        "issued_on": "2024-01-01",
        "expires_on": "2029-01-01",
        **fields,
    }


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8].upper()}"


@dataclass
class Run:
    """What the rows refer to: the pipeline's clock and the control entities."""

    now: dt.datetime
    keep_license: str
    frozen_license: str
    duplicate: Event
    id_case: str
    uscc_case: str
    noack_case: str
    ack_case: str
    #: Extra events published with the rows (genuine acknowledgement, renewal): by key.
    controls: dict[str, Event] = field(default_factory=dict)


def hostile_inputs(run: Run) -> list[Row]:
    """Every hostile input of the run, each with its expected outcome."""
    now = run.now
    at = now - dt.timedelta(minutes=1)

    def case(case_id: str | None = None, *, source: str = "case-system", **fields: Any) -> bytes:
        return raw_event(
            "case.submitted",
            case_payload(case_id or uid("CA"), **fields),
            source=source,
            occurred_at=at,
        )

    def lic(event_type: str = "license.issued", *, source: str, **fields: str) -> bytes:
        payload = license_payload(fields.pop("license_id", uid("LIC")), **fields)
        return raw_event(event_type, payload, source=source, occurred_at=at)

    def revoke(license_id: str, *, source: str, when: dt.datetime) -> bytes:
        payload = {"license_id": license_id, "reason": "吊销", "revoked_on": TODAY.isoformat()}
        return raw_event("license.revoked", payload, source=source, occurred_at=when)

    def ack(case_id: str, *, source: str = "queue-system") -> bytes:
        payload = {
            "case_id": case_id,
            "service_point_id": "SC-CHANGAN",
            "staff_id": "S001",
            "acknowledged_at": at.isoformat(),
        }
        return raw_event("greenchannel.acknowledged", payload, source=source, occurred_at=at)

    def rating(*, source: str, comment: str = "") -> bytes:
        payload = {
            "evaluation_id": uid("EV"),
            "case_id": uid("CA"),
            "rating": 4,
            "real_name": False,
            "comment": comment,
            "department": "长安区市场监督管理局",
            "service_point_id": "SC-CHANGAN",
            "evaluated_at": at.isoformat(),
        }
        return raw_event("evaluation.submitted", payload, source=source, occurred_at=at)

    def green(case_id: str, **fields: Any) -> bytes:
        return case(case_id, applicant__special_groups=["elderly"], **fields)

    marker = uuid.uuid4().hex  # keeps every unparsable body distinct (one dead letter each)
    nested = '{"m":"' + marker + '","payload":' + "[" * 30_000 + "]" * 30_000 + "}"
    many_fields = json.loads(case())
    many_fields.update({f"f{i:05d}": i for i in range(3_000)})
    ansi_key = json.loads(case())
    ansi_key["payload"]["\x1b[31mnote\n" + FORGED] = "x"
    ts_number = json.loads(case())
    ts_number["occurred_at"] = 1_790_000_000
    bad_id = json.loads(case())
    bad_id["event_id"] = "\x1b[2J\x1b[H" + marker[:8]
    duplicate_other = make_event(
        run.duplicate.event_type,
        {**run.duplicate.envelope.payload, "service_item": "建设工程规划许可证核发"},
        source=run.duplicate.envelope.source,
        occurred_at=run.duplicate.envelope.occurred_at,
        event_id=uuid.UUID(run.duplicate.event_id),
    )
    long_comment = (
        "排队太久，请访问 https://evil.example.cn 或拨打13912345678，"
        "身份证610116199001011234。" + "等待时间较长。" * 120
    )
    renewal = license_event(
        "license.renewed",
        run.frozen_license,
        category="food_business",
        issued_on=TODAY,
        expires_on=TODAY + dt.timedelta(days=5 * 365),
        occurred_at=at,
    )
    run.controls["renewal"] = renewal
    genuine_ack = ack(run.ack_case)
    huge = case()  # a valid event, inflated below
    oversize_http = b'{"pad":"' + b"x" * (1024 * 1024 + 10) + b'"}'
    kiosk_ok = case(source=KIOSK)

    return [
        # -- who publishes: only a source's owner, for its types, routed by type ---------------
        Row("forged-source", "amqp", lic(source="license-registry"), dead("unauthorised"), "a"),
        Row(
            "revocation-from-non-owner",
            "amqp",
            revoke(run.keep_license, source="license-registry", when=at),
            dead("unauthorised"),
            "a",
        ),
        Row(
            "green-ack-from-non-owner",
            "amqp",
            ack(run.noack_case),
            dead("unauthorised"),
            "a",
        ),
        Row(
            "default-rating-source-from-upstream",
            "amqp",
            rating(source=DEFAULT_RATING_SOURCE),
            dead("unauthorised"),
            "a",
        ),
        Row(
            "type-the-source-may-not-send",
            "amqp",
            revoke(run.keep_license, source=PERMIT, when=at),
            dead("unauthorised"),
            "a",
        ),
        Row(
            "http-source-header-from-upstream",
            "amqp",
            case(source=KIOSK),
            dead("unauthorised"),
            "a",
            headers={HTTP_SOURCE_HEADER: KIOSK},
        ),
        Row("user-owning-no-source", "amqp", lic(source=PERMIT), dead("unauthorised"), "c"),
        Row("no-user-id", "amqp", lic(source="license-registry"), dead("unauthorised"), None),
        Row(
            "routing-key-not-the-type",
            "amqp",
            lic(source="license-registry"),
            dead("unauthorised"),
            routing_key="license.renewed",
        ),
        Row(
            "http-header-naming-a-source-without-http",
            "amqp",
            lic(source="license-registry"),
            dead("unauthorised"),
            headers={HTTP_SOURCE_HEADER: "license-registry"},
        ),
        Row("owner-publishing-its-own-source", "amqp", lic(source=PERMIT), ACCEPTED, "a"),
        # -- text that would reach an SMS -----------------------------------------------------
        Row(
            "phishing-sentence-with-a-mobile",
            "amqp",
            case(service_item="您的办件异常，请致电13912345678处理"),
            dead("unsafe_text"),
        ),
        Row(
            "hotline-in-service-item",
            "amqp",
            green(uid("G-HOT"), service_item="办件咨询请拨4008208820"),
            dead("unsafe_text"),
        ),
        Row(
            "spaced-plus86-mobile",
            "amqp",
            case(service_item="请联系+86 139 1234 5678办理"),
            dead("unsafe_text"),
        ),
        Row(
            "newline-and-fake-signature",
            "amqp",
            case(service_point__name="长安区政务服务中心\n【公安局】您涉嫌洗钱"),
            dead("unsafe_text"),
        ),
        Row(
            "look-alike-signature-brackets",
            "amqp",
            lic(source="license-registry", holder_name="〖公安局〗王伟"),
            dead("unsafe_text"),
        ),
        Row(
            "ideographic-full-stop-domain",
            "amqp",
            case(department="请登录gov-check。cn核验"),
            dead("unsafe_text"),
        ),
        Row(
            "full-width-domain",
            "amqp",
            steward_case_raw(at, name="ｅｖｉｌ．ｃｏｍ"),
            dead("unsafe_text"),
        ),
        Row(
            "country-domain",
            "amqp",
            steward_case_raw(at, department="evil.ru"),
            dead("unsafe_text"),
        ),
        Row("ip-port-path", "amqp", case(service_item="详见10.1.2.3:8080/a"), dead("unsafe_text")),
        Row("idn-domain", "amqp", case(service_point__name="访问例子.中国"), dead("unsafe_text")),
        Row("punycode-label", "amqp", case(applicant__name="xn--fiqs8s"), dead("unsafe_text")),
        Row(
            "https-in-holder-name",
            "amqp",
            lic(source="license-registry", holder_name="https://evil.example"),
            dead("unsafe_text"),
        ),
        Row(
            "tel-scheme",
            "amqp",
            case(service_item="咨询tel:10086"),
            dead("unsafe_text"),
        ),
        Row(
            "link-in-license-number",
            "amqp",
            lic(source="license-registry", license_id="SX-WS-evil.cn"),
            dead("unsafe_text"),
        ),
        Row("bidi-override", "amqp", case(applicant__name="王\u202e秀英"), dead("unsafe_text")),
        Row("zero-width-joiner", "amqp", case(service_item="食品\u200d经营"), dead("unsafe_text")),
        Row("nul-byte", "amqp", case(department="市场\u0000监管局"), dead("unsafe_text")),
        Row(
            "ansi-escape-in-text",
            "amqp",
            case(service_item="\x1b[31m食品经营\x1b[0m"),
            dead("unsafe_text"),
        ),
        Row("line-separator", "amqp", case(service_item="食品\u2028经营"), dead("unsafe_text")),
        Row("hangul-filler", "amqp", case(applicant__name="王\u3164秀英"), dead("unsafe_text")),
        # -- bytes that are not an event -------------------------------------------------------
        Row("truncated-json", "amqp", case()[:-7], dead("malformed_json")),
        Row(
            "not-utf8",
            "amqp",
            b'{"m":"' + marker.encode() + b'","x":"\xff\xfe"}',
            dead("malformed_json"),
        ),
        Row("nan", "amqp", case()[:-1] + b',"n":NaN}', dead("malformed_json")),
        Row(
            "duplicate-keys",
            "amqp",
            case()[:-1] + b',"source":"license-registry"}',
            dead("malformed_json"),
        ),
        Row("top-level-array", "amqp", b"[" + case() + b"]", dead("malformed_json")),
        Row("deeply-nested", "amqp", nested.encode(), dead("malformed_json")),
        Row("oversize", "amqp", huge[:-1] + b',"pad":"' + b"x" * 70_000 + b'"}', dead("oversize")),
        Row(
            "huge-number-of-fields",
            "amqp",
            json.dumps(many_fields, ensure_ascii=False).encode(),
            dead("schema_violation"),
        ),
        Row(
            "ansi-and-newline-in-a-field-name",
            "amqp",
            json.dumps(ansi_key, ensure_ascii=False).encode(),
            dead("schema_violation"),
        ),
        Row(
            "ansi-escape-in-event-id",
            "amqp",
            json.dumps(bad_id, ensure_ascii=False).encode(),
            dead("schema_violation"),
        ),
        Row(
            "unix-timestamp",
            "amqp",
            json.dumps(ts_number, ensure_ascii=False).encode(),
            dead("schema_violation"),
        ),
        Row(
            "unknown-type",
            "amqp",
            raw_event("license.exploded", {}, source="license-registry", occurred_at=at),
            dead("unknown_type"),
            routing_key="license.issued",
        ),
        Row(
            "unknown-version",
            "amqp",
            raw_event(
                "case.submitted",
                case_payload(uid("CA")),
                source="case-system",
                occurred_at=at,
                version=99,
            ),
            dead("unknown_version"),
        ),
        # -- time and identity of events --------------------------------------------------------
        Row(
            "revocation-dated-9999",
            "amqp",
            revoke(
                run.frozen_license,
                source="license-registry",
                when=dt.datetime(9999, 12, 31, tzinfo=dt.UTC),
            ),
            dead("occurred_in_future"),
        ),
        Row(
            "genuine-renewal-after-it",
            "amqp",
            renewal.to_json_bytes(),
            ACCEPTED,
        ),
        Row(
            "an-hour-ahead",
            "amqp",
            raw_event(
                "case.submitted",
                case_payload(uid("CA")),
                source="case-system",
                # ahead of both the pinned clock and the real time (infra.clock.event_horizon)
                occurred_at=max(now, dt.datetime.now(dt.UTC)) + dt.timedelta(hours=1),
            ),
            dead("occurred_in_future"),
        ),
        Row(
            "ahead-within-the-allowed-skew",
            "amqp",
            raw_event(
                "case.submitted",
                case_payload(uid("CA")),
                source="case-system",
                occurred_at=now + dt.timedelta(seconds=90),
            ),
            ACCEPTED,
        ),
        Row(
            "replayed-id-other-content",
            "amqp",
            duplicate_other.to_json_bytes(),
            dead("duplicate_event_id"),
        ),
        Row("replayed-id-same-content", "amqp", run.duplicate.to_json_bytes(), ACCEPTED),
        # -- hostile but harmless: accepted, and nothing bad follows ---------------------------
        Row("name-with-middle-dot", "amqp", case(applicant__name="阿卜杜拉·买买提"), ACCEPTED),
        Row("name-with-combining-mark", "amqp", case(applicant__name="Jose\u0301"), ACCEPTED),
        Row(
            "full-width-punctuation",
            "amqp",
            case(applicant__name="西安（长安）科技有限公司"),
            ACCEPTED,
        ),
        Row(
            "license-code-is-not-a-phone",
            "amqp",
            case(service_item="食品经营许可证JY16101160012345变更"),
            ACCEPTED,
        ),
        Row(
            "long-comment-that-never-reaches-an-sms",
            "amqp",
            rating(source="evaluation-system", comment=long_comment),
            ACCEPTED,
        ),
        Row(
            "newline-and-ansi-in-a-case-id",
            "amqp",
            case("CA-1\x1b[31m\n" + FORGED[:40]),
            ACCEPTED,
        ),
        Row("id-number-as-green-case-id", "amqp", green(run.id_case), ACCEPTED),
        Row(
            "credit-code-in-green-service-item",
            "amqp",
            green(run.uscc_case, service_item="企业设立登记91610116MA6U1234X5"),
            ACCEPTED,
        ),
        Row("green-case-left-unacknowledged", "amqp", green(run.noack_case), ACCEPTED),
        Row("green-case-acknowledged", "amqp", green(run.ack_case), ACCEPTED),
        Row("genuine-acknowledgement", "amqp", genuine_ack, ACCEPTED),
        # -- HTTP ingest -----------------------------------------------------------------------
        Row("http-genuine", "http", kiosk_ok, http(200, "accepted")),
        Row(
            "http-wrong-content-type",
            "http",
            case(source=KIOSK),
            http(400),
            content_type="text/plain",
        ),
        Row("http-no-token", "http", case(source=KIOSK), http(401), token=None),
        Row("http-forged-token", "http", case(source=KIOSK), http(401), token="forged"),
        Row(
            "http-other-source",
            "http",
            case(source="case-system"),
            http(422, "unauthorised"),
        ),
        Row(
            "http-default-rating-source",
            "http",
            rating(source=DEFAULT_RATING_SOURCE),
            http(422, "unauthorised"),
        ),
        Row(
            "http-type-not-allowed", "http", ack(uid("CA"), source=KIOSK), http(422, "unauthorised")
        ),
        Row(
            "http-fake-signature",
            "http",
            case(source=KIOSK, service_item="【公安局】冻结通知"),
            http(422, "unsafe_text"),
        ),
        Row(
            "http-dated-9999",
            "http",
            raw_event(
                "case.submitted",
                case_payload(uid("CA")),
                source=KIOSK,
                occurred_at="9999-12-31T00:00:00+00:00",
            ),
            http(422, "occurred_in_future"),
        ),
        Row("http-deeply-nested", "http", b"[" * 100_000 + b"]" * 100_000, http(400)),
        Row("http-oversize-body", "http", oversize_http, http(413)),
        Row(
            "http-batch-one-good-one-link",
            "http",
            b"[" + case(source=KIOSK) + b"," + case(source=KIOSK, department="evil.ru") + b"]",
            http(207, "accepted", "unsafe_text"),
        ),
    ]


def steward_case_raw(at: dt.datetime, **steward: str) -> bytes:
    return raw_event(
        "case.submitted", steward_case(uid("CA"), **steward), source="case-system", occurred_at=at
    )


# ---- fixtures ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upstream:
    user: str
    url: str
    password: str


@pytest.fixture
def upstreams(settings: Settings) -> Iterator[dict[str, Upstream]]:
    """RabbitMQ users ``a`` and ``c`` (unique names), write-only on the exchange; deleted after."""
    users = RabbitmqUsers.for_url(settings.amqp_url)
    made: dict[str, Upstream] = {}
    params = pika.URLParameters(settings.amqp_url)
    vhost = "%2F" if params.virtual_host == "/" else params.virtual_host
    try:
        for key in ("a", "c"):
            name = f"{settings.namespace}-{key}"
            password = users.create_publisher(name, settings.exchange)
            url = f"amqp://{name}:{password}@{params.host}:{params.port}/{vhost}"
            made[key] = Upstream(name, url, password)
        yield made
    finally:
        for upstream in made.values():
            users.delete(upstream.user)


# ---- sending -------------------------------------------------------------------------------------
def _routing_key(row: Row) -> str:
    if row.routing_key:
        return row.routing_key
    parsed = _parsed(row.body)
    event_type = parsed.get("event_type") if isinstance(parsed, dict) else None
    return event_type if isinstance(event_type, str) else "license.issued"


def _publish_without_user_id(url: str, exchange: str, body: bytes, routing_key: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange,
            routing_key,
            body,
            pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
            mandatory=True,
        )
    finally:
        connection.close()


def send_amqp(settings: Settings, rows_: list[Row], upstreams: dict[str, Upstream]) -> None:
    """Publish the AMQP rows, each with its user's connection (one per user), confirmed."""
    urls = {"guest": settings.amqp_url, **{k: u.url for k, u in upstreams.items()}}
    with ExitStack() as stack:
        publishers: dict[str, Publisher] = {}
        for row in rows_:
            if row.user is None:
                _publish_without_user_id(
                    settings.amqp_url, settings.exchange, row.body, _routing_key(row)
                )
                continue
            if row.user not in publishers:
                publishers[row.user] = stack.enter_context(
                    Publisher(urls[row.user], settings.exchange)
                )
            publishers[row.user].publish_raw(
                row.body, _routing_key(row), headers=row.headers or None
            )


def send_http(settings: Settings, row: Row, token: str) -> tuple[int, dict[str, Any] | None]:
    headers = {"Content-Type": row.content_type}
    if row.token == KIOSK:
        headers["Authorization"] = f"Bearer {token}"
    elif row.token == "forged":
        headers["Authorization"] = f"Bearer gn1.{'0' * 16}.{'A' * 43}"
    status, body = post(settings.api_port, "/events", row.body, headers)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    return status, answer if isinstance(answer, dict) else None


# ---- reading the outcome -----------------------------------------------------------------------
def letters(settings: Settings) -> list[DeadLetter]:
    with session(settings) as s:
        return list(s.execute(select(DeadLetter)).scalars())


def journaled(settings: Settings) -> dict[str, bytes]:
    with session(settings) as s:
        return {e.event_id: bytes(e.body) for e in s.execute(select(IngestEvent)).scalars()}


def hall_alerts(webhooks: FakeWebhook) -> list[str]:
    return [content(r) for r in webhooks.requests if r.route == "/hooks/hall-robot"]


def alert_sent(settings: Settings, case_id: str) -> bool:
    """Whether the green-channel alert of ``case_id`` went out to the on-duty staff."""
    return [
        a.sent_at is not None for a in rows(settings, StaffAlert, StaffAlert.case_id == case_id)
    ] == [True]


def escalations(settings: Settings) -> list[str]:
    """The hall supervisors' messages, as the staff sandbox recorded them."""
    path = settings.data_dir / STAFF_SANDBOX_OUTBOX
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [f"{r['title']}\n{r['text']}" for r in records if r.get("webhook") == "supervisor-robot"]


def supervisors_in_the_sandbox(directory: Path) -> None:
    """Point the hall supervisors' robot at the staff sandbox (the others stay on the fake), so
    the run writes a staff outbox file for the scan to read."""
    staff = json.loads(directory.read_text(encoding="utf-8"))
    staff["webhooks"]["supervisor-robot"]["url"] = "sandbox://supervisor-robot"
    directory.write_text(json.dumps(staff, ensure_ascii=False), encoding="utf-8")


def settled(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate`` holds within ``timeout`` seconds (polled; no fixed sleep)."""
    try:
        wait_until(predicate, timeout, interval=0.2)
    except TimeoutError:
        return False
    return True


def _eventually(predicate: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    wait_until(predicate, timeout, interval=0.2, message=what)


# ---- the test ------------------------------------------------------------------------------------
def test_every_hostile_input_gets_its_outcome_and_nothing_unsafe_is_written_or_sent(
    settings: Settings,
    pipeline: Pipeline,
    fake_twilio: FakeTwilio,
    hooks: tuple[FakeWebhook, Path],
    upstreams: dict[str, Upstream],
) -> None:
    began = time.monotonic()
    webhooks, directory = hooks
    # Given: user a owns PERMIT (license.issued only), user c owns nothing, KIOSK posts over
    # HTTP (case.submitted only); guest, govnotify's own user, owns the sample sources
    with session(settings) as s:
        add_source(s, PERMIT, ["license.issued"], amqp_user=upstreams["a"].user, operator="t")
        _kiosk, token = add_source(
            s, KIOSK, ["case.submitted"], amqp_user=None, http_token=True, operator="t"
        )
        s.commit()
    assert token is not None
    supervisors_in_the_sandbox(directory)
    # and the whole pipeline, its clock pinned at 10:00, alerts escalating after a few seconds
    pipeline.set_env(
        **env(
            fake_twilio,
            directory,
            START,
            GOVNOTIFY_GREEN_ESCALATE_AFTER_S=str(ESCALATE_AFTER_S),
        )
    )
    pipeline.all()
    pipeline.api()
    # and control entities: a live license due for a reminder, a license about to be "frozen",
    # and an event whose id will be replayed
    now = pipeline.now(START)
    keep, frozen = uid("LIC-KEEP"), uid("LIC-FROZEN")
    first = [
        license_event(
            "license.issued",
            keep,
            category="food_business",
            holder_mobile="13800000077",
            issued_on=TODAY - dt.timedelta(days=365 * 5 - 20),
            expires_on=TODAY + dt.timedelta(days=20),
            occurred_at=now - dt.timedelta(hours=2),
        ),
        license_event(
            "license.issued",
            frozen,
            category="food_business",
            issued_on=TODAY - dt.timedelta(days=165),
            expires_on=TODAY + dt.timedelta(days=200),
            occurred_at=now - dt.timedelta(hours=2),
        ),
        make_event(
            "case.submitted",
            case_payload(uid("CA-DUP")),
            source="case-system",
            occurred_at=now - dt.timedelta(hours=1),
        ),
    ]
    with Publisher.from_settings(settings) as p:
        for event in first:
            p.publish(event)
    _eventually(
        lambda: {e.event_id for e in first} <= journaled(settings).keys(),
        60,
        lambda: "the control events were not journaled",
    )
    run = Run(
        now=pipeline.now(START),
        keep_license=keep,
        frozen_license=frozen,
        duplicate=first[2],
        id_case="6101162026112" + f"{uuid.uuid4().int % 10**5:05d}",
        uscc_case=uid("G-USCC"),
        noack_case=uid("G-NOACK"),
        ack_case=uid("G-ACK"),
    )
    table = hostile_inputs(run)
    assert len(table) >= 40 and len({r.id for r in table}) == len(table)
    assert len({r.body for r in table}) == len(table), "each row's bytes must be its own"

    # When: every row is sent (AMQP in table order, then HTTP)
    send_amqp(settings, [r for r in table if r.via == "amqp"], upstreams)
    answers = {r.id: send_http(settings, r, token) for r in table if r.via == "http"}

    # Then: every row has its outcome
    expected_letters = [r for r in table if r.expect.reason is not None]
    accepted_ids = {i for r in table if r.expect.accepted for i in r.event_ids}
    # (an HTTP event the api answered accepted must reach the journal through the relay)
    http_accepted = {
        r["event_id"]
        for _status, answer in answers.values()
        for r in (answer or {}).get("results", [])
        if r.get("accepted")
    }
    accepted_ids |= http_accepted
    _eventually(
        lambda: (
            len([x for x in letters(settings) if x.stage == "ingest"]) >= len(expected_letters)
            and accepted_ids <= journaled(settings).keys()
        ),
        90,
        lambda: (
            f"{len(letters(settings))} dead letters of {len(expected_letters)}; not journaled: "
            f"{sorted(accepted_ids - journaled(settings).keys())}"
        ),
    )
    by_raw = {bytes(x.raw): x for x in letters(settings)}
    journal = journaled(settings)
    failures: list[str] = []
    for row in table:
        got: str
        if row.via == "http":
            status, answer = answers[row.id]
            results = tuple(
                "accepted" if r["accepted"] else r["reason"]
                for r in (answer or {}).get("results", [])
            )
            got = f"HTTP {status} {list(results)}"
            if status != row.expect.status or results != row.expect.results:
                failures.append(
                    f"{row.id}: expected HTTP {row.expect.status} "
                    f"{list(row.expect.results)}, got {got}"
                )
            for event_id in row.event_ids:
                if (event_id in journal) != (event_id in http_accepted):
                    failures.append(
                        f"{row.id}: event {event_id} journaled={event_id in journal}, "
                        f"answered accepted={event_id in http_accepted}"
                    )
            continue
        letter = by_raw.get(row.body)
        if row.expect.reason is not None:
            if letter is None:
                in_journal = any(i in journal for i in row.event_ids)
                got = (
                    "accepted (journaled)" if in_journal else "nothing (neither letter nor journal)"
                )
                failures.append(f"{row.id}: expected dead letter {row.expect.reason}, got {got}")
            elif (letter.stage, letter.reason) != ("ingest", row.expect.reason):
                failures.append(
                    f"{row.id}: expected dead letter {row.expect.reason}, got "
                    f"{letter.stage}/{letter.reason}: {letter.detail!r}"
                )
            elif any(
                i in journal for i in row.event_ids if row.expect.reason != "duplicate_event_id"
            ):
                failures.append(f"{row.id}: dead-lettered and journaled too")
            elif RAW_CONTROL.search(letter.detail) or "\n" in letter.detail:
                failures.append(
                    f"{row.id}: detail carries a raw control character: {letter.detail!r}"
                )
        else:
            if letter is not None:
                failures.append(
                    f"{row.id}: expected accepted, got dead letter {letter.reason}: "
                    f"{letter.detail!r}"
                )
            elif not all(i in journal for i in row.event_ids):
                failures.append(f"{row.id}: expected accepted, not in the journal")
    # nothing dead-lettered that no row expected (a job refused downstream, say)
    expected_raws = {r.body for r in expected_letters}
    unexpected = [
        f"{x.stage}/{x.reason} {x.event_type}: {x.detail!r}"
        for x in letters(settings)
        if bytes(x.raw) not in expected_raws
    ]
    failures += [f"unexpected dead letter: {u}" for u in unexpected]
    # an accepted name is kept as NFKC made it
    [jose] = [r for r in table if r.id == "name-with-combining-mark"]
    if "José" not in journal.get(jose.event_ids[0], b"").decode():
        failures.append("name-with-combining-mark: not journaled in NFKC form")

    # and the controls: the forged revocation froze nothing, the genuine renewal applied …
    renewal = run.controls["renewal"].payload.expires_on  # type: ignore[attr-defined]
    if not settled(
        lambda: (
            [
                (r.status, r.expires_on)
                for r in rows(settings, LicenseRecord, LicenseRecord.license_id == frozen)
            ]
            == [("live", renewal)]
        ),
        60,
    ):
        failures.append(
            "genuine-renewal-after-it: expected the license live until the renewed expiry, got "
            f"{rows(settings, LicenseRecord, LicenseRecord.license_id == frozen)}"
        )
    # … the revocation from a non-owner revoked nothing, and the reminder went out
    if not settled(lambda: any(keep in m["body"] for m in fake_twilio.messages), 60):
        failures.append(f"revocation-from-non-owner: no reminder SMS for {keep}")
    if [r.status for r in rows(settings, LicenseRecord, LicenseRecord.license_id == keep)] != [
        "live"
    ] or any(
        n.status == "cancelled"
        for n in rows(settings, Notification, Notification.subject_id == keep)
    ):
        failures.append(f"revocation-from-non-owner: {keep} is no longer live, or its SMS stopped")
    # … the green-channel alerts reached the on-duty staff, the 18-digit case id masked, the
    # forged acknowledgement stopped nothing and the owner's did
    masked_id = run.id_case[:6] + "********" + run.id_case[-4:]
    wanted = {
        "id-number-as-green-case-id: alert sent to the on-duty staff": lambda: alert_sent(
            settings, run.id_case
        ),
        "id-number-as-green-case-id: escalation with the id masked": lambda: any(
            masked_id in text for text in escalations(settings)
        ),
        "credit-code-in-green-service-item: alert with the code": lambda: (
            alert_sent(settings, run.uscc_case)
            and any("91610116MA6U1234X5" in text for text in hall_alerts(webhooks))
        ),
        "green-ack-from-non-owner: escalation": lambda: (
            any(run.noack_case in text for text in escalations(settings))
            and [
                (a.status, a.acknowledged_by)
                for a in rows(settings, StaffAlert, StaffAlert.case_id == run.noack_case)
            ]
            == [("escalated", None)]
        ),
        "genuine-acknowledgement: acknowledged": lambda: (
            [
                (a.status, a.acknowledged_by, a.escalated_at)
                for a in rows(settings, StaffAlert, StaffAlert.case_id == run.ack_case)
            ]
            == [("acknowledged", "S001", None)]
        ),
    }
    settled(lambda: all(check() for check in wanted.values()), 60)
    failures += [
        f"{name}: not seen (alerts {hall_alerts(webhooks)}, escalations {escalations(settings)})"
        for name, check in wanted.items()
        if not check()
    ]
    if any(run.id_case in r.raw.decode("utf-8", "replace") for r in webhooks.requests):
        failures.append("id-number-as-green-case-id: the full id reached a robot")
    if any(run.ack_case in text for text in escalations(settings)):
        failures.append("genuine-acknowledgement: escalated all the same")
    # … and the long comment never reached a message
    if any("evil" in (n.body or "") for n in rows(settings, Notification)):
        failures.append("long-comment-that-never-reaches-an-sms: it reached a notification")

    # Finally: nothing the run wrote or sent holds a full number, an ID number, a secret or a
    # raw control character (components stopped first, so every log is complete)
    pipeline.stop_all()
    secrets = [
        *SECRETS,
        fake_twilio.auth_token,
        token,
        token.rsplit(".", 1)[1],
        *(u.password for u in upstreams.values()),
    ]
    found: list[Leak] = []
    logs = sorted(pipeline.log_dir.glob("*.log"))
    assert {"relay.log", "stream.log", "worker.log", "scheduler.log", "api.log"} <= {
        p.name for p in logs
    }
    for path in logs:
        found.extend(leaks_in_log(path, secrets))
        text = path.read_text(encoding="utf-8", errors="replace")
        found.extend(
            Leak(path.name, "forged log line", line[:120])
            for line in text.split("\n")
            if line.startswith(FORGED[:40])
        )
    outboxes = [
        p for p in sorted(settings.data_dir.rglob("*")) if p.is_file() and p.suffix == ".jsonl"
    ]
    for path in outboxes:
        # (a staff record's "data" holds ids for a portal's lookup, unmasked by design)
        found.extend(leaks_in_jsonl(path, secrets, lookup_keys=frozenset({"data"})))
    found.extend(leaks_in_records(fake_twilio.messages, "twilio", secrets))
    found.extend(leaks_in_records([r.body for r in webhooks.requests], "webhooks", secrets))
    assert fake_twilio.messages and webhooks.requests  # the scan had something to read
    problems = [f"row {f}" for f in failures] + [f"leak {leak}" for leak in found[:40]]
    assert not problems, f"{len(failures)} row problem(s), {len(found)} leak(s):\n" + "\n".join(
        problems
    )
    print(
        f"{len(table)} rows, {len(logs)} logs, {len(outboxes)} outbox files, "
        f"{len(fake_twilio.messages)} SMS, {len(webhooks.requests)} webhooks scanned "
        f"in {time.monotonic() - began:.1f}s"
    )
