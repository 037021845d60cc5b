"""Health endpoints for every long-running process: ``/healthz``, ``/readyz`` next to ``/metrics``.

``/healthz`` answers "is this process alive?" (200 ``ok``); a supervisor restarts it when not.
``/readyz`` answers "can it do its work?": each of its dependencies (RabbitMQ, Kafka, the
database: whichever the process uses) is asked, and the answer is 200 with a small JSON of each
check, or 503 with the same JSON naming what failed. A load balancer or an SRE stops sending it
work, nobody restarts it: a dead broker is not fixed by restarting its clients.

A check is a callable that returns when its dependency answers and raises when it does not.
Checks run in parallel on their own daemon threads, each time-boxed (a broker that accepts the
TCP connection and never answers must not hang the endpoint), and the answer is cached for a
couple of seconds so a probe every second does not open a connection every second.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from infra.services import scrub_password

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "COMPONENT_DEPENDENCIES",
    "NotReady",
    "Readiness",
    "ReadyCheck",
    "component_checks",
    "database_check",
    "health_app",
    "kafka_check",
    "rabbitmq_check",
    "serve_http",
]

log = logging.getLogger("govnotify.health")

#: A readiness check: returns when its dependency answers, raises when it does not.
ReadyCheck = Callable[[], None]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: How long one check may take before the probe calls it failed.
CHECK_TIMEOUT_S = 2.0
#: How long a readiness answer is reused.
CACHE_S = 2.0

#: The dependencies of each long-running component; what ``component_checks`` asks.
COMPONENT_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    # AMQP in, Kafka out, dead letters in the database.
    "relay": ("rabbitmq", "kafka", "database"),
    # Kafka in, jobs out to the work queues; the stream keeps no database connection.
    "stream": ("rabbitmq", "kafka"),
    # Due jobs from the database onto the work queues.
    "scheduler": ("rabbitmq", "database"),
    # Jobs from the work queues, the ledger in the database.
    "worker": ("rabbitmq", "database"),
    # Provider callbacks written to the database.
    "api": ("database",),
}


class NotReady(Exception):
    """Raised by a readiness check when its dependency is not there (the message says why)."""


def _describe(exc: BaseException, url: str = "") -> str:
    """One short line: the error's type and first line (the driver's own, under SQLAlchemy's)."""
    exc = getattr(exc, "orig", None) or exc
    lines = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return scrub_password(message, url)[:200] if url else message[:200]


# ---- check factories ---------------------------------------------------------------------------
def rabbitmq_check(amqp_url: str, timeout: float = CHECK_TIMEOUT_S) -> ReadyCheck:
    """A check that opens (and closes) one AMQP connection to ``amqp_url``."""

    def check() -> None:
        import pika

        params = pika.URLParameters(amqp_url)
        params.connection_attempts = 1
        params.retry_delay = 0
        params.socket_timeout = timeout
        params.stack_timeout = timeout
        params.blocked_connection_timeout = timeout
        try:
            connection = pika.BlockingConnection(params)
        except Exception as exc:
            where = f"{params.host}:{params.port}"
            raise NotReady(f"{where}: {_describe(exc, amqp_url)}") from None
        try:
            connection.close()
        except Exception:  # closing a connection that just opened: nothing to report
            log.debug("closing the readiness AMQP connection failed", exc_info=True)

    return check


def kafka_check(bootstrap: str, timeout: float = CHECK_TIMEOUT_S) -> ReadyCheck:
    """A check that asks the Kafka cluster at ``bootstrap`` for metadata (creates no topic)."""

    async def metadata() -> None:
        from aiokafka.client import AIOKafkaClient

        client = AIOKafkaClient(
            bootstrap_servers=bootstrap,
            client_id="govnotify-readiness",
            request_timeout_ms=max(500, int(timeout * 1000)),
        )
        try:
            await asyncio.wait_for(client.bootstrap(), timeout)
        finally:
            await client.close()

    def check() -> None:
        try:
            # Its own loop on the check's thread: the caller may be Faust's process, whose loop
            # must not be touched from the HTTP thread.
            asyncio.run(metadata())
        except Exception as exc:
            raise NotReady(f"{bootstrap}: no metadata ({_describe(exc)})") from None

    return check


@functools.cache
def _check_engine(url: str):  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # Bounded connect and statement time: a server that accepts and hangs fails the check.
        connect_args = {
            "connect_timeout": max(1, int(CHECK_TIMEOUT_S)),
            "options": f"-c statement_timeout={int(CHECK_TIMEOUT_S * 1000)}",
        }
    elif url.startswith("sqlite"):
        connect_args = {"timeout": CHECK_TIMEOUT_S}
    # NullPool: a probe every few seconds holds no connection of the process's pool.
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def database_check(settings: Settings) -> ReadyCheck:
    """A check that runs ``SELECT 1`` on the configured database."""
    url = settings.resolved_database_url

    def check() -> None:
        from sqlalchemy import text

        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            # Connecting would create an empty SQLite file: a missing one is "not ready".
            path = url.removeprefix("sqlite:///")
            if not os.path.exists(path):
                raise NotReady(f"SQLite database {path} does not exist (run govnotify db upgrade)")
        try:
            with _check_engine(url).connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise NotReady(_describe(exc, url)) from None

    return check


