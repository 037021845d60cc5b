"""``Publisher.publish_many`` (pipelined confirms) and ``publish_lines`` on the real RabbitMQ.

Every outcome is checked against what RabbitMQ really holds: a message reported accepted must
be on its queue, one reported failed carries the reason the per-message path would give. Broker
trouble is produced for real: a full ``reject-publish`` queue (nack), a routing key without a
binding (basic.return), an exchange deleted mid-way (channel closed with 404), and a TCP relay
between the publisher and RabbitMQ that is cut, stalled, closed, or that accepts new connections
and hangs up at once (as a load balancer with no broker behind it can).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pytest
from pika.adapters.utils import io_services_utils

import producers.rabbitmq as rabbitmq
from infra.amqp import PublishError, publish_confirmed
from infra.settings import Settings
from producers.generator import generate_registry
from producers.rabbitmq import REASON_NACK, Message, Outcome, Publisher
from tests.fakes.tcp_relay import TcpRelay
from tests.support import env_for, queue_depth

pytestmark = pytest.mark.integration

TODAY = dt.date(2026, 6, 1)
#: A publish_many call that takes longer than this is a hang, whatever the case.
CALL_DEADLINE_S = 30.0
CONNECTION_FAILED = "connection to RabbitMQ failed: "
ACCEPTED: Outcome = (True, "")


# ---- helpers ---------------------------------------------------------------------------------
def _messages(n: int, routing_key: str = "license.issued", prefix: str = "m") -> list[Message]:
    return [(json.dumps({"n": i}).encode(), routing_key, f"{prefix}-{i:05d}") for i in range(n)]


def _drain(amqp_url: str, queue: str, expected: int) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message ready on ``queue`` (acked, so it is emptied), in queue order."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    got: list[tuple[pika.BasicProperties, bytes]] = []
    try:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=500)
        for method, properties, body in channel.consume(queue, inactivity_timeout=2):
            if method is None:
                break
            got.append((properties, body))
            channel.basic_ack(method.delivery_tag)
            if len(got) > expected + 100:
                break  # far more than published: stop, the assertion will say so
        channel.cancel()
    finally:
        conn.close()
    return got


def _call_within(seconds: float, fn: Callable[[], list[Outcome]]) -> tuple[list[Outcome], float]:
    """``fn()`` and its duration; fails (instead of hanging the suite) after ``seconds``.

    The call runs in a helper thread only so that a hang becomes a failure; inside it, the
    threads alive before and after the call are compared: publish_many must leave none.
    """
    box: dict[str, object] = {}

    def target() -> None:
        before = set(threading.enumerate())
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0
        box["new_threads"] = [
            t.name
            for t in set(threading.enumerate()) - before
            if not t.name.startswith(TcpRelay.thread_prefix)
        ]

    helper = threading.Thread(target=target, name="publish-many-call", daemon=True)
    helper.start()
    helper.join(seconds)
    assert not helper.is_alive(), f"publish_many did not return within {seconds:g} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    assert box["new_threads"] == [], f"threads outlived the call: {box['new_threads']}"
    return box["result"], box["elapsed"]  # type: ignore[return-value]


@dataclass
class Scratch:
    """Extra exchanges and queues of one test, deleted afterwards."""

    amqp_url: str
    namespace: str
    exchanges: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)

    def _run(self, fn: Callable[[pika.adapters.blocking_connection.BlockingChannel], None]) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            fn(conn.channel())
        finally:
            conn.close()

    def exchange(self, name: str) -> str:
        full = f"{self.namespace}.{name}"
        self.exchanges.append(full)
        self._run(lambda ch: ch.exchange_declare(full, "topic", durable=True))
        return full

    def queue(self, name: str, exchange: str, binding: str, **arguments: object) -> str:
        full = f"{self.namespace}.{name}"
        self.queues.append(full)

        def declare(ch: pika.adapters.blocking_connection.BlockingChannel) -> None:
            ch.queue_declare(full, durable=True, arguments=arguments or None)
            ch.queue_bind(full, exchange, routing_key=binding)

        self._run(declare)
        return full

    def delete_exchange(self, name: str) -> None:
        self._run(lambda ch: ch.exchange_delete(name))

    def clean(self) -> None:
        def delete(ch: pika.adapters.blocking_connection.BlockingChannel) -> None:
            for queue in self.queues:
                ch.queue_delete(queue)
            for exchange in self.exchanges:
                ch.exchange_delete(exchange)

        self._run(delete)


@pytest.fixture
def scratch(settings: Settings) -> Iterator[Scratch]:
    s = Scratch(settings.amqp_url, settings.namespace)
    try:
        yield s
    finally:
        s.clean()


@pytest.fixture
def relay_tcp(settings: Settings) -> Iterator[TcpRelay]:
    parts = urlsplit(settings.amqp_url)
    relay = TcpRelay((parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        yield relay
    finally:
        relay.stop()


# ---- all confirmed ---------------------------------------------------------------------------
def test_5000_messages_are_all_confirmed_and_queued_once_in_order(settings: Settings) -> None:
    # Given 5,000 messages for the ingest exchange
    msgs = _messages(5000)

    # When they are published with pipelined confirms
    with Publisher.from_settings(settings) as publisher:
        outcomes, _elapsed = _call_within(CALL_DEADLINE_S, lambda: publisher.publish_many(msgs))

    # Then each is accepted, one outcome per message
    assert outcomes == [ACCEPTED] * 5000
    # and the relay queue holds each exactly once, in publishing order
    assert queue_depth(settings, settings.relay_queue) == 5000
    queued = _drain(settings.amqp_url, settings.relay_queue, 5000)
    assert [p.message_id for p, _ in queued] == [m[2] for m in msgs]
    assert [body for _, body in queued] == [m[0] for m in msgs]
    # with the properties of the per-message path (and the sequence header)
    now_ms = time.time() * 1000
    for seq, (props, _body) in enumerate(queued, start=1):
        assert props.delivery_mode == pika.DeliveryMode.Persistent.value
        assert props.content_type == "application/json"
        assert abs(props.headers["timestamp_in_ms"] - now_ms) < 120_000
        assert props.timestamp == props.headers["timestamp_in_ms"] // 1000
        assert props.headers[rabbitmq.SEQ_HEADER] == seq


def test_nothing_to_publish_gives_no_outcomes(settings: Settings) -> None:
    # Given / When an empty input
    with Publisher.from_settings(settings) as publisher:
        outcomes = publisher.publish_many([])

    # Then there is nothing to report and nothing queued
    assert outcomes == []
    assert queue_depth(settings, settings.relay_queue) == 0


@pytest.mark.parametrize(
    ("window", "n"),
    [(1, 30), (7, 200), (50, 1000), (1000, 10), (5000, 300)],
)
def test_every_window_size_gives_every_message_its_outcome(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, window: int, n: int
) -> None:
    # Given n messages, and a record of the most messages ever unconfirmed at once
    peak = 0
    pump = rabbitmq._ConfirmPipeline._pump

    def recording_pump(self: rabbitmq._ConfirmPipeline) -> None:
        nonlocal peak
        pump(self)
        peak = max(peak, self._unconfirmed)

    monkeypatch.setattr(rabbitmq._ConfirmPipeline, "_pump", recording_pump)

    # When they are published with the window
    with Publisher.from_settings(settings) as publisher:
        outcomes, _ = _call_within(
            CALL_DEADLINE_S, lambda: publisher.publish_many(_messages(n), window=window)
        )

    # Then every message is accepted and queued, and the window was never exceeded
    assert outcomes == [ACCEPTED] * n
    assert queue_depth(settings, settings.relay_queue) == n
    assert 1 <= peak <= min(window, n)


@pytest.mark.parametrize("window", [0, -1])
def test_a_window_below_one_is_refused(settings: Settings, window: int) -> None:
    with Publisher.from_settings(settings) as publisher, pytest.raises(ValueError, match="window"):
        publisher.publish_many(_messages(1), window=window)


# ---- returned and nacked ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "unroutable", "window"),
    [
        (100, {50}, 1000),
        (100, {0}, 1000),
        (100, {99}, 1000),
        (300, {10, 11, 150, 299}, 7),
    ],
)
def test_an_unroutable_message_fails_while_its_neighbours_are_accepted(
    settings: Settings, scratch: Scratch, n: int, unroutable: set[int], window: int
) -> None:
    # Given an exchange with one queue bound to one key, and messages for that key except
    # some for a key nothing is bound to
    exchange = scratch.exchange("routes")
    queue = scratch.queue("bound", exchange, "bound.key")
    msgs = [
        (body, "nowhere.key" if i in unroutable else "bound.key", message_id)
        for i, (body, _key, message_id) in enumerate(_messages(n))
    ]

    # When they are published
    with Publisher(settings.amqp_url, exchange) as publisher:
        outcomes, _ = _call_within(
            CALL_DEADLINE_S, lambda: publisher.publish_many(msgs, window=window)
        )

    # Then exactly the unroutable ones failed, with the per-message path's reason
    expected = [
        (False, "no queue is bound for routing key 'nowhere.key'") if i in unroutable else ACCEPTED
        for i in range(n)
    ]
    assert outcomes == expected
    # and the bound queue holds exactly the others
    queued = _drain(settings.amqp_url, queue, n)
    assert [p.message_id for p, _ in queued] == [
        m[2] for i, m in enumerate(msgs) if i not in unroutable
    ]


@pytest.mark.parametrize(("capacity", "extra", "window"), [(10, 5, 1000), (3, 40, 7), (100, 1, 1)])
def test_messages_a_full_queue_refuses_are_nacked(
    settings: Settings, scratch: Scratch, capacity: int, extra: int, window: int
) -> None:
    # Given a queue that refuses publishes once it holds `capacity` messages
    exchange = scratch.exchange("bounded")
    queue = scratch.queue(
        "bounded", exchange, "#", **{"x-max-length": capacity, "x-overflow": "reject-publish"}
    )
    msgs = _messages(capacity + extra)

    # When capacity + extra messages are published
    with Publisher(settings.amqp_url, exchange) as publisher:
        outcomes, _ = _call_within(
            CALL_DEADLINE_S, lambda: publisher.publish_many(msgs, window=window)
        )

    # Then the first `capacity` are accepted and exactly `extra` are nacked
    assert outcomes == [ACCEPTED] * capacity + [(False, REASON_NACK)] * extra
    assert queue_depth(settings, queue) == capacity


# ---- the connection fails mid-way ------------------------------------------------------------
@dataclass(frozen=True)
class Breakage:
    name: str
    #: Done just before the message at ``at`` is handed to publish_many.
    act: Callable[[TcpRelay, Scratch, str], None]
    at: int
    #: The exact reason every message from ``at`` on gets, or None: any connection failure.
    reason: str | None = None


BREAKAGES = [
    Breakage("exchange deleted: channel closed 404", lambda r, s, ex: s.delete_exchange(ex), 300),
    Breakage("TCP connection cut", lambda r, s, ex: r.cut(), 300),
    Breakage(
        "broker stops answering",
        lambda r, s, ex: r.stall(),
        300,
        reason=CONNECTION_FAILED + "no confirm within 2 s",
    ),
    Breakage("connection refused before the first message", lambda r, s, ex: r.refuse(), 0),
]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.name for b in BREAKAGES])
def test_a_failing_connection_fails_every_unconfirmed_message_and_returns(
    settings: Settings, scratch: Scratch, relay_tcp: TcpRelay, breakage: Breakage
) -> None:
    # Given a publisher connected through a TCP relay, and 1,000 messages for a bound queue
    exchange = scratch.exchange("fragile")
    queue = scratch.queue("fragile", exchange, "#")
    n, window, timeout = 1000, 50, 2.0
    msgs = _messages(n)

    def source() -> Iterator[Message]:
        for i, message in enumerate(msgs):
            if i == breakage.at:
                breakage.act(relay_tcp, scratch, exchange)
            yield message

    publisher = Publisher(relay_tcp.url(settings.amqp_url), exchange)
    try:
        # When the connection breaks while they are published
        outcomes, elapsed = _call_within(
            CALL_DEADLINE_S,
            lambda: publisher.publish_many(source(), window=window, confirm_timeout=timeout),
        )
    finally:
        relay_tcp.cut()  # the blocking connection too, so closing it cannot wait on a stall
        publisher.close()

    # Then the call returned soon, with an outcome for every message
    assert elapsed < timeout + 10
    assert len(outcomes) == n
    # every message from the breakage on failed with a connection reason
    for i, (accepted, reason) in enumerate(outcomes[breakage.at :], start=breakage.at):
        assert not accepted, i
        if breakage.reason is not None:
            assert reason == breakage.reason, i
        else:
            assert reason.startswith(CONNECTION_FAILED), (i, reason)
    # those before were confirmed while the window moved on (the first n - window at least)
    assert outcomes[: max(breakage.at - window, 0)] == [ACCEPTED] * max(breakage.at - window, 0)
    # and none is reported accepted unless RabbitMQ really holds it
    queued = {p.message_id for p, _ in _drain(settings.amqp_url, queue, n)}
    accepted = {m[2] for m, (ok, _) in zip(msgs, outcomes, strict=True) if ok}
    assert accepted <= queued
    assert queued <= {m[2] for m in msgs[: breakage.at]}


# ---- a peer that accepts, then hangs up -------------------------------------------------------
#: pika's text when the socket it was told is connected has been reset before it looked.
GETPEERNAME_FAILED = "ValueError: Expected connected socket, but getpeername() failed"


def _wait_until_reset(sock: socket.socket, timeout: float = 5.0) -> None:
    """Return once the peer's RST has reached ``sock`` (POLLHUP/POLLERR), reading nothing."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(events & (select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(100)):
            return
    raise AssertionError(f"the peer's reset did not arrive within {timeout:g} s")


