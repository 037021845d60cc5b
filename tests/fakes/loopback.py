"""The life cycle every loopback fake shares: a free port, a background thread, a clean stop.

By default a fake speaks HTTP/1.0, one request per connection. ``keep_alive=True`` (opt-in, for
benchmarks) serves HTTP/1.1 persistent connections instead, as real providers do: the client's
pool reuses one connection per thread, each answer carries ``Content-Length``, and ``stop()``
closes the idle connections the clients still hold.
"""

from __future__ import annotations

import abc
import json
import socket
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["JsonHandler", "LoopbackServer"]

T = TypeVar("T")


class _QuietServer(ThreadingHTTPServer):
    # Daemon handler threads: a handler stuck in a scripted delay or hold never blocks shutdown.
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is part of the script, not a fault to print.
        # Anything else still goes to stderr.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class JsonHandler(BaseHTTPRequestHandler):
    """A fake's request handler: one request per connection, silent, JSON answers."""

    # HTTP/1.0: one request per connection, so a delayed or held answer never leaves a
    # half-used keep-alive connection in the client's pool.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        # Silent: requests carry phone numbers and keys, and test output should stay readable.
        return

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout); nothing to tell it.
            pass


def _keep_alive_handler(
    handler: type[BaseHTTPRequestHandler], fake: LoopbackServer
) -> type[BaseHTTPRequestHandler]:
    """``handler`` speaking HTTP/1.1 with persistent connections, each known to ``fake``."""

    class KeepAlive(handler):  # type: ignore[valid-type,misc]
        # Persistent connections: BaseHTTPRequestHandler keeps reading requests on the same
        # connection until the client asks to close (or a handler sets close_connection).
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without NODELAY the second waits for the
            # client's delayed ACK of the first (up to 40 ms) on a reused connection.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fake._track(self.connection, True)

        def finish(self) -> None:
            fake._track(self.connection, False)
            super().finish()

    KeepAlive.__name__ = KeepAlive.__qualname__ = f"KeepAlive{handler.__name__}"
    return KeepAlive


class LoopbackServer(abc.ABC):
    """An HTTP fake on ``127.0.0.1:<free port>``; subclasses give the request handler.

    ``_stopping`` is set by :meth:`stop` so scripted delays and holds end at once; ``_cond``
    guards what the fake records and is notified when something arrives. ``keep_alive``: serve
    HTTP/1.1 persistent connections instead of one request per connection (see the module).
    """

    def __init__(self, *, keep_alive: bool = False) -> None:
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.keep_alive = keep_alive
        #: Open client connections (keep-alive mode only), closed by :meth:`stop`.
        self._connections: set[socket.socket] = set()
        #: Client connections accepted so far (counted in keep-alive mode only).
        self.connections_opened = 0
        self.base_url = ""

    @abc.abstractmethod
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class, bound to this fake."""

    def _wait_count(self, items: Sequence[T], count: int, timeout: float, noun: str) -> list[T]:
        """A copy of ``items`` (recorded under ``_cond``) once it holds at least ``count``.

        Raises:
          TimeoutError: when fewer than ``count`` arrived within ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(items) >= count, timeout=timeout):
                raise TimeoutError(
                    f"{type(self).__name__} got {len(items)} {noun}, expected {count}"
                )
            return list(items)

    def _track(self, conn: socket.socket, is_open: bool) -> None:
        with self._cond:
            if is_open:
                self._connections.add(conn)
                self.connections_opened += 1
            else:
                self._connections.discard(conn)

    def start(self, port: int = 0) -> Self:
        """Bind a loopback port (``0``: a free one) and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._stopping.clear()
        handler = self._handler()
        if self.keep_alive:
            handler = _keep_alive_handler(handler, self)
        server = _QuietServer(("127.0.0.1", port), handler)
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; pending delays and held answers end at once."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._cond:
            idle, self._connections = list(self._connections), set()
        for conn in idle:
            # A keep-alive handler waits for the client's next request: end that wait.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
