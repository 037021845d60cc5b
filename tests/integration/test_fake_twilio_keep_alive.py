"""FakeTwilio's keep-alive mode (benchmarks): the real twilio client reuses one connection.

Needs no broker or database: FakeTwilio is a loopback HTTP server started here (and, for the
process entry, in a child process this module starts and stops).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator

import pytest

from notifiers.errors import DeliveryTimeoutError, InvalidRecipientError
from notifiers.sms import OutboundMessage
from notifiers.sms.twilio import TwilioSMSNotifier
from tests.fakes.twilio_server import FakeTwilio, FakeTwilioProcess

pytestmark = pytest.mark.integration

FROM = "+15005550006"
BODY = "【长安政务】您的食品经营许可证将于2026年12月31日到期，请及时申请续证。回T退订"


def _to(i: int) -> str:
    return f"+86138001{i:05d}"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(keep_alive=True) as server:
        yield server


def _notifier(fake: FakeTwilio | FakeTwilioProcess, timeout: float = 5.0) -> TwilioSMSNotifier:
    return TwilioSMSNotifier(
        fake.account_sid, fake.auth_token, FROM, api_base=fake.base_url, timeout=timeout
    )


def test_twilio_client_sends_several_messages_over_one_connection(fake: FakeTwilio) -> None:
    # Given
    twilio = _notifier(fake)

    # When
    try:
        receipts = [twilio.send(OutboundMessage(f"n-{i}", _to(i), BODY)) for i in range(10)]
    finally:
        twilio.close()

    # Then: every message arrived, in order, and the fake accepted a single TCP connection
    seen = fake.wait_for(10, timeout=5)
    assert [m["to"] for m in seen] == [_to(i) for i in range(10)]
    assert [m["body"] for m in seen] == [BODY] * 10
    assert [r.provider_ref for r in receipts] == [m["sid"] for m in seen]
    assert fake.stats() == {"messages": 10, "attempts": 10, "connections": 1}


def test_each_client_thread_keeps_its_own_connection(fake: FakeTwilio) -> None:
    # Given: the notifier keeps one twilio client (one requests session) per thread
    twilio = _notifier(fake)

    def send_five(t: int) -> None:
        for i in range(5):
            twilio.send(OutboundMessage(f"n-{t}-{i}", _to(10 * t + i), BODY))

    # When
    threads = [threading.Thread(target=send_five, args=(t,)) for t in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        twilio.close()

    # Then
    assert len(fake.wait_for(20, timeout=5)) == 20
    assert fake.stats()["connections"] == 4


def test_keep_alive_answers_http_1_1_with_content_length_and_default_stays_1_0() -> None:
    # Given: the same GET to a keep-alive fake and to a default one, over raw http.client
    answers = {}
    for keep_alive in (True, False):
        with FakeTwilio(keep_alive=keep_alive) as server:
            conn = http.client.HTTPConnection("127.0.0.1", int(server.base_url.rsplit(":", 1)[1]))
            try:
                conn.request("GET", "/_fake/stats")
                response = conn.getresponse()
                body = response.read()
                answers[keep_alive] = (
                    response.version,
                    response.will_close,
                    int(response.headers["Content-Length"]) == len(body),
                )
            finally:
                conn.close()

    # Then
    assert answers[True] == (11, False, True)
    assert answers[False] == (10, True, True)


def test_scripted_failure_keeps_the_connection(fake: FakeTwilio) -> None:
    # Given
    fake.fail_next(1, 400, 21211)
    twilio = _notifier(fake)

    # When
    try:
        with pytest.raises(InvalidRecipientError):
            twilio.send(OutboundMessage("n-0", _to(0), BODY))
        twilio.send(OutboundMessage("n-1", _to(1), BODY))
    finally:
        twilio.close()

    # Then: the error answer was complete, so the next create reused the connection
    [seen] = fake.wait_for(1)
    assert seen["to"] == _to(1)
    assert fake.stats() == {"messages": 1, "attempts": 2, "connections": 1}


def test_drop_on_a_reused_connection_is_a_timeout_and_the_next_send_works(
    fake: FakeTwilio,
) -> None:
    # Given: one message sent, so the client's connection is pooled; the next is dropped
    twilio = _notifier(fake)
    try:
        twilio.send(OutboundMessage("n-0", _to(0), BODY))
        fake.drop_next(1)

        # When
        with pytest.raises(DeliveryTimeoutError):
            twilio.send(OutboundMessage("n-1", _to(1), BODY))
        twilio.send(OutboundMessage("n-2", _to(2), BODY))
    finally:
        twilio.close()

    # Then: the dropped one was taken (ambiguous, as in the default mode); no retry was sent
    assert [m["to"] for m in fake.wait_for(3)] == [_to(0), _to(1), _to(2)]
    assert fake.stats() == {"messages": 3, "attempts": 3, "connections": 2}


def test_delay_past_the_timeout_is_a_timeout_and_the_next_send_works(fake: FakeTwilio) -> None:
    # Given
    twilio = _notifier(fake, timeout=0.5)
    try:
        twilio.send(OutboundMessage("n-0", _to(0), BODY))
        fake.delay_next(1, 2.0)

        # When
        with pytest.raises(DeliveryTimeoutError):
            twilio.send(OutboundMessage("n-1", _to(1), BODY))
        receipt = twilio.send(OutboundMessage("n-2", _to(2), BODY))
    finally:
        twilio.close()

    # Then: the late answer never reached the next send (a fresh connection got its own)
    seen = fake.wait_for(3)
    assert receipt.provider_ref == seen[2]["sid"]
    assert fake.stats()["connections"] == 2


def test_held_create_released_answers_on_the_same_connection(fake: FakeTwilio) -> None:
    # Given: one thread (one twilio client, one pooled connection) sends, then sends again
    # once the next create is scripted to be held
    twilio = _notifier(fake)
    first_sent, held_scripted = threading.Event(), threading.Event()
    result: list[str] = []

    def send_two() -> None:
        twilio.send(OutboundMessage("n-0", _to(0), BODY))
        first_sent.set()
        held_scripted.wait(5)
        result.append(twilio.send(OutboundMessage("n-1", _to(1), BODY)).provider_ref)

    sender = threading.Thread(target=send_two)
    try:
        sender.start()
        assert first_sent.wait(5)
        fake.hold_next(1, taken=True)
        held_scripted.set()

        # When
        fake.wait_held(1, timeout=5)
        fake.release_held()
        sender.join(timeout=10)
    finally:
        twilio.close()

    # Then
    seen = fake.wait_for(2)
    assert result == [seen[1]["sid"]]
    assert fake.stats()["connections"] == 1


def test_held_untaken_create_abandoned_by_a_timed_out_client(fake: FakeTwilio) -> None:
    # Given
    fake.hold_next(1, taken=False)
    twilio = _notifier(fake, timeout=0.5)

    # When
    try:
        with pytest.raises(DeliveryTimeoutError):
            twilio.send(OutboundMessage("n-0", _to(0), BODY))
    finally:
        twilio.close()

    # Then: the fake saw the client hang up and never took the message
    with fake._cond:
        assert fake._cond.wait_for(lambda: fake.abandoned == 1, timeout=5)
    assert fake.messages == []


def test_fake_in_its_own_process_counts_what_the_twilio_client_sent() -> None:
    # Given
    with FakeTwilioProcess(keep_alive=True) as fake:
        twilio = _notifier(fake)

        # When
        try:
            for i in range(5):
                twilio.send(OutboundMessage(f"n-{i}", _to(i), BODY))
        finally:
            twilio.close()
        stats = fake.stats()
        fake.clear()
        cleared = fake.stats()
        pid = fake.pid

    # Then: one connection for the five creates, one more for the stats request itself
    assert stats == {"messages": 5, "attempts": 5, "connections": 2}
    assert cleared["messages"] == cleared["attempts"] == 0
    assert pid is not None and fake.pid is None
