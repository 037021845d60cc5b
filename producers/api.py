"""``govnotify api``: signed provider status callbacks, HTTP ingest and trace for upstream systems.

Four endpoints on ``GOVNOTIFY_API_HOST:GOVNOTIFY_API_PORT`` (the public side, behind the city's
proxy), served by waitress:

- ``POST /callbacks/twilio/status``: Twilio's form-encoded status callbacks. Every request is
  checked with :class:`twilio.request_validator.RequestValidator` against the public URL Twilio
  was given (``GOVNOTIFY_PUBLIC_BASE_URL`` + path and query), the parameters and
  ``X-Twilio-Signature``.
- ``POST /callbacks/gateway/status``: the mainland gateway's JSON reports, checked by
  :func:`notifiers.sms.gateway.verify_status_callback` (HMAC-SHA256 over timestamp, nonce and
  the raw body; a timestamp outside five minutes is refused).
- ``POST /events``: events from upstream systems that cannot speak AMQP, authenticated by a
  bearer token per source (:mod:`producers.ingest_http`).
- ``GET /trace/<id>``: where is my message, for a source's own events (or any id, for a
  source registered ``--trace-any``), with the same bearer token (:mod:`producers.trace_http`).

Callback answers: no signature → 403 ``unsigned``; a signature that does not verify (another
key, edited parameters, a stale timestamp) → 403 ``forged``; signed but unreadable → 400
``malformed``; a body over the route's cap → 413 ``too_large``; applied (or kept for a
reference not written yet, or a duplicate) → 204 (Twilio) / 200 (gateway) ``accepted``; the
provider not configured here → 404 ``unconfigured``; the database not answering → 503
``error``, so the provider may try again. Each is counted in
``govnotify_callback_requests_total{provider, outcome}`` and refused ones are logged in one
short line. Bodies are never logged: a Twilio callback carries the recipient's number. Logs
name the provider's message id, and only once its shape is checked.

Hardening (every bound is per request and cheap, see :mod:`producers.http_guards`):

- waitress reads requests asynchronously (one event loop, no thread per connection) and hands
  complete requests to :data:`THREADS` worker threads; it holds at most
  ``GOVNOTIFY_API_MAX_CONNECTIONS`` connections and closes one idle for
  ``GOVNOTIFY_API_IDLE_TIMEOUT_S``, so a few hundred idle or slow clients neither hold a thread
  nor lock Twilio out (waitress's defaults, 100 connections and 120 s, did: ~110 idle sockets
  made a genuine callback time out);
- a body cap per route (a Twilio callback is under 1 KiB, a gateway batch a few KiB), judged
  from ``Content-Length`` before anything is read, and a header cap;
- form bodies parsed with a cap on fields (a 34,000-field body cost ~155 ms of CPU before);
- JSON parsed by the C decoder, whose recursion guard becomes a 400 (it was a 500 and a long
  traceback), and gateway headers checked for shape before they are used (a non-ASCII digit in
  the timestamp raised out of ``int()``);
- provider ids checked for shape before any lookup: Twilio signs the sorted concatenation of
  names and values, so text moved from one parameter into another keeps a genuine signature
  valid; a ``MessageSid`` must be ``SM``/``MM`` + 32 hex digits, a gateway ``biz_id`` a short
  ASCII identifier;
- anything from the request that reaches a log line goes through
  :func:`producers.http_guards.printable`.

``/metrics``, ``/healthz`` and ``/readyz`` are served on ``GOVNOTIFY_API_METRICS_PORT`` (the
private side), like every other component.

What a verified callback means for a notification is the status ledger's
(:mod:`workers.status`): reading a report's fields and applying it. A producer never imports
the workers (STYLE.md, "Floors"), so whoever starts the api (``govnotify api``, the roof) hands
those functions in as a :class:`StatusHandlers`.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import signal
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from twilio.request_validator import RequestValidator
from waitress import create_server

from infra.db import session
from infra.metrics import CALLBACK_REQUESTS
from infra.sources import authenticate_token
from notifiers.errors import CallbackSignatureError
from notifiers.sms.gateway import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_status_callback,
)
from producers.http_guards import Refusal, content_type, parse_form, printable, read_body
from producers.ingest_http import (
    HTTP_INGEST_REQUESTS,
    INGEST_PATH,
    Authenticate,
    HttpIngest,
    Publish,
    close_connections,
    publish_events,
)
from producers.trace_http import TRACE_PREFIX, TRACE_REQUESTS, HttpTrace

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "GATEWAY_MAX_BODY_BYTES",
    "GATEWAY_MAX_REPORTS",
    "GATEWAY_STATUS_PATH",
    "INGEST_PATH",
    "THREADS",
    "TRACE_PREFIX",
    "TWILIO_MAX_BODY_BYTES",
    "TWILIO_MAX_FIELDS",
    "TWILIO_STATUS_PATH",
    "CallbackApp",
    "StatusHandlers",
    "make_server",
    "serve",
]

log = logging.getLogger("govnotify.api")

#: Paths of the two callback endpoints, below ``settings.api_public_url``.
TWILIO_STATUS_PATH = "/callbacks/twilio/status"
GATEWAY_STATUS_PATH = "/callbacks/gateway/status"

#: A Twilio status callback is ~500 bytes of form fields; 8 KiB leaves room for new fields.
TWILIO_MAX_BODY_BYTES = 8 * 1024
#: Twilio sends about a dozen fields; more than this is not Twilio.
TWILIO_MAX_FIELDS = 64
#: A gateway batch is ~150 bytes a report; 64 KiB is some 400 reports.
GATEWAY_MAX_BODY_BYTES = 64 * 1024
#: Reports applied from one gateway request at most (each is a database transaction).
GATEWAY_MAX_REPORTS = 500
#: Request line and headers together; a provider's are under 2 KiB.
MAX_HEADER_BYTES = 16 * 1024
#: How often waitress looks for idle connections (its default, 30 s, would let an idle one
#: live twice the timeout).
IDLE_CHECK_S = 5
#: Threads running complete requests (database writes, RabbitMQ confirms); a connection that
#: is still sending its request never holds one.
THREADS = 8

#: Twilio message sids: ``SM`` (SMS) or ``MM`` (MMS) and 32 lowercase hex digits.
_TWILIO_SID = re.compile(r"(?:SM|MM)[0-9a-f]{32}")
#: The gateway's ``biz_id``: digits, letters and a few separators (``1718…^0a1b…``).
_GATEWAY_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z^._:-]{0,63}")
#: Gateway headers: unix seconds in ASCII digits, a nonce, a hex HMAC.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[!-~]{1,128}")
_HEX_SIGNATURE = re.compile(r"[0-9A-Fa-f]{1,128}")

StartResponse = Callable[..., Any]
#: (provider reference, status word, error code) of one report.
ReportFields = tuple[str, str, str | None]
#: A route's handler: environ → (HTTP status, body, content type).
Handler = Callable[[dict[str, Any]], tuple[int, bytes, str]]


@dataclass(frozen=True)
class StatusHandlers:
    """The status ledger's side of a callback (:mod:`workers.status`), handed in by the roof.

    ``twilio_fields`` reads a Twilio callback's form parameters, ``gateway_fields`` one report
    of the gateway's batch; each raises ``malformed`` for a report it cannot read (answered
    400). ``apply(session, provider=, provider_ref=, provider_status=, error_code=)`` records
    one report and moves its notification forward; it returns the result (``advanced``,
    ``duplicate``, ``pending`` …).
    """

    twilio_fields: Callable[[Mapping[str, str]], ReportFields]
    gateway_fields: Callable[[object], ReportFields]
    apply: Callable[..., str]
    malformed: type[Exception]


_REASONS = {
    200: "OK",
    204: "No Content",
    207: "Multi-Status",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class CallbackApp:
    """The WSGI application: one handler per route, in an explicit route table.

    HTTP ingest (``/events``) authenticates with ``authenticate`` and publishes with
    ``publish``: by default the sources registry (:func:`infra.sources.authenticate_token`) and
    RabbitMQ with confirms (:func:`producers.ingest_http.publish_events`).
    """

    def __init__(
        self,
        settings: Settings,
        status: StatusHandlers,
        *,
        authenticate: Authenticate = authenticate_token,
        publish: Publish = publish_events,
    ) -> None:
        self.settings = settings
        self.status = status
        #: path → (metrics label, handler).
        self.routes: dict[str, tuple[str, Handler]] = {
            TWILIO_STATUS_PATH: ("twilio", self._twilio),
            GATEWAY_STATUS_PATH: ("gateway", self._gateway),
            INGEST_PATH: ("ingest", HttpIngest(settings, authenticate, publish).handle),
        }
        #: The one route below a prefix (GET): ``/trace/<id>``.
        self.trace = HttpTrace(settings, authenticate)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = "POST"
        route = self.routes.get(path)
        if route is None and path.startswith(TRACE_PREFIX):
            route, method = ("trace", self.trace.handle), "GET"
        if route is None:
            return _respond(start_response, 404, b"not found\n")
        if environ.get("REQUEST_METHOD") != method:
            return _respond(
                start_response, 405, f"{method} only\n".encode(), extra=[("Allow", method)]
            )
        name, handler = route
        extra: list[tuple[str, str]] = []
        try:
            status, body, kind = handler(environ)
            outcome = "accepted"
        except Refusal as refusal:
            status, body, kind = refusal.status, refusal.outcome.encode() + b"\n", "text/plain"
            outcome = refusal.outcome
            if status == 401:
                extra.append(("WWW-Authenticate", 'Bearer realm="govnotify"'))
            level = logging.ERROR if status >= 500 else logging.WARNING
            log.log(
                level,
                "%s request refused (%d %s): %s",
                name,
                status,
                outcome,
                printable(refusal.detail),
            )
        except Exception as exc:
            # A bug, not a bad request: answer without detail, log one escaped line and the
            # traceback (the formatter escapes what is inside it).
            status, body, kind, outcome = 500, b"error\n", "text/plain", "error"
            log.error(
                "%s request failed: %s: %s",
                name,
                type(exc).__name__,
                printable(exc),
                exc_info=True,
            )
        if name == "ingest":
            HTTP_INGEST_REQUESTS.labels(str(status)).inc()
        elif name == "trace":
            TRACE_REQUESTS.labels(str(status)).inc()
            if status >= 400 and kind == "text/plain":
                # JSON like its 200s: {"error": "not_found"}.
                body, kind = json.dumps({"error": outcome}).encode(), "application/json"
        else:
            CALLBACK_REQUESTS.labels(name, outcome).inc()
        return _respond(start_response, status, body, content_type=kind, extra=extra)

    # ---- Twilio -------------------------------------------------------------------------------
    def _twilio(self, environ: dict[str, Any]) -> tuple[int, bytes, str]:
        settings = self.settings
        if not settings.twilio_auth_token:
            # Validating with an empty token would accept signatures anyone can compute.
            raise Refusal(404, "unconfigured", "Twilio is not configured here")
        signature = str(environ.get("HTTP_X_TWILIO_SIGNATURE") or "")
        if not signature:
            raise Refusal(403, "unsigned", "no X-Twilio-Signature")
        kind = content_type(environ)
        if kind != "application/x-www-form-urlencoded":
            raise Refusal(400, "malformed", f"content type {printable(kind, 60)!r}")
        raw = read_body(environ, TWILIO_MAX_BODY_BYTES)
        params = parse_form(raw, TWILIO_MAX_FIELDS)
        # Twilio signs the URL it was given: the public one, with the query string as sent.
        url = settings.api_public_url + _path_and_query(environ)
        if not RequestValidator(settings.twilio_auth_token).validate(url, params, signature):
            raise Refusal(403, "forged", "X-Twilio-Signature does not verify")
        if params.get("AccountSid", settings.twilio_account_sid) != settings.twilio_account_sid:
            raise Refusal(403, "forged", "callback for another account")
        # The signature covers the sorted concatenation of names and values, not where one
        # value ends: the sid must have its exact shape before it is looked up or logged.
        sids = {params[name] for name in ("MessageSid", "SmsSid") if name in params}
        if len(sids) > 1 or not all(_TWILIO_SID.fullmatch(sid) for sid in sids):
            raise Refusal(400, "malformed", "MessageSid is not a Twilio message sid")
        try:
            sid, word, code = self.status.twilio_fields(params)
        except self.status.malformed as exc:
            raise Refusal(400, "malformed", str(exc)) from None
        result = self._apply("twilio", sid, word, code)
        # workers.status logs what the status did to the notification; this line adds nothing
        # at INFO but the duplicates (one callback per segment), which the metric counts.
        log.debug("twilio status %s%s for %s: %s", word, f" ({code})" if code else "", sid, result)
        # Twilio takes any 2xx; no body, or it would look for TwiML.
        return 204, b"", "text/plain"

    # ---- the mainland gateway -----------------------------------------------------------------
    def _gateway(self, environ: dict[str, Any]) -> tuple[int, bytes, str]:
        settings = self.settings
        if not (settings.gateway_enabled and settings.gateway_secret):
            raise Refusal(404, "unconfigured", "the SMS gateway is not configured here")
        headers = _headers(environ)
        if not headers.get(SIGNATURE_HEADER.title()):
            raise Refusal(403, "unsigned", "no X-Gateway-Signature")
        # Shapes first: header values arrive as latin-1 text, where "²" passes str.isdigit()
        # and then fails int(); nothing here may raise out of the handler.
        for name, shape in (
            (TIMESTAMP_HEADER, _TIMESTAMP),
            (NONCE_HEADER, _NONCE),
            (SIGNATURE_HEADER, _HEX_SIGNATURE),
        ):
            value = headers.get(name.title())
            if value is not None and not shape.fullmatch(value.strip()):
                raise Refusal(400, "malformed", f"{name} is not well-formed")
        raw = read_body(environ, GATEWAY_MAX_BODY_BYTES)
        try:
            reports = verify_status_callback(
                settings.gateway_secret,
                headers,
                raw,
                key_id=settings.gateway_key_id or None,
            )
        except CallbackSignatureError as exc:
            reason = exc.reason if exc.reason in ("unsigned", "malformed") else "forged"
            raise Refusal(400 if reason == "malformed" else 403, reason, str(exc)) from None
        except RecursionError:
            # Only reached once the signature verified: the JSON decoder's recursion guard.
            raise Refusal(400, "malformed", "status report nests too deeply") from None
        except ValueError:
            raise Refusal(400, "malformed", "status report is unreadable") from None
        if len(reports) > GATEWAY_MAX_REPORTS:
            raise Refusal(413, "too_large", f"more than {GATEWAY_MAX_REPORTS} reports")
        try:
            # Every report is read before any is applied: a bad batch changes nothing.
            fields = [self.status.gateway_fields(report) for report in reports]
        except self.status.malformed as exc:
            raise Refusal(400, "malformed", str(exc)) from None
        if not all(_GATEWAY_ID.fullmatch(ref) for ref, _, _ in fields):
            raise Refusal(400, "malformed", "a biz_id is not a gateway message id")
        results = [self._apply("gateway", ref, word, code) for ref, word, code in fields]
        for (ref, word, code), result in zip(fields, results, strict=True):
            log.debug(
                "gateway status %s%s for %s: %s", word, f" ({code})" if code else "", ref, result
            )
        return 200, b'{"code": "OK"}', "application/json"

    def _apply(self, provider: str, ref: str, word: str, code: str | None) -> str:
        try:
            with session(self.settings) as s:
                return self.status.apply(
                    s,
                    provider=provider,
                    provider_ref=ref,
                    provider_status=word,
                    error_code=code,
                )
        except SQLAlchemyError as exc:
            raise Refusal(503, "error", f"database: {type(exc).__name__}") from None


def _path_and_query(environ: dict[str, Any]) -> str:
    """The request's path and query exactly as sent (waitress keeps it in REQUEST_URI)."""
    uri = environ.get("REQUEST_URI")
    if uri:
        return str(uri)
    path = urllib.parse.quote(environ.get("PATH_INFO") or "/")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    """HTTP headers from a WSGI environ: ``HTTP_X_GATEWAY_KEY`` → ``X-Gateway-Key``."""
    return {
        key[5:].replace("_", "-").title(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }


def _respond(
    start_response: StartResponse,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain",
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    start_response(f"{status} {_REASONS.get(status, '')}".strip(), headers + (extra or []))
    return [body]


def make_server(settings: Settings, app: Callable[..., Iterable[bytes]]) -> Any:
    """A waitress server for ``app`` on ``api_host:api_port`` (not yet running).

    ``GOVNOTIFY_API_MAX_CONNECTIONS`` connections at once (idle ones included: each costs a
    socket and a few KiB, not a thread), each closed after ``GOVNOTIFY_API_IDLE_TIMEOUT_S`` with
    no request in progress; bodies up to ``GOVNOTIFY_API_MAX_BODY_BYTES`` (HTTP ingest's cap;
    the callbacks' are smaller and checked per route).
    """
    connections = settings.api_max_connections
    _raise_open_files_limit(connections + 64)
    return create_server(
        app,
        host=settings.api_host,
        port=settings.api_port,
        ident="govnotify",
        threads=THREADS,
        connection_limit=connections,
        channel_timeout=settings.api_idle_timeout_s,
        cleanup_interval=IDLE_CHECK_S,
        # poll(), not select(): select() cannot watch a descriptor numbered 1024 or above.
        asyncore_use_poll=True,
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=settings.api_max_body_bytes,
        # Never show a traceback to a client (waitress's default, kept explicit).
        expose_tracebacks=False,
    )


def _raise_open_files_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files towards ``wanted`` (up to the hard limit):
    a common soft limit of 1024 would stop accepting before ``connection_limit`` is reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(settings: Settings, status: StatusHandlers) -> None:
    """Serve callbacks and HTTP ingest on ``api_host:api_port`` until SIGTERM or SIGINT
    (``govnotify api``, which serves ``/metrics`` and the health endpoints beside it)."""
    server = make_server(settings, CallbackApp(settings, status))

    def _stop(signum: int, frame: object) -> None:
        # waitress's run() catches SystemExit and shuts its worker threads down cleanly.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "api on %s:%s, callbacks at %s%s and %s%s, ingest at %s%s",
        settings.api_host,
        settings.api_port,
        settings.api_public_url,
        TWILIO_STATUS_PATH,
        settings.api_public_url,
        GATEWAY_STATUS_PATH,
        settings.api_public_url,
        INGEST_PATH,
    )
    try:
        server.run()
    finally:
        server.close()
        close_connections()
    log.info("api stopped")
