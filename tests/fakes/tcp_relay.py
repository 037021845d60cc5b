"""A loopback TCP relay to RabbitMQ that tests break the way networks break.

Clients connect to the relay's port instead of RabbitMQ's; a test then cuts, stalls or refuses
their connections (a broker restart, a dead load balancer, a network that stops answering)
while RabbitMQ itself keeps running for everyone else.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpRelay"]


class TcpRelay:
    """A loopback TCP relay to RabbitMQ that a test can break the way networks break.

    ``cut()`` drops every connection (RST/FIN to both sides), ``stall()`` keeps them open but
    forwards nothing (a broker that stopped answering), ``refuse()`` also stops accepting, and
    ``hang_up()`` accepts new connections but closes them at once instead of relaying them.
    """

    thread_prefix = "test-tcp-relay"

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stalled = threading.Event()
        self._closed = threading.Event()
        #: (reset, gate) once hang_up() was called: how new connections are closed.
        self._hang_up: tuple[bool, threading.Event | None] | None = None
        self._start(self._accept, "accept")

    def _start(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"{self.thread_prefix}-{name}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._hang_up is not None:
                _hang_up_on(client, *self._hang_up)
                continue
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            self._start(self._pipe, "up", client, upstream)
            self._start(self._pipe, "down", upstream, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self._stalled.is_set():
                continue  # read and dropped: neither side hears the other any more
            try:
                sink.sendall(data)
            except OSError:
                break
        for s in (source, sink):
            _shutdown(s)

    def url(self, amqp_url: str) -> str:
        parts = urlsplit(amqp_url)
        netloc = f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        with self._lock:
            for s in self._sockets:
                _shutdown(s)

    def stall(self) -> None:
        self._stalled.set()

    def hang_up(self, *, reset: bool, gate: threading.Event | None = None) -> None:
        """From now on accept each new connection, then close it: with a FIN, or with a RST
        (``reset``, SO_LINGER 0); after ``gate`` is set, if one is given. Connections relayed
        already are left alone."""
        self._hang_up = (reset, gate)

    def refuse(self) -> None:
        self._closed.set()
        self._listener.close()
        self.cut()

    def stop(self) -> None:
        self.refuse()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        with self._lock:
            for s in self._sockets:
                s.close()


def _hang_up_on(client: socket.socket, reset: bool, gate: threading.Event | None) -> None:
    if gate is not None:
        gate.wait(5)  # not set in time: the test's own assertions say what did not happen
    if reset:
        # SO_LINGER on with a zero timeout: close() sends RST instead of FIN.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
