"""AMQP plumbing shared by every publisher: pipelined publisher confirms, queue types.

:class:`ConfirmPipeline` publishes many messages on a ``SelectConnection`` with up to
``window`` of them unconfirmed at once and reports, per message, whether RabbitMQ took it.
Upstream bulk loads (``producers.rabbitmq.Publisher.publish_many``) and the hand-over of jobs
to the work queues (:mod:`infra.jobs`) both use it: a confirm per message limits a publisher
to about a thousand messages a second, pipelined confirms to what the broker can write.
:func:`publish_confirmed` is the all-or-nothing form, for a process that publishes an event of
its own onto the ingest exchange (the surveys worker's default rating) without the producers.
A pipeline opens a connection of its own, unless it is given a :class:`KeptConnection`, which
a frequent publisher (the job hand-over) keeps open between its calls.

Every message carries the AMQP ``user_id`` property: the user of the connection's URL
(:func:`amqp_user`). RabbitMQ refuses a message whose ``user_id`` is not the connection's login
(unless that user has the ``impersonator`` tag, which no publisher may be given), so the relay
can trust it to say who published an event (:mod:`infra.sources`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import pika
from pika.exceptions import AMQPError

if TYPE_CHECKING:
    from pika.adapters.select_connection import SelectConnection
    from pika.channel import Channel
    from pika.frame import Method

__all__ = [
    "DEFAULT_CONFIRM_TIMEOUT_S",
    "DEFAULT_WINDOW",
    "QUEUE_TYPES",
    "REASON_NACK",
    "SEQ_HEADER",
    "ConfirmPipeline",
    "KeptConnection",
    "KeptConnectionPool",
    "Message",
    "Outcome",
    "PublishError",
    "amqp_user",
    "properties",
    "publish_confirmed",
    "publish_kept",
    "queue_arguments",
    "reason_connection",
    "reason_unroutable",
]

log = logging.getLogger("govnotify.publisher")

#: One message for :meth:`Publisher.publish_many`: body, routing key, message id (or None).
Message = tuple[bytes, str, str | None]
#: What became of one message: ``(True, "")`` once RabbitMQ acked it, else ``(False, reason)``.
Outcome = tuple[bool, str]

#: Messages published but not yet confirmed, at most, in ``publish_many``: enough to keep the
#: broker busy (confirms come back in batches), small enough to bound memory on a huge file.
DEFAULT_WINDOW = 1000
#: ``publish_many`` gives up when RabbitMQ has not confirmed anything (or not finished opening
#: the connection) for this long: a broker that stopped answering must not hang a bulk load.
DEFAULT_CONFIRM_TIMEOUT_S = 30.0
#: Header carrying a message's position in its ``publish_many`` call (its delivery tag). A
#: basic.return has no delivery tag, and message ids may be missing or repeated in an input
#: file, so this is what matches a returned message to its result.
SEQ_HEADER = "publish_seq"

REASON_NACK = "RabbitMQ refused the message (nack)"
#: RabbitMQ queue types govnotify declares its queues with (``GOVNOTIFY_RABBITMQ_QUEUE_TYPE``).
QUEUE_TYPES = ("classic", "quorum")


class PublishError(Exception):
    """Raised when RabbitMQ did not confirm a message (nacked, unroutable, or connection lost)."""


def queue_arguments(queue_type: str) -> dict[str, str]:
    """The ``queue_declare`` arguments that give a queue its type.

    ``classic`` adds nothing, so queues are declared exactly as before this setting existed
    and queues made then still match. ``quorum`` adds ``x-queue-type: quorum`` (durable,
    replicated over the RabbitMQ cluster; one node works too). RabbitMQ refuses to redeclare a
    queue with another type (406 PRECONDITION_FAILED, "inequivalent arg 'x-queue-type'"): to
    switch a namespace, drain and delete its queues first, or use a new namespace.
    """
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue_type must be one of {QUEUE_TYPES}, not {queue_type!r}")
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def reason_unroutable(routing_key: str) -> str:
    return f"no queue is bound for routing key {routing_key!r}"


def reason_connection(error: BaseException | str) -> str:
    if isinstance(error, str):
        return f"connection to RabbitMQ failed: {error}"
    text = str(error)
    detail = f": {text}" if text and text != "()" else ""
    return f"connection to RabbitMQ failed: {type(error).__name__}{detail}"


def amqp_user(parameters: pika.connection.Parameters | str) -> str | None:
    """The user a connection to ``parameters`` (or an AMQP URL) logs in as; None without one
    (e.g. a TLS client certificate login)."""
    if isinstance(parameters, str):
        parameters = pika.URLParameters(parameters)
    username = getattr(parameters.credentials, "username", None)
    return username if isinstance(username, str) and username else None


def properties(
    message_id: str | None,
    now: float,
    seq: int | None = None,
    *,
    user_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> pika.BasicProperties:
    """Persistent JSON with the publish time: AMQP ``timestamp`` (seconds) and, in a header,
    milliseconds, so the relay can report how long events waited in the queue.

    ``user_id`` is the publisher's AMQP user (RabbitMQ checks it against the login; the relay
    authorises on it); ``headers`` are added as they are (e.g. ``govnotify-http-source``).
    """
    all_headers: dict[str, object] = dict(headers or {})
    all_headers["timestamp_in_ms"] = int(now * 1000)
    if seq is not None:
        all_headers[SEQ_HEADER] = seq
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type="application/json",
        message_id=message_id,
        timestamp=int(now),
        user_id=user_id,
        headers=all_headers,
    )


def publish_confirmed(
    amqp_url: str,
    exchange: str,
    messages: Iterable[Message],
    *,
    window: int = DEFAULT_WINDOW,
    confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Publish ``(body, routing key, message id)`` triples to ``exchange``; all or raise.

    Each message goes out as ``producers.rabbitmq.Publisher.publish_raw`` sends it (persistent,
    mandatory, :func:`properties`, ``user_id`` = the URL's user, ``headers`` added) plus a
    ``publish_seq`` header, on a connection of its own with pipelined confirms
    (:class:`ConfirmPipeline`). Returns how many were published.

    Raises:
      PublishError: unless RabbitMQ confirmed (acked and did not return) every message; the
        reason of one message alone, as ``publish_raw`` gives it, else how many failed and the
        first reason.
    """
    outcomes = ConfirmPipeline(
        pika.URLParameters(amqp_url),
        exchange,
        messages,
        window=window,
        confirm_timeout=confirm_timeout,
        headers=headers,
    ).run()
    failed = [reason for ok, reason in outcomes if not ok]
    if failed:
        if len(outcomes) == 1:
            raise PublishError(failed[0])
        raise PublishError(f"{len(failed)} of {len(outcomes)} messages not confirmed: {failed[0]}")
    return len(outcomes)