def component_checks(settings: Settings, component: str) -> dict[str, ReadyCheck]:
    """The readiness checks of ``component`` (relay, stream, scheduler, worker, api)."""
    factories: dict[str, Callable[[], ReadyCheck]] = {
        "rabbitmq": lambda: rabbitmq_check(settings.amqp_url),
        "kafka": lambda: kafka_check(settings.kafka_bootstrap),
        "database": lambda: database_check(settings),
    }
    try:
        needs = COMPONENT_DEPENDENCIES[component]
    except KeyError:
        raise ValueError(
            f"unknown component {component!r}; one of {', '.join(COMPONENT_DEPENDENCIES)}"
        ) from None
    return {name: factories[name]() for name in needs}


# ---- running the checks ------------------------------------------------------------------------
class _Runner:
    """Runs one check on its own daemon thread; never more than one run of it at a time."""

    def __init__(self, name: str, check: ReadyCheck) -> None:
        self.name = name
        self.check = check
        self.done = threading.Event()
        self.done.set()
        self.outcome = "not run"
        self.started = 0.0

    def start(self) -> None:
        if not self.done.is_set():
            # The previous run still hangs: wait for it rather than pile up threads.
            return
        self.done.clear()
        self.started = time.monotonic()
        threading.Thread(target=self._run, name=f"readyz-{self.name}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.check()
            self.outcome = "ok"
        except Exception as exc:  # any failure means "not ready"; the message says which
            self.outcome = str(exc) if isinstance(exc, NotReady) else _describe(exc)
        finally:
            self.done.set()


class Readiness:
    """Runs named checks in parallel, time-boxed, and caches the answer for ``cache_s``."""

    def __init__(
        self,
        checks: Mapping[str, ReadyCheck] | None = None,
        *,
        timeout_s: float = CHECK_TIMEOUT_S,
        cache_s: float = CACHE_S,
    ) -> None:
        self._runners = [_Runner(name, check) for name, check in (checks or {}).items()]
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, bool, dict[str, str]] | None = None

    def status(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check: "ok" or why not}); at most ``timeout_s`` late, cached ``cache_s``."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_s:
                return self._cached[1], dict(self._cached[2])
            for runner in self._runners:
                runner.start()
            deadline = now + self.timeout_s
            results: dict[str, str] = {}
            for runner in self._runners:
                if runner.done.wait(max(0.0, deadline - time.monotonic())):
                    results[runner.name] = runner.outcome
                else:
                    waited = time.monotonic() - runner.started
                    results[runner.name] = f"no answer within {waited:.1f} s"
            ready = all(outcome == "ok" for outcome in results.values())
            self._cached = (time.monotonic(), ready, results)
            return ready, dict(results)


# ---- HTTP --------------------------------------------------------------------------------------
def health_app(
    metrics_app: WsgiApp,
    readiness: Readiness,
    *,
    alive: Callable[[], bool] | None = None,
) -> WsgiApp:
    """A WSGI app: ``/healthz``, ``/readyz``, and every other path to ``metrics_app``.

    Every other path (``/metrics`` included) goes to the metrics app, as prometheus_client's
    own server does, so existing scrape configs keep working. ``alive`` (optional) lets a
    process say it is a zombie, e.g. dramatiq's exposition process whose parent died.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/").rstrip("/")
        if path == "/healthz":
            ok = alive() if alive is not None else True
            body = b"ok\n" if ok else b"not alive\n"
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")],
            )
            return [body]
        if path == "/readyz":
            ready, checks = readiness.status()
            payload = {"status": "ready" if ready else "not ready", "checks": checks}
            start_response(
                "200 OK" if ready else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
            )
            return [json.dumps(payload, ensure_ascii=False).encode()]
        return metrics_app(environ, start_response)

    return app


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most :attr:`max_threads` at once: a slow /readyz never
    delays a /metrics scrape, and connections a client opens and leaves idle cannot make a
    thread each (a few thousand would have made as many threads in the component). A
    connection beyond the limit is closed at once; a thread whose client sends nothing for
    :attr:`request_timeout_s` (the handler's socket timeout) ends.
    """

    daemon_threads = True
    allow_reuse_address = True
    #: Connections served at once. Prometheus scrapes with one, probes with another.
    max_threads = 16
    #: Connections the kernel queues for accept (socketserver's default is 5): a burst beyond it
    #: would have its SYNs dropped, and a scrape among them retried a second later.
    request_queue_size = 64
    #: Seconds a client may leave its connection silent, reading or writing, before it is closed.
    request_timeout_s = 5.0

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_threads)
        self._refusing = False

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            if not self._refusing:  # once per flood, not a log line per connection
                log.warning(
                    "HTTP on port %s: %d connections open; closing more until one ends",
                    self.server_port,
                    self.max_threads,
                )
            self._refusing = True
            self.shutdown_request(request)
            return
        self._refusing = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: nothing else gives the slot back
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.request_timeout_s)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            # A client that went silent (the timeout) or away: not an error of ours.
            log.debug("HTTP connection from %s ended early", client_address[0], exc_info=True)
            return
        log.exception("HTTP request from %s failed", client_address[0])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds would drown the component's own log."""


def serve_http(
    port: int, host: str, app: WsgiApp, *, background: bool = True
) -> tuple[WSGIServer, threading.Thread | None]:
    """Serve ``app`` on ``host:port``: from a daemon thread, or here until shut down."""
    server_class = _Server6 if ":" in host else _Server
    server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    if not background:
        server.serve_forever()
        return server, None
    thread = threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True)
    thread.start()
    return server, thread
