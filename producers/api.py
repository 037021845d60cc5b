"""``govnotify api``: receives provider status callbacks, signed, and applies them.

Two endpoints on ``GOVNOTIFY_API_HOST:GOVNOTIFY_API_PORT`` (the public side, behind the city's
proxy), served by waitress:

- ``POST /callbacks/twilio/status``: Twilio's form-encoded status callbacks. Every request is
  checked with :class:`twilio.request_validator.RequestValidator` against the public URL Twilio
  was given (``GOVNOTIFY_PUBLIC_BASE_URL`` + path and query), the parameters and
  ``X-Twilio-Signature``.
- ``POST /callbacks/gateway/status``: the mainland gateway's JSON reports, checked by
  :func:`notifiers.sms.gateway.verify_status_callback` (HMAC-SHA256 over timestamp, nonce and
  the raw body; a timestamp outside five minutes is refused).

Answers: no signature → 403 ``unsigned``; a signature that does not verify (another key, edited
parameters, a stale timestamp) → 403 ``forged``; signed but unreadable → 400 ``malformed``;
applied (or kept for a reference not written yet, or a duplicate) → 204 (Twilio) / 200
(gateway) ``accepted``; the provider not configured here → 404 ``unconfigured``; the database
not answering → 503 ``error``, so the provider may try again. Each is counted in
``govnotify_callback_requests_total{provider, outcome}``. Bodies are never logged: a Twilio
callback carries the recipient's number. Logs name the provider's message id.

``/metrics``, ``/healthz`` and ``/readyz`` are served on ``GOVNOTIFY_API_METRICS_PORT`` (the
private side), like every other component.

What a verified callback means for a notification is the status ledger's
(:mod:`workers.status`): reading a report's fields and applying it. A producer never imports
the workers (STYLE.md, "Floors"), so whoever starts the api (``govnotify api``, the roof) hands
those functions in as a :class:`StatusHandlers`.
"""

from __future__ import annotations

import logging
import signal
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from infra.db import session
from infra.metrics import CALLBACK_REQUESTS
from notifiers.errors import CallbackSignatureError
from notifiers.sms.gateway import verify_status_callback

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "GATEWAY_STATUS_PATH",
    "MAX_BODY_BYTES",
    "TWILIO_STATUS_PATH",
    "CallbackApp",
    "StatusHandlers",
    "make_server",
    "serve",
]

log = logging.getLogger("govnotify.api")

#: Paths of the two endpoints, below ``settings.api_public_url``.
TWILIO_STATUS_PATH = "/callbacks/twilio/status"
GATEWAY_STATUS_PATH = "/callbacks/gateway/status"
#: A status callback is a few hundred bytes; a gateway batch of reports a few KiB.
MAX_BODY_BYTES = 256 * 1024

StartResponse = Callable[..., Any]
#: (provider reference, status word, error code) of one report.
ReportFields = tuple[str, str, str | None]


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


class _Reply(Exception):
    """Raised inside a handler to answer at once with ``status`` and count ``outcome``."""

    def __init__(self, status: int, outcome: str, detail: str = "") -> None:
        super().__init__(detail or outcome)
        self.status = status
        self.outcome = outcome
        self.detail = detail or outcome


_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    503: "Service Unavailable",
}


