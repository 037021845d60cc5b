"""TwilioSMSNotifier through the real twilio client and FakeTwilio; SandboxNotifier under load.

Needs no broker or database: FakeTwilio is a loopback HTTP server started here.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.logging import MaskingFormatter
from infra.settings import load_settings
from notifiers.errors import MessageRejectedError
from notifiers.registry import get_factory, names, notifier_from_settings
from notifiers.routing import RoutingNotifier
from notifiers.sms import OutboundMessage
from notifiers.sms.sandbox import SandboxNotifier, read_outbox
from notifiers.sms.text import count_segments
from notifiers.sms.twilio import TwilioSMSNotifier
from tests.fakes.twilio_server import FakeTwilio

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TO = "+8613800138000"
FROM = "+15005550006"
BODY = (
    "【长安政务】您的食品经营许可证（证号JY16101160012345）将于2026年12月31日到期，距今30天。"
    "请在到期前向长安区市场监督管理局申请续证，可到政务服务中心或登录政务服务网办理。回T退订"
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def twilio(fake: FakeTwilio) -> Iterator[TwilioSMSNotifier]:
    fake.clear()
    notifier = TwilioSMSNotifier(
        fake.account_sid, fake.auth_token, FROM, api_base=fake.base_url, timeout=5.0
    )
    yield notifier
    notifier.close()


def test_send_reaches_the_fake_exactly(fake: FakeTwilio, twilio: TwilioSMSNotifier) -> None:
    # Given
    message = OutboundMessage(
        "n-1", TO, BODY, status_callback="https://notify.example.org/twilio/status"
    )

    # When
    receipt = twilio.send(message)

    # Then
    [seen] = fake.wait_for(1, timeout=5)
    assert (seen["to"], seen["from"], seen["body"]) == (TO, FROM, BODY)
    assert seen["status_callback"] == "https://notify.example.org/twilio/status"
    assert receipt.provider == "twilio"
    assert receipt.provider_ref == seen["sid"]
    assert receipt.provider_ref.startswith("SM") and len(receipt.provider_ref) == 34
    assert receipt.status == "queued"
    assert receipt.segments == count_segments(BODY) == 2


def test_send_without_callback_sends_none(fake: FakeTwilio, twilio: TwilioSMSNotifier) -> None:
    # When
    twilio.send(OutboundMessage("n-1", TO, "【长安政务】您好"))

    # Then
    [seen] = fake.wait_for(1)
    assert seen["status_callback"] is None


def test_logs_never_hold_the_full_number(
    twilio: TwilioSMSNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    # When
    with caplog.at_level(logging.DEBUG):
        twilio.send(OutboundMessage("n-1", TO, "【长安政务】您好"))
        twilio.lookup(TO, "【长安政务】您好", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))

    # Then: our own loggers never hold it, even before masking …
    ours = [r for r in caplog.records if r.name.startswith(("notifiers", "twilio"))]
    assert ours
    assert all(TO[1:] not in r.getMessage() for r in ours)
    # … and urllib3's DEBUG line with the list URL (To=%2B86…) is masked by the formatter
    formatter = MaskingFormatter("%(message)s")
    assert all(TO[1:] not in formatter.format(r) for r in caplog.records)


def test_lookup_finds_a_sent_message_by_body(fake: FakeTwilio, twilio: TwilioSMSNotifier) -> None:
    # Given
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    receipt = twilio.send(OutboundMessage("n-1", TO, BODY))
    twilio.send(OutboundMessage("n-2", TO, "【长安政务】另一条"))

    # When
    found = twilio.lookup(TO, BODY, since)
    unknown = twilio.lookup(TO, "【长安政务】从未发送", since)

    # Then
    assert found == receipt.provider_ref
    assert unknown is None


def test_lookup_finds_a_message_still_queued_at_twilio(
    fake: FakeTwilio, twilio: TwilioSMSNotifier
) -> None:
    # Given Twilio took the message but has not sent it yet (no send date)
    since = dt.datetime.now(dt.UTC)
    fake.queue_next(1)
    receipt = twilio.send(OutboundMessage("n-queued", TO, BODY))

    # When the sweep asks for it
    found = twilio.lookup(TO, BODY, since)

    # Then it is found: resending it would text the citizen twice
    assert fake.messages[-1]["json"]["date_sent"] is None
    assert found == receipt.provider_ref


def test_lookup_ignores_the_same_text_sent_before_the_attempt(
    fake: FakeTwilio, twilio: TwilioSMSNotifier
) -> None:
    # Given the same text went to the number earlier (an earlier, separate notification)
    twilio.send(OutboundMessage("n-earlier", TO, "【长安政务】同样的提醒"))

    # When the sweep asks about an attempt that started well after it
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=twilio.lookup_clock_skew_s + 60)
    found = twilio.lookup(TO, "【长安政务】同样的提醒", later)

    # Then the earlier message is not taken for this attempt's
    assert found is None


def test_lookup_converts_local_time_to_utc(fake: FakeTwilio, twilio: TwilioSMSNotifier) -> None:
    # Given: "since" one minute ago, in Beijing time (+08:00)
    receipt = twilio.send(OutboundMessage("n-1", TO, BODY))
    shanghai = dt.timezone(dt.timedelta(hours=8))
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).astimezone(shanghai)

    # When
    found = twilio.lookup(TO, BODY, since)

    # Then: without conversion the client would send the +08:00 wall time as UTC and miss it
    assert found == receipt.provider_ref


def test_lookup_refuses_naive_datetimes(twilio: TwilioSMSNotifier) -> None:
    # When / Then
    with pytest.raises(ValueError, match="timezone-aware"):
        twilio.lookup(TO, BODY, dt.datetime(2026, 1, 1))


def test_lookup_respects_since(fake: FakeTwilio, twilio: TwilioSMSNotifier) -> None:
    # Given
    twilio.send(OutboundMessage("n-1", TO, BODY))

    # When
    found = twilio.lookup(TO, BODY, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))

    # Then
    assert found is None


@pytest.mark.parametrize(
    "body",
    [
        "【长安政务】详情见 https://zwfw.example.gov.cn/renew",
        "【长安政务】点击t.cn/abc续证",
        "【长安政务】" + "中" * 495,  # 501 characters, over Twilio's 500 for China
    ],
)
def test_send_rejects_before_any_request(
    fake: FakeTwilio, twilio: TwilioSMSNotifier, body: str
) -> None:
    # When
    with pytest.raises(MessageRejectedError):
        twilio.send(OutboundMessage("n-1", TO, body))

    # Then
    assert fake.attempts == 0
    assert fake.messages == []


def test_status_callback_helper_signs_like_twilio(
    fake: FakeTwilio, twilio: TwilioSMSNotifier
) -> None:
    # Given: a second fake posing as our callback endpoint would be overkill; a tiny server
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from twilio.request_validator import RequestValidator

    received: list[tuple[str, dict[str, str], str | None]] = []

    class Endpoint(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_POST(self) -> None:
            from urllib.parse import parse_qsl

            length = int(self.headers["Content-Length"])
            params = dict(parse_qsl(self.rfile.read(length).decode()))
            received.append((self.path, params, self.headers.get("X-Twilio-Signature")))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(server.serve_forever, 0.05)
        url = f"http://127.0.0.1:{server.server_address[1]}/twilio/status?n=1"
        receipt = twilio.send(OutboundMessage("n-1", TO, "【长安政务】您好"))

        # When
        signed = fake.send_status_callback(url, receipt.provider_ref, "delivered")
        unsigned = fake.send_status_callback(
            url, receipt.provider_ref, "undelivered", sign=False, error_code=30006
        )
        server.shutdown()
    server.server_close()

    # Then
    assert (signed, unsigned) == (204, 204)
    (_, params, signature), (_, params2, signature2) = received
    assert params["MessageSid"] == receipt.provider_ref
    assert params["MessageStatus"] == "delivered"
    assert params["To"] == TO
    assert RequestValidator(fake.auth_token).validate(url, params, signature)
    assert signature2 is None
    assert params2["ErrorCode"] == "30006"


# ---- sandbox ---------------------------------------------------------------------------------
def test_sandbox_200_sends_from_8_threads(tmp_path: Path) -> None:
    # Given
    outbox = tmp_path / "sub" / "outbox.jsonl"
    notifier = SandboxNotifier(outbox)
    messages = [OutboundMessage(f"n-{i}", TO, f"【长安政务】第{i}条") for i in range(200)]

    # When
    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(notifier.send, messages))

    # Then
    records = read_outbox(outbox)
    assert len(records) == 200
    assert len({r["provider_ref"] for r in records}) == 200
    assert {r["notification_id"] for r in records} == {m.notification_id for m in messages}
    assert {r.provider_ref for r in receipts} == {r["provider_ref"] for r in records}
    assert all(r.status == "delivered" and r.provider == "sandbox" for r in receipts)
    first = records[0]
    assert set(first) == {"provider_ref", "notification_id", "to", "body", "segments", "sent_at"}
    assert dt.datetime.fromisoformat(first["sent_at"]).utcoffset() == dt.timedelta(0)
    assert oct(outbox.stat().st_mode & 0o777) == "0o600"


def test_sandbox_many_processes_share_one_outbox(tmp_path: Path) -> None:
    # Given: 4 processes × 2 threads × 50 messages with a long body, so writes are large
    outbox = tmp_path / "outbox.jsonl"
    script = textwrap.dedent(
        f"""
        import sys
        from concurrent.futures import ThreadPoolExecutor
        from pathlib import Path
        from notifiers.sms import OutboundMessage
        from notifiers.sms.sandbox import SandboxNotifier
        n = SandboxNotifier(Path({str(outbox)!r}))
        p = sys.argv[1]
        msgs = [OutboundMessage(f"{{p}}-{{i}}", "{TO}", "中" * 480) for i in range(50)]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(n.send, msgs))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # When
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(p)], env=env, cwd=REPO)
        for p in range(4)
    ]
    codes = [proc.wait(timeout=60) for proc in procs]

    # Then
    assert codes == [0, 0, 0, 0]
    records = read_outbox(outbox)
    assert len(records) == 200
    assert len({r["notification_id"] for r in records}) == 200
    assert all(r["segments"] == 8 for r in records)