class ConfirmPipeline:
    """One ``publish_many`` call: a SelectConnection whose ioloop runs in the calling thread.

    Publishing is driven from callbacks: once the channel is in confirm mode, messages are
    taken from the input while fewer than ``window`` are unconfirmed; each basic.ack/nack
    (``multiple=True`` covering every tag up to it) settles messages and makes room for more.
    Delivery tags count from 1 on the channel, so tag ``n`` is the ``n``-th message and its
    result sits at ``results[n - 1]``. RabbitMQ sends basic.return before the basic.ack of the
    same message, so a returned message is remembered (by its ``publish_seq`` header) and
    reported failed when its ack arrives. A watchdog timer enforces ``confirm_timeout`` and
    keeps the caller's blocking connection alive; the ioloop stops when the connection is
    closed, after success or failure.

    On a :class:`KeptConnection` the run takes a channel of its own on the kept connection and
    closes only that channel when every message is settled; its ioloop stops then, and the
    connection waits, open, for the next run. A failure closes the connection as before (the
    next run opens a new one). A kept connection found closed before anything was published
    sets :attr:`stale_connection`: running the same messages again is safe.
    """

    #: Seconds between watchdog runs.
    tick_s = 0.25
    #: Longest a pump keeps the ioloop from reading confirms and flushing writes.
    pump_slice_s = 0.05
    #: After asking the connection to close, how long to wait for it before stopping anyway.
    close_grace_s = 5.0

    def __init__(
        self,
        parameters: pika.connection.Parameters,
        exchange: str,
        messages: Iterable[Message],
        *,
        window: int,
        confirm_timeout: float,
        keepalive: Callable[[], None] = lambda: None,
        headers: Mapping[str, str] | None = None,
        kept: KeptConnection | None = None,
    ) -> None:
        self._parameters = parameters
        #: The connection to run on and leave open; None: one of its own, closed at the end.
        self._kept = kept
        #: Timers this run set on a kept connection's ioloop: cancelled at the run's end.
        self._timers: list[object] = []
        #: A kept connection that turned out closed before anything was published on it.
        self.stale_connection = False
        #: Every message says who publishes it; RabbitMQ refuses one that lies.
        self._user_id = amqp_user(parameters)
        self._headers = dict(headers or {})
        self._exchange = exchange
        self._messages = iter(messages)
        self._window = window
        self._confirm_timeout = confirm_timeout
        self._keepalive = keepalive
        #: Outcome per message by delivery tag - 1; None while unconfirmed.
        self._results: list[Outcome | None] = []
        #: Delivery tag -> why, for messages RabbitMQ returned and has not acked yet.
        self._returned: dict[int, str] = {}
        self._oldest = 1  # smallest delivery tag not yet settled
        self._unconfirmed = 0
        self._exhausted = False
        self._ready = False  # channel open and in confirm mode
        self._stopping = False  # no more publishing: all done, or failed
        self._failure: str | None = None
        self._error: Exception | None = None  # raised by the input; re-raised by run()
        self._last_progress = time.monotonic()
        self._closing_since: float | None = None
        self._aborted = False
        self._connection: SelectConnection | None = None
        self._channel: Channel | None = None

    # ---- the call -----------------------------------------------------------------------
    def run(self) -> list[Outcome]:
        first = next(self._messages, None)
        if first is None:
            return []  # nothing to send: no connection needed
        self._messages = _prepend(first, self._messages)
        if self._kept is not None:
            self._run_kept(self._kept)
            return self._outcomes()
        connection = pika.SelectConnection(
            self._parameters,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self._connection = connection
        try:
            connection.ioloop.call_later(self.tick_s, self._watchdog)
            self._run_ioloop(connection)
        finally:
            if not connection.is_closed:
                self._drop_interrupted(connection)
            connection.ioloop.close()
        return self._outcomes()

    def _run_kept(self, kept: KeptConnection) -> None:
        connection, fresh = kept.attach(self)
        self._connection = connection
        try:
            if not fresh:
                # Open already: its open callback will not come again.
                self._call_later(0, lambda: self._on_connection_open(connection))
            self._call_later(self.tick_s, self._watchdog)
            self._run_ioloop(connection)
        finally:
            for timer in self._timers:
                connection.ioloop.remove_timeout(timer)
            if not connection.is_closed and not self._done():
                self._drop_interrupted(connection)
            kept.detach(self)
        self.stale_connection = not fresh and not self._results and self._failure is not None

    def _drop_interrupted(self, connection: SelectConnection) -> None:
        """A BaseException escaped the ioloop (e.g. KeyboardInterrupt), pika raised out of it,
        or the connection would not close: drop it, and run the loop briefly so the socket is
        released."""
        self._fail("publishing interrupted")
        self._abort_stream()
        connection.ioloop.call_later(self.close_grace_s, connection.ioloop.stop)
        self._run_ioloop(connection)

    def _outcomes(self) -> list[Outcome]:
        if self._error is not None:
            raise self._error
        reason = self._failure or reason_connection("closed before every message was confirmed")
        outcomes = [r if r is not None else (False, reason) for r in self._results]
        for _ in self._messages:  # never sent: the connection is gone
            outcomes.append((False, reason))
        return outcomes

    def _run_ioloop(self, connection: SelectConnection) -> None:
        """Run the ioloop until it is stopped; what pika raises out of it is a lost connection.

        pika does not report every socket failure through the connection's callbacks. A peer
        that accepts the TCP connection and resets it at once (a load balancer in front of
        RabbitMQ with no broker behind it) makes ``getpeername()`` fail in
        ``pika.adapters.utils.io_services_utils._AsyncStreamConnector.__init__``, whose
        ``ValueError("Expected connected socket, but getpeername() failed …")`` propagates
        out of ``ioloop.start()`` with the connection still "opening". Any ``Exception`` out
        of the loop is therefore taken as a connection failure (logged with its traceback:
        it may also be a bug in a callback here); :meth:`run`'s clean-up then aborts the
        half-open connection. A ``BaseException`` (KeyboardInterrupt) still propagates.
        """
        try:
            connection.ioloop.start()
        except Exception as exc:
            log.warning("publish_many: pika raised out of its ioloop", exc_info=True)
            if not self._done():
                self._fail(reason_connection(exc))

    # ---- connection and channel -----------------------------------------------------------
    def _on_connection_open(self, connection: SelectConnection) -> None:
        self._progress()
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(self, _connection: object, error: BaseException | str) -> None:
        self._fail(reason_connection(error))
        self._stop_ioloop()

    def _on_connection_closed(self, _connection: object, reason: BaseException) -> None:
        if not self._done():
            self._fail(reason_connection(reason))
        self._stop_ioloop()

    def _on_channel_open(self, channel: Channel) -> None:
        self._progress()
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_ok)

    def _on_confirm_ok(self, _frame: Method) -> None:
        self._progress()
        self._ready = True
        self._pump()

    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        if self._kept is not None and self._done():
            # Closed by us, every message settled: the connection stays for the next run.
            self._stop_ioloop()
            return
        # E.g. 404 when the exchange is gone: every unconfirmed message is lost with it.
        if not self._done():
            self._fail(reason_connection(reason))
        self._close_connection()

    # ---- publishing and confirms ----------------------------------------------------------
    def _pump(self) -> None:
        """Publish while the window has room, for at most a slice, then let the ioloop run."""
        if self._stopping or not self._ready or self._channel is None:
            return
        started = time.monotonic()
        while self._unconfirmed < self._window and not self._exhausted:
            if time.monotonic() - started > self.pump_slice_s:
                # Back soon: meanwhile confirms are read and buffered frames written out.
                self._call_later(0, self._pump)
                return
            asked = time.monotonic()
            try:
                body, routing_key, message_id = next(self._messages)
            except StopIteration:
                self._exhausted = True
                break
            except Exception as exc:
                self._error = exc
                self._fail("publishing aborted: the input raised an error")
                self._close_connection()
                return
            finally:
                # Time spent waiting for the input is not time RabbitMQ failed to confirm.
                self._last_progress += time.monotonic() - asked
            self._results.append(None)
            tag = len(self._results)
            self._unconfirmed += 1
            try:
                self._channel.basic_publish(
                    exchange=self._exchange,
                    routing_key=routing_key,
                    body=body,
                    properties=properties(
                        message_id,
                        time.time(),
                        seq=tag,
                        user_id=self._user_id,
                        headers=self._headers,
                    ),
                    mandatory=True,
                )
            except AMQPError as exc:
                self._fail(reason_connection(exc))
                self._close_connection()
                return
        if self._exhausted and self._unconfirmed == 0:
            self._stopping = True
            if self._kept is not None:
                self._close_channel()
            else:
                self._close_connection()

    def _on_return(
        self,
        _channel: Channel,
        method: pika.spec.Basic.Return,
        properties: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        tag = (properties.headers or {}).get(SEQ_HEADER)
        if (
            isinstance(tag, int)
            and 0 < tag <= len(self._results)
            and self._results[tag - 1] is None
        ):
            self._returned[tag] = reason_unroutable(method.routing_key)
        else:
            log.warning("basic.return for an unknown message (%s=%r)", SEQ_HEADER, tag)

    def _on_confirm(self, frame: Method) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        last = method.delivery_tag
        first = self._oldest if method.multiple else last
        for tag in range(first, last + 1):
            if self._results[tag - 1] is None:
                self._settle(tag, acked)
        while self._oldest <= len(self._results) and self._results[self._oldest - 1] is not None:
            self._oldest += 1
        self._progress()
        self._pump()

    def _settle(self, tag: int, acked: bool) -> None:
        returned = self._returned.pop(tag, None)
        if returned is not None:
            outcome: Outcome = (False, returned)
        elif acked:
            outcome = (True, "")
        else:
            outcome = (False, REASON_NACK)
        self._results[tag - 1] = outcome
        self._unconfirmed -= 1

    # ---- failure, deadline, shutdown ------------------------------------------------------
    def _done(self) -> bool:
        """Every message taken was confirmed and the input is exhausted."""
        return self._exhausted and self._unconfirmed == 0 and self._failure is None

    def _fail(self, reason: str) -> None:
        """Stop publishing; every unconfirmed message fails with ``reason`` (the first one)."""
        self._stopping = True
        if self._failure is None:
            self._failure = reason
            log.warning("publish_many: %s", reason)
        for index, outcome in enumerate(self._results):
            if outcome is None:
                self._results[index] = (False, self._failure)
        self._unconfirmed = 0
        self._returned.clear()

    def _watchdog(self) -> None:
        self._keepalive()
        connection = self._connection
        if connection is None or connection.is_closed:
            return
        now = time.monotonic()
        if self._closing_since is not None:
            waited = now - self._closing_since
            if waited > 2 * self.close_grace_s:
                log.warning("publish_many: connection did not close, stopping anyway")
                self._stop_ioloop()
                return
            if waited > self.close_grace_s:
                self._abort_stream()  # no answer to the AMQP close: drop the socket
        elif (not self._ready or self._unconfirmed) and (
            now - self._last_progress > self._confirm_timeout
        ):
            self._fail(reason_connection(f"no confirm within {self._confirm_timeout:g} s"))
            self._closing_since = now
            self._abort_stream()  # the broker is not answering: no graceful close to wait for
        self._call_later(self.tick_s, self._watchdog)

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    def _close_connection(self) -> None:
        connection = self._connection
        if self._aborted or connection is None or connection.is_closing or connection.is_closed:
            return
        if self._closing_since is None:
            self._closing_since = time.monotonic()
        connection.close()

    def _abort_stream(self) -> None:
        """Drop the TCP connection now, without the AMQP close handshake.

        pika has no public call for this; ``_terminate_stream`` is what its own heartbeat
        checker uses on a dead peer. The close callback then runs as for a lost connection.
        """
        connection = self._connection
        if self._aborted or connection is None or connection.is_closed:
            return
        self._aborted = True
        terminate = getattr(connection, "_terminate_stream", None)
        if terminate is not None:
            terminate(pika.exceptions.AMQPConnectionError(self._failure or "aborted"))
        elif not connection.is_closing:
            connection.close()

    def _close_channel(self) -> None:
        """Close this run's channel on a kept connection (the watchdog bounds the wait)."""
        channel = self._channel
        if self._closing_since is None:
            self._closing_since = time.monotonic()
        if channel is None or channel.is_closing or channel.is_closed:
            self._stop_ioloop()
            return
        try:
            channel.close()
        except AMQPError as exc:
            self._fail(reason_connection(exc))
            self._close_connection()

    def _call_later(self, delay: float, callback: Callable[[], None]) -> None:
        if self._connection is not None:
            timer = self._connection.ioloop.call_later(delay, callback)
            if self._kept is not None:  # only a kept connection's loop outlives the run
                self._timers.append(timer)

    def _stop_ioloop(self) -> None:
        if self._connection is not None:
            self._connection.ioloop.stop()


class KeptConnection:
    """A ``SelectConnection`` kept open between :class:`ConfirmPipeline` runs.

    Opening a connection is ~10 round trips to RabbitMQ (TCP, the AMQP handshake, a channel)
    and RabbitMQ starts processes for it: a stream handing a batch over every ~100 ms spent
    half of its hand-over thread opening and closing connections, up to 65 ms each when the
    broker was busy. Each run takes a channel of its own on the kept connection (two round
    trips) and closes only that channel.

    Between runs nobody reads the socket, so pika's heartbeats stand still: a connection idle
    for longer than ``idle_limit_s`` (below any heartbeat timeout RabbitMQ would enforce) is
    closed and replaced rather than trusted. One run at a time: the caller serialises them.
    """

    #: Longest a closing connection is waited for before its socket is dropped.
    close_grace_s = 2.0

    def __init__(self, parameters: pika.connection.Parameters, *, idle_limit_s: float = 15.0):
        self.parameters = parameters
        self.idle_limit_s = idle_limit_s
        #: The open (or opening) connection; None until the first run, and after a failure.
        self.connection: SelectConnection | None = None
        self._pipeline: ConfirmPipeline | None = None
        self._last_used = 0.0

    def attach(self, pipeline: ConfirmPipeline) -> tuple[SelectConnection, bool]:
        """The connection ``pipeline`` runs on, and whether it is new (not yet open)."""
        connection = self.connection
        if connection is not None and (
            not connection.is_open or time.monotonic() - self._last_used > self.idle_limit_s
        ):
            self._drop(connection)
            connection = None
        self._pipeline = pipeline
        if connection is not None:
            return connection, False
        connection = pika.SelectConnection(
            self.parameters,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_close,
        )
        self.connection = connection
        return connection, True

    def detach(self, pipeline: ConfirmPipeline) -> None:
        """``pipeline``'s run is over; a connection it left closed is let go."""
        if self._pipeline is pipeline:
            self._pipeline = None
        self._last_used = time.monotonic()
        connection = self.connection
        if connection is not None and connection.is_closed:
            self.connection = None
            connection.ioloop.close()

    def close(self) -> None:
        """Close the kept connection, if any (it is opened again by the next run)."""
        if self.connection is not None:
            self._drop(self.connection)

    # ---- the connection's callbacks, for the run on it --------------------------------------
    def _on_open(self, connection: SelectConnection) -> None:
        if self._pipeline is not None:
            self._pipeline._on_connection_open(connection)

    def _on_open_error(self, connection: SelectConnection, error: BaseException | str) -> None:
        if self._pipeline is not None:
            self._pipeline._on_connection_open_error(connection, error)
        else:
            connection.ioloop.stop()

    def _on_close(self, connection: SelectConnection, reason: BaseException) -> None:
        if self._pipeline is not None:
            self._pipeline._on_connection_closed(connection, reason)
        else:
            connection.ioloop.stop()  # closed by _drop

    def _drop(self, connection: SelectConnection) -> None:
        """Close ``connection`` with the AMQP handshake, its socket dropped after a grace."""
        self.connection = None
        if not connection.is_closed:
            ioloop = connection.ioloop
            guard = ioloop.call_later(self.close_grace_s, ioloop.stop)
            try:
                if not connection.is_closing:
                    connection.close()
                ioloop.start()
            except Exception:
                log.debug("closing a kept RabbitMQ connection failed", exc_info=True)
            finally:
                ioloop.remove_timeout(guard)
            if not connection.is_closed:
                terminate = getattr(connection, "_terminate_stream", None)
                if terminate is not None:
                    terminate(pika.exceptions.AMQPConnectionError("closed by govnotify"))
        connection.ioloop.close()


class KeptConnectionPool:
    """Kept connections for publishers on many threads (an HTTP server's): each run takes one
    that no other run holds, opening another only while every one is taken, so there are at
    most as many as runs ever went at once; the one used last is handed out first, so the
    rest go idle and are replaced (:attr:`KeptConnection.idle_limit_s`) rather than trusted.
    """

    def __init__(self, parameters: pika.connection.Parameters, *, idle_limit_s: float = 15.0):
        self.parameters = parameters
        self.idle_limit_s = idle_limit_s
        self._idle: list[KeptConnection] = []
        self._lock = threading.Lock()
        #: How many kept connections this pool made (taken or idle).
        self.size = 0

    @contextlib.contextmanager
    def connection(self) -> Iterator[KeptConnection]:
        """A kept connection for one run, back in the pool afterwards."""
        with self._lock:
            if self._idle:
                kept = self._idle.pop()
            else:
                kept = KeptConnection(self.parameters, idle_limit_s=self.idle_limit_s)
                self.size += 1
        try:
            yield kept
        finally:
            with self._lock:
                self._idle.append(kept)

    def close(self) -> None:
        """Close every idle connection (a run still going keeps its own until it ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self.size -= len(idle)
        for kept in idle:
            kept.close()


def publish_kept(
    kept: KeptConnection,
    exchange: str,
    messages: list[Message],
    *,
    window: int,
    confirm_timeout: float,
    headers: Mapping[str, str] | None = None,
) -> list[Outcome]:
    """:class:`ConfirmPipeline` on ``kept``: one outcome per message, in order.

    A kept connection found closed before anything was published on it (a broker restart, or
    its heartbeat timeout, while it was idle) is replaced and the same messages sent again on
    the new one: nothing of them had left.
    """
    for _attempt in range(2):
        pipeline = ConfirmPipeline(
            kept.parameters,
            exchange,
            messages,
            window=window,
            confirm_timeout=confirm_timeout,
            headers=headers,
            kept=kept,
        )
        outcomes = pipeline.run()
        if not pipeline.stale_connection:
            break
        log.info("the kept RabbitMQ connection was closed; sending on a new one")
    return outcomes


def _prepend(first: Message, rest: Iterator[Message]) -> Iterator[Message]:
    yield first
    yield from rest