def test_a_peer_resetting_a_connection_pika_saw_connected_fails_every_message_and_returns(
    settings: Settings, relay_tcp: TcpRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a publisher connected through the relay, which from now on resets each new
    # connection once pika has found the socket connected (SO_ERROR 0) and before it links
    # its stream to it: the order a load balancer produces by chance, made certain here by
    # holding pika's stream linkup until the RST is on the socket
    publisher = Publisher(relay_tcp.url(settings.amqp_url), settings.exchange)
    connected = threading.Event()
    raised: list[BaseException] = []
    linkup = io_services_utils._AsyncStreamConnector.__init__

    def linkup_after_reset(self: object, *args: object, **kwargs: object) -> None:
        connected.set()
        _wait_until_reset(kwargs["sock"])  # type: ignore[arg-type]
        try:
            linkup(self, *args, **kwargs)  # type: ignore[arg-type]
        except BaseException as exc:
            raised.append(exc)
            raise

    relay_tcp.hang_up(reset=True, gate=connected)
    try:
        # When 50 messages are published
        with monkeypatch.context() as patch:
            patch.setattr(io_services_utils._AsyncStreamConnector, "__init__", linkup_after_reset)
            outcomes, _ = _call_within(
                CALL_DEADLINE_S, lambda: publisher.publish_many(_messages(50), window=10)
            )
    finally:
        publisher.close()

    # Then pika did raise its getpeername ValueError, and it came back as every message's
    # connection failure instead of out of publish_many
    assert [type(e) for e in raised] == [ValueError]
    assert len(outcomes) == 50
    assert {accepted for accepted, _ in outcomes} == {False}
    assert {reason for _, reason in outcomes} == {_reason_text(raised[0])}
    assert outcomes[0][1].startswith(CONNECTION_FAILED + GETPEERNAME_FAILED)
    # and nothing reached RabbitMQ
    assert queue_depth(settings, settings.relay_queue) == 0


def _reason_text(error: BaseException) -> str:
    return f"{CONNECTION_FAILED}{type(error).__name__}: {error}"


@pytest.mark.parametrize("reset", [False, True], ids=["closed (FIN)", "reset (RST, SO_LINGER 0)"])
def test_a_peer_that_accepts_and_hangs_up_at_once_fails_every_message_every_time(
    settings: Settings, relay_tcp: TcpRelay, reset: bool
) -> None:
    # Given a publisher connected through the relay, which from now on accepts each new
    # connection and closes it at once (unpatched: pika meets the hang-up wherever it falls)
    publisher = Publisher(relay_tcp.url(settings.amqp_url), settings.exchange)
    relay_tcp.hang_up(reset=reset)
    calls, n = 100, 5

    def publish_repeatedly() -> list[Outcome]:
        outcomes: list[Outcome] = []
        for _ in range(calls):
            outcomes += publisher.publish_many(_messages(n), window=2)
        return outcomes

    try:
        # When messages are published, in 100 calls
        outcomes, _ = _call_within(CALL_DEADLINE_S, publish_repeatedly)
    finally:
        publisher.close()

    # Then every call returned, every message with a connection failure, never an exception
    assert len(outcomes) == calls * n
    failed = [(ok, reason.startswith(CONNECTION_FAILED)) for ok, reason in outcomes]
    assert failed == [(False, True)] * (calls * n), {r for _, r in outcomes}
    # and nothing reached RabbitMQ
    assert queue_depth(settings, settings.relay_queue) == 0


def test_an_error_raised_by_the_input_propagates_after_the_connection_is_closed(
    settings: Settings,
) -> None:
    # Given an input that fails after 20 messages
    def source() -> Iterator[Message]:
        yield from _messages(20)
        raise OSError("disk read failed")

    # When it is published, then the input's error comes out, not a hang or a swallow
    with Publisher.from_settings(settings) as publisher:
        with pytest.raises(OSError, match="disk read failed"):
            _call_within(CALL_DEADLINE_S, lambda: publisher.publish_many(source(), window=7))
        # and the publisher still works for single messages
        publisher.publish_raw(b"{}", "license.issued")


# ---- publish_lines ---------------------------------------------------------------------------
def _event_lines(n: int, prefix: str) -> list[bytes]:
    return [e.to_json_bytes() for e in generate_registry(n, TODAY, prefix=prefix).events[:n]]


def _landline_line(good: bytes) -> bytes:
    envelope = json.loads(good)
    envelope["event_id"] = str(uuid.uuid4())
    envelope["payload"]["holder_mobile"] = "029-88886666"
    return json.dumps(envelope, ensure_ascii=False).encode()


BAD_LINES = {
    "malformed_json": b'{"event_type": "license.issued',
    "schema_violation": None,  # a good event with a landline as mobile, built per test
}


def _mixed_file(n_good: int) -> tuple[list[bytes], dict[int, str], dict[int, str]]:
    """Lines of ``n_good`` events with bad and blank lines between; by 1-based line number:
    the event id of each good line, and the reason of each bad one."""
    good = _event_lines(n_good, prefix="LICLINES")
    lines: list[bytes] = []
    good_at: dict[int, str] = {}
    bad_at: dict[int, str] = {}
    for i, line in enumerate(good):
        lines.append(line)
        good_at[len(lines)] = json.loads(line)["event_id"]
        if i % 97 == 5:
            lines.append(BAD_LINES["malformed_json"])  # type: ignore[arg-type]
            bad_at[len(lines)] = "malformed_json"
        if i % 211 == 7:
            lines.append(b"   ")
        if i % 301 == 9:
            lines.append(_landline_line(line))
            bad_at[len(lines)] = "schema_violation"
    return lines, good_at, bad_at


def test_cli_publish_reports_bad_lines_by_number_and_queues_only_good_ones_in_order(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a file of 1,200 events with malformed, invalid and blank lines between them
    lines, good_at, bad_at = _mixed_file(1200)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    # When `govnotify publish -v` loads it
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "publish", "-v", str(path)],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Then each bad line is named by its number with its reason, each good one as accepted
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    rejected = dict(re.findall(r"^line (\d+): rejected (\w+):", result.stdout, re.MULTILINE))
    assert {int(k): v for k, v in rejected.items()} == bad_at
    accepted = re.findall(r"^line (\d+): accepted (\S+)$", result.stdout, re.MULTILINE)
    assert {int(k): v for k, v in accepted} == good_at
    assert f"{len(good_at)} accepted, {len(bad_at)} rejected" in result.stdout
    # and the relay queue holds exactly the good events, once each, in file order
    queued = _drain(settings.amqp_url, settings.relay_queue, len(good_at))
    assert [p.message_id for p, _ in queued] == list(good_at.values())


@pytest.mark.parametrize("validate", [True, False])
def test_publish_lines_keeps_indexes_and_reasons(settings: Settings, validate: bool) -> None:
    # Given good lines, a malformed one and blank ones
    good = _event_lines(3, prefix="LICIDX")
    lines = [good[0], b"", good[1], b'{"event_type": "license.issued', b"  \n", good[2]]

    # When they are published
    with Publisher.from_settings(settings) as publisher:
        results = publisher.publish_lines(lines, validate=validate, window=2)

    # Then there is one result per non-blank line, indexed by line number
    assert [r.index for r in results] == [1, 3, 4, 6]
    event_ids = [json.loads(line)["event_id"] for line in good]
    if validate:
        # the malformed line is rejected with its reason and never sent
        assert [(r.accepted, r.reason) for r in results] == [
            (True, ""),
            (True, ""),
            (False, "malformed_json"),
            (True, ""),
        ]
        assert [r.event_id for r in results if r.accepted] == event_ids
        assert queue_depth(settings, settings.relay_queue) == 3
    else:
        # unvalidated, every line goes out as it is (the relay rejects bad ones later)
        assert all(r.accepted and r.event_id is None for r in results)
        assert queue_depth(settings, settings.relay_queue) == 4


def test_publish_lines_after_a_cut_reports_good_lines_not_confirmed_and_bad_ones_rejected(
    settings: Settings, relay_tcp: TcpRelay
) -> None:
    # Given a file with bad lines spread through it, and the connection cut at line 400
    lines, good_at, bad_at = _mixed_file(600)
    cut_at = 400

    def source() -> Iterator[bytes]:
        for number, line in enumerate(lines, start=1):
            if number == cut_at:
                relay_tcp.cut()
            yield line

    # When it is published through the failing connection
    publisher = Publisher(
        relay_tcp.url(settings.amqp_url),
        settings.exchange,
        topology=(settings.relay_queue, settings.dead_letter_queue),
    )
    try:
        t0 = time.monotonic()
        results = publisher.publish_lines(source(), window=50)
        elapsed = time.monotonic() - t0
    finally:
        publisher.close()

    # Then every non-blank line has its result, in order, by line number
    assert elapsed < CALL_DEADLINE_S
    assert [r.index for r in results] == sorted([*good_at, *bad_at])
    by_line = {r.index: r for r in results}
    # bad lines keep their validation reason, wherever they are
    assert {n: by_line[n].reason for n in bad_at} == bad_at
    # good lines from the cut on are not confirmed, with the connection reason
    for number in good_at:
        r = by_line[number]
        if number >= cut_at:
            assert (r.accepted, r.reason) == (False, "not_confirmed"), number
            assert r.detail.startswith(CONNECTION_FAILED), r.detail
    # and every line reported accepted is on the relay queue
    queued = {p.message_id for p, _ in _drain(settings.amqp_url, settings.relay_queue, 600)}
    assert {r.event_id for r in results if r.accepted} <= queued
    assert any(r.accepted for r in results)


# ---- publish_confirmed: all or raise ----------------------------------------------------------
def test_publish_confirmed_returns_the_count_only_when_every_message_is_queued(
    settings: Settings, scratch: Scratch
) -> None:
    # Given an exchange with one queue bound to one key
    exchange = scratch.exchange("confirmed")
    queue = scratch.queue("bound", exchange, "bound.key")

    # When three messages for it are published, then one for a key nothing is bound to
    published = publish_confirmed(settings.amqp_url, exchange, _messages(3, "bound.key"))
    with pytest.raises(PublishError) as refused:
        publish_confirmed(settings.amqp_url, exchange, _messages(1, "nowhere.key", "x"))
    with pytest.raises(PublishError) as several:
        publish_confirmed(
            settings.amqp_url, exchange, _messages(2, "bound.key", "y") + _messages(1, "no.key")
        )

    # Then the first call said 3 and they are queued; the refusals name the reason
    assert published == 3
    assert str(refused.value) == "no queue is bound for routing key 'nowhere.key'"
    assert str(several.value) == (
        "1 of 3 messages not confirmed: no queue is bound for routing key 'no.key'"
    )
    assert [p.message_id for p, _ in _drain(settings.amqp_url, queue, 5)] == [
        "m-00000",
        "m-00001",
        "m-00002",
        "y-00000",
        "y-00001",
    ]