class CallbackApp:
    """The WSGI application: one handler per provider, in an explicit route table."""

    def __init__(self, settings: Settings, status: StatusHandlers) -> None:
        self.settings = settings
        self.status = status
        #: path → (provider, handler returning (HTTP status, body, content type)).
        self.routes: dict[str, tuple[str, Callable[[dict[str, Any]], tuple[int, bytes, str]]]] = {
            TWILIO_STATUS_PATH: ("twilio", self._twilio),
            GATEWAY_STATUS_PATH: ("gateway", self._gateway),
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        route = self.routes.get(path)
        if route is None:
            return _respond(start_response, 404, b"not found\n")
        if environ.get("REQUEST_METHOD") != "POST":
            return _respond(start_response, 405, b"POST only\n", extra=[("Allow", "POST")])
        provider, handler = route
        try:
            status, body, content_type = handler(environ)
            outcome = "accepted"
        except _Reply as reply:
            status, body, content_type = reply.status, reply.outcome.encode() + b"\n", "text/plain"
            outcome = reply.outcome
            level = logging.ERROR if status >= 500 else logging.WARNING
            log.log(level, "%s callback refused (%d %s): %s", provider, status, outcome, reply)
        CALLBACK_REQUESTS.labels(provider, outcome).inc()
        return _respond(start_response, status, body, content_type=content_type)

    # ---- Twilio -------------------------------------------------------------------------------
    def _twilio(self, environ: dict[str, Any]) -> tuple[int, bytes, str]:
        from twilio.request_validator import RequestValidator

        settings = self.settings
        if not settings.twilio_auth_token:
            # Validating with an empty token would accept signatures anyone can compute.
            raise _Reply(404, "unconfigured", "Twilio is not configured here")
        signature = environ.get("HTTP_X_TWILIO_SIGNATURE")
        if not signature:
            raise _Reply(403, "unsigned", "no X-Twilio-Signature")
        raw = _read_body(environ)
        content_type = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise _Reply(400, "malformed", f"content type {content_type[:60]!r}")
        try:
            pairs = urllib.parse.parse_qsl(
                raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw)
            )
        except (UnicodeDecodeError, ValueError):
            raise _Reply(400, "malformed", "body is not form-encoded UTF-8") from None
        params = dict(pairs)
        # Twilio signs the URL it was given: the public one, with the query string as sent.
        url = settings.api_public_url + _path_and_query(environ)
        if not RequestValidator(settings.twilio_auth_token).validate(url, params, signature):
            raise _Reply(403, "forged", "X-Twilio-Signature does not verify")
        if params.get("AccountSid", settings.twilio_account_sid) != settings.twilio_account_sid:
            raise _Reply(403, "forged", "callback for another account")
        try:
            sid, word, code = self.status.twilio_fields(params)
        except self.status.malformed as exc:
            raise _Reply(400, "malformed", str(exc)) from None
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
            raise _Reply(404, "unconfigured", "the SMS gateway is not configured here")
        if not environ.get("HTTP_X_GATEWAY_SIGNATURE"):
            raise _Reply(403, "unsigned", "no X-Gateway-Signature")
        raw = _read_body(environ)
        try:
            reports = verify_status_callback(
                settings.gateway_secret,
                _headers(environ),
                raw,
                key_id=settings.gateway_key_id or None,
            )
        except CallbackSignatureError as exc:
            reason = exc.reason if exc.reason in ("unsigned", "malformed") else "forged"
            raise _Reply(400 if reason == "malformed" else 403, reason, str(exc)) from None
        try:
            # Every report is read before any is applied: a bad batch changes nothing.
            fields = [self.status.gateway_fields(report) for report in reports]
        except self.status.malformed as exc:
            raise _Reply(400, "malformed", str(exc)) from None
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
            raise _Reply(503, "error", f"database: {type(exc).__name__}") from None


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise _Reply(400, "malformed", "bad Content-Length") from None
    if length > MAX_BODY_BYTES:
        raise _Reply(413, "malformed", f"body of {length} bytes")
    return environ["wsgi.input"].read(length) if length > 0 else b""


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


def make_server(settings: Settings, app: CallbackApp) -> Any:
    """A waitress server for ``app`` on ``api_host:api_port`` (not yet running)."""
    from waitress import create_server

    return create_server(
        app,
        host=settings.api_host,
        port=settings.api_port,
        ident="govnotify",
        # Bodies are tiny; refuse anything large before it is read.
        max_request_body_size=MAX_BODY_BYTES,
    )


def serve(settings: Settings, status: StatusHandlers) -> None:
    """Serve the callbacks on ``api_host:api_port`` until SIGTERM or SIGINT (``govnotify api``,
    which serves ``/metrics`` and the health endpoints beside it)."""
    server = make_server(settings, CallbackApp(settings, status))

    def _stop(signum: int, frame: object) -> None:
        # waitress's run() catches SystemExit and shuts its worker threads down cleanly.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "api on %s:%s, callbacks at %s%s and %s%s",
        settings.api_host,
        settings.api_port,
        settings.api_public_url,
        TWILIO_STATUS_PATH,
        settings.api_public_url,
        GATEWAY_STATUS_PATH,
    )
    try:
        server.run()
    finally:
        server.close()
    log.info("api stopped")