def test_read_outbox_of_missing_file_is_empty(tmp_path: Path) -> None:
    # Then
    assert read_outbox(tmp_path / "nope.jsonl") == []


def test_sandbox_rejects_a_url(tmp_path: Path) -> None:
    # Given
    notifier = SandboxNotifier(tmp_path / "outbox.jsonl")

    # When
    with pytest.raises(MessageRejectedError):
        notifier.send(OutboundMessage("n-1", TO, "【长安政务】见www.gov.cn"))

    # Then
    assert read_outbox(tmp_path / "outbox.jsonl") == []


# ---- registry --------------------------------------------------------------------------------
def test_registry_has_both_notifiers() -> None:
    # Then
    assert {"twilio", "sandbox"} <= set(names())
    with pytest.raises(KeyError, match="registered"):
        get_factory("pigeon")


def test_settings_without_twilio_give_the_sandbox(tmp_path: Path) -> None:
    # Given
    settings = load_settings(
        data_dir=tmp_path, twilio_account_sid="", twilio_auth_token="", twilio_from=""
    )

    # When
    notifier = notifier_from_settings(settings)

    # Then: a route over the sandbox alone
    assert isinstance(notifier, RoutingNotifier)
    assert notifier.route("renewal") == ["sandbox"]
    sandbox = notifier.providers["sandbox"]
    assert isinstance(sandbox, SandboxNotifier)
    assert sandbox.outbox == tmp_path / "sandbox-outbox.jsonl"


def test_settings_with_twilio_give_twilio(fake: FakeTwilio, tmp_path: Path) -> None:
    # Given
    fake.clear()
    settings = load_settings(
        data_dir=tmp_path,
        twilio_account_sid=fake.account_sid,
        twilio_auth_token=fake.auth_token,
        twilio_from=FROM,
        twilio_api_base=fake.base_url + "/",
    )

    # When
    notifier = notifier_from_settings(settings)
    receipt = notifier.send(OutboundMessage("n-1", TO, "【长安政务】您好"))
    notifier.close()

    # Then
    assert isinstance(notifier, RoutingNotifier)
    assert isinstance(notifier.providers["twilio"], TwilioSMSNotifier)
    assert receipt.provider == "twilio"
    assert fake.wait_for(1)[0]["sid"] == receipt.provider_ref
