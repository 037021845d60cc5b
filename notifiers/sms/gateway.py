"""A mainland-style HTTP SMS gateway (Aliyun/Tencent manner): approved templates, signed JSON.

The second SMS provider. Mainland gateways do not take free text: a message names a registered
signature (签名, ``sign_name``), an approved template id and the template's parameters. So a
message is sent by :attr:`OutboundMessage.template` through ``templates`` (our template name →
the gateway's id) with :attr:`OutboundMessage.params`; a message without a mapped template
falls back on ``generic_template``, a template approved as ``${content}``, with the body (minus
our own 【signature】, which the gateway adds from ``sign_name``) as its one parameter. With
neither, :meth:`HttpGatewayNotifier.send` raises :class:`NotifierConfigError`: nothing was sent
and the fault is our configuration, not the message or the number (a routed send then moves on
to a provider that takes free text).

The wire contract (``tests/fakes/sms_gateway.py`` speaks it):

- ``POST {url}/sms/send`` with JSON ``{"phone": "+86…", "sign_name", "template_id", "params":
  {…}, "out_id": <our notification id>}`` → ``{"code": "OK", "biz_id": "…", "message": "…"}``,
  or another ``code`` (:data:`GATEWAY_ERROR_CODES`).
- ``GET {url}/sms/query?phone=…&since=<unix s>`` → ``{"code": "OK", "records": [{"biz_id",
  "out_id", "phone", "status", "content", "send_time"}]}``, used to resolve a timeout.
- ``GET {url}/sms/status?biz_id=…`` → ``{"code": "OK", "biz_id", "status", "error_code"}``.
- Every request carries ``X-Gateway-Key`` (key id), ``X-Gateway-Timestamp`` (unix seconds),
  ``X-Gateway-Nonce`` (uuid4 hex) and ``X-Gateway-Signature``: lowercase hex
  HMAC-SHA256(secret, ``f"{timestamp}\\n{nonce}\\n"`` + the raw body). A GET has no body; its
  path and query string stand in for it, so a query cannot be altered in transit.
- Status reports the gateway POSTs to us (``/callbacks/gateway/status`` on the api) are signed
  the same way: ``{"reports": [{"biz_id", "status": "SENT|DELIVERED|FAILED", "error_code",
  "reported_at"}]}``; :func:`verify_status_callback` checks and parses them.

The gateway's status words are declared on the notifier (:attr:`HttpGatewayNotifier.status_words`):
``SENT`` → ``sent``, ``DELIVERED`` → ``delivered``, ``FAILED`` by ``error_code`` through
:data:`GATEWAY_ERROR_CODES` (number codes such as ``isv.MOBILE_NUMBER_ILLEGAL`` permanent,
``isv.SMS_TEMPLATE_ILLEGAL`` technical). A code that table does not list is a temporary failure:
in a delivery report it is usually the carrier's word for a handset that was off or out of
coverage, unlike a refused send, where :func:`classify_gateway_error` takes an unlisted code as
permanent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

import requests

from infra.logging import mask_mobile, mask_pii
from notifiers.errors import (
    CallbackSignatureError,
    DeliveryError,
    DeliveryTimeoutError,
    InvalidRecipientError,
    LookupUnsupportedError,
    MessageRejectedError,
    NotifierConfigError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RateLimitedError,
    RecipientUnsubscribedError,
    TransientDeliveryError,
    UnsupportedRecipientError,
)
from notifiers.http import retry_after_s, transport_error
from notifiers.sms import OutboundMessage, ProviderStatus, Receipt, SMSNotifier
from notifiers.sms.text import count_segments
from schemas.models import NotificationStatus

__all__ = [
    "DAILY_LIMIT_CODES",
    "GATEWAY_ERROR_CODES",
    "RECIPIENT_LIMIT_CODES",
    "REPORT_STATUSES",
    "HttpGatewayNotifier",
    "classify_gateway_error",
    "sign",
    "signed_headers",
    "verify_status_callback",
]

_log = logging.getLogger(__name__)

PROVIDER = "gateway"

#: Header names of the signature scheme (requests and status reports alike).
KEY_HEADER = "X-Gateway-Key"
TIMESTAMP_HEADER = "X-Gateway-Timestamp"
NONCE_HEADER = "X-Gateway-Nonce"
SIGNATURE_HEADER = "X-Gateway-Signature"

#: Statuses a status report may carry.
REPORT_STATUSES = frozenset({"SENT", "DELIVERED", "FAILED"})

#: Gateway error code → the error we raise. A code not listed falls back on its prefix and the
#: HTTP status (see :func:`classify_gateway_error`).
GATEWAY_ERROR_CODES: dict[str, type[DeliveryError]] = {
    # -- the number: never retried, the number is suppressed for the category
    "isv.MOBILE_NUMBER_ILLEGAL": InvalidRecipientError,
    "isv.MOBILE_NUMBER_NOT_SUPPORTED": UnsupportedRecipientError,  # landline, no SMS route
    # This gateway uses the blacklist control for numbers that refused our messages (退订).
    "isv.BLACK_KEY_CONTROL_LIMIT": RecipientUnsubscribedError,
    "isv.MOBILE_IN_BLACKLIST": RecipientUnsubscribedError,
    "isv.UNSUBSCRIBED": RecipientUnsubscribedError,
    # -- the content: never retried, the number is fine
    "isv.TEMPLATE_MISSING_PARAMETERS": MessageRejectedError,
    "isv.TEMPLATE_PARAMS_ILLEGAL": MessageRejectedError,
    "isv.PARAM_LENGTH_LIMIT": MessageRejectedError,
    "isv.INVALID_PARAMETERS": MessageRejectedError,
    "isv.CONTENT_KEYWORD_FILTERED": MessageRejectedError,
    # -- our side: credentials, signature, templates, account; an operator must act
    "isv.SIGNATURE_INVALID": NotifierConfigError,  # our HMAC did not verify
    "isv.INVALID_KEY": NotifierConfigError,
    "isv.ACCESS_DENIED": NotifierConfigError,
    "isv.TIMESTAMP_EXPIRED": NotifierConfigError,  # our clock is off
    "isv.SMS_SIGNATURE_ILLEGAL": NotifierConfigError,  # sign_name not registered
    "isv.SMS_TEMPLATE_ILLEGAL": NotifierConfigError,  # template id not approved
    "isv.OUT_OF_SERVICE": NotifierConfigError,  # account suspended
    "isv.AMOUNT_NOT_ENOUGH": NotifierConfigError,  # prepaid balance exhausted
    # -- try again later (nothing was sent)
    # (the two limit controls are the carrier's anti-harassment limits on one number:
    # :data:`RECIPIENT_LIMIT_CODES`; Throttling is our account's request rate)
    "isv.BUSINESS_LIMIT_CONTROL": RateLimitedError,  # per-number frequency control
    "isv.DAY_LIMIT_CONTROL": RateLimitedError,  # per-number daily limit
    "Throttling": RateLimitedError,
    "isp.SYSTEM_ERROR": ProviderUnavailableError,
    "isp.SERVICE_UNAVAILABLE": ProviderUnavailableError,
}


#: Rate limits on messages to one number, not on our account: the message waits and goes to
#: the gateway again (another provider would defeat the limit); other messages go on.
RECIPIENT_LIMIT_CODES = frozenset({"isv.BUSINESS_LIMIT_CONTROL", "isv.DAY_LIMIT_CONTROL"})
#: Of those, the one that lasts until the day is over: retrying today cannot succeed.
DAILY_LIMIT_CODES = frozenset({"isv.DAY_LIMIT_CONTROL"})


def classify_gateway_error(status: int, code: str | None) -> type[DeliveryError]:
    """The error class for a gateway answer with HTTP ``status`` and error ``code``.

    A listed code decides. Otherwise HTTP 429 is throttling, 401/403 our credentials, 5xx an
    outage; an unlisted ``isp.`` code (the provider's own fault) is an outage too, and any
    other refusal (an ``isv.`` business code, another 4xx) is permanent: repeating the same
    request would be refused the same way.
    """
    if code and code in GATEWAY_ERROR_CODES:
        return GATEWAY_ERROR_CODES[code]
    if status == 429:
        return RateLimitedError
    if status in (401, 403):
        return NotifierConfigError
    if status >= 500 or (code or "").startswith("isp."):
        return ProviderUnavailableError
    return PermanentDeliveryError


# ---- signatures --------------------------------------------------------------------------------
def sign(secret: str, timestamp: str, nonce: str, raw: bytes) -> str:
    """Lowercase hex HMAC-SHA256(secret, ``timestamp\\nnonce\\n`` + ``raw``)."""
    message = f"{timestamp}\n{nonce}\n".encode() + raw
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_headers(
    key_id: str,
    secret: str,
    raw: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four signature headers for a request or status report whose signed bytes are ``raw``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or uuid.uuid4().hex
    return {
        KEY_HEADER: key_id,
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, ts, nonce, raw),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (WSGI environ-derived dicts, http.server, requests)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def verify_status_callback(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | dt.datetime | None = None,
    max_skew_s: float = 300,
    key_id: str | None = None,
) -> list[dict[str, Any]]:
    """Check a status report's signature and age, and return its reports.

    Replays inside the skew window are not refused here: applying a status is idempotent (one
    status event per provider reference, status and code), and refusing them would need state
    shared by every api process.

    Parameters:
      secret: the gateway secret the reports are signed with.
      headers: the request headers (any case).
      body: the raw request body, exactly as received: the signature covers these bytes.
      now: unix seconds or an aware datetime; default the current time.
      max_skew_s: how far the report's timestamp may be from ``now``, either way.
      key_id: when given, ``X-Gateway-Key`` must equal it.

    Raises:
      CallbackSignatureError: ``reason`` "unsigned" (no signature header), "forged" (wrong key,
        signature or a timestamp outside the skew) or "malformed" (not the agreed JSON).

    Returns:
      One dict per report: ``biz_id``, ``status`` (SENT, DELIVERED or FAILED), ``error_code``
      (``None`` when absent), ``reported_at`` (ISO 8601 text or ``None``) and ``out_id`` when
      the gateway gave one.
    """
    signature = _header(headers, SIGNATURE_HEADER)
    if not signature:
        raise CallbackSignatureError("status report carries no signature", reason="unsigned")
    timestamp = _header(headers, TIMESTAMP_HEADER) or ""
    nonce = _header(headers, NONCE_HEADER) or ""
    if not (timestamp.isascii() and timestamp.isdigit()) or not nonce:
        raise CallbackSignatureError("status report lacks a timestamp or nonce", reason="forged")
    if key_id is not None and _header(headers, KEY_HEADER) != key_id:
        raise CallbackSignatureError("status report signed with another key", reason="forged")
    expected = sign(secret, timestamp, nonce, body)
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise CallbackSignatureError("status report signature does not verify", reason="forged")
    if now is None:
        now_s = time.time()
    elif isinstance(now, dt.datetime):
        now_s = now.timestamp()
    else:
        now_s = float(now)
    if abs(now_s - int(timestamp)) > max_skew_s:
        # Checked after the signature, so an attacker learns nothing from which check failed.
        raise CallbackSignatureError(
            f"status report timestamp is {now_s - int(timestamp):.0f}s off; at most "
            f"{max_skew_s:.0f}s allowed (a replay?)",
            reason="forged",
        )
    return _parse_reports(body)


def _parse_reports(body: bytes) -> list[dict[str, Any]]:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CallbackSignatureError(
            f"status report is not JSON: {exc}", reason="malformed"
        ) from None
    reports = document.get("reports") if isinstance(document, dict) else None
    if not isinstance(reports, list):
        raise CallbackSignatureError("status report has no 'reports' list", reason="malformed")
    parsed = []
    for i, report in enumerate(reports):
        if not isinstance(report, dict):
            raise CallbackSignatureError(f"reports[{i}] is not an object", reason="malformed")
        biz_id = report.get("biz_id")
        status = report.get("status")
        if not isinstance(biz_id, str) or not biz_id or len(biz_id) > 64:
            raise CallbackSignatureError(f"reports[{i}].biz_id is missing", reason="malformed")
        if status not in REPORT_STATUSES:
            raise CallbackSignatureError(
                f"reports[{i}].status must be one of {sorted(REPORT_STATUSES)}", reason="malformed"
            )
        error_code = report.get("error_code")
        reported_at = report.get("reported_at")
        if error_code is not None and not isinstance(error_code, str | int):
            raise CallbackSignatureError(f"reports[{i}].error_code is not text", reason="malformed")
        if reported_at is not None:
            try:
                dt.datetime.fromisoformat(str(reported_at))
            except ValueError:
                raise CallbackSignatureError(
                    f"reports[{i}].reported_at is not ISO 8601", reason="malformed"
                ) from None
        item: dict[str, Any] = {
            "biz_id": biz_id,
            "status": status,
            "error_code": None if error_code in (None, "") else str(error_code),
            "reported_at": None if reported_at is None else str(reported_at),
        }
        if isinstance(report.get("out_id"), str):
            item["out_id"] = report["out_id"]
        parsed.append(item)
    return parsed


def _secure_url(url: object) -> bool:
    """An ``https`` URL with a host, or ``http`` to a loopback host (traffic that stays here)."""
    try:
        parts = urlsplit(url if isinstance(url, str) else "")
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a bad port or IPv6 literal
        return False
    if not host or port == 0:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host))


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- the notifier --------------------------------------------------------------------------------
class HttpGatewayNotifier(SMSNotifier):
    """SMS through a mainland-style HTTP gateway, by approved template.

    Parameters:
      url: the gateway's base URL (``https://sms.example.cn``); paths are appended. ``http``
        only to a loopback host (a local relay, a test fake): every request carries our key
        id and every message a citizen's number.
      key_id: our access key id, sent in ``X-Gateway-Key``; no whitespace.
      secret: the signing secret (never logged or echoed in errors); no whitespace.
      sign_name: the registered signature (签名) the gateway puts in front of every message.
      templates: our template name → the gateway's approved template id.
      generic_template: a template id approved as ``${content}``, for messages with no mapped
        template; empty when there is none.
      timeout: seconds to wait for an answer once the request is sent; past it the send is
        ambiguous (:class:`DeliveryTimeoutError`).
      connect_timeout: seconds to wait for a connection; past it nothing was sent.

    Raises:
      NotifierConfigError: when a parameter is missing or malformed, or when the notifier could
        send nothing at all (no template mapped and no generic template).
    """

    name: ClassVar[str] = "gateway"
    #: Long SMS on mainland gateways: at most 500 characters, signature included.
    body_maxlen: ClassVar[int] = 500
    #: The gateway's default API quota (requests per second for one account); every worker
    #: process keeps to it together (:mod:`notifiers.pacing`, ``GOVNOTIFY_SEND_RATES``).
    #: Exceeding it answers ``Throttling``, a :class:`RateLimitedError` that holds every worker
    #: back, with no failover.
    request_rate_per_sec: ClassVar[float | None] = 100.0
    #: Longest value of one template parameter the gateway accepts.
    param_maxlen: ClassVar[int] = 500
    daily_limit_codes: ClassVar[frozenset[str]] = DAILY_LIMIT_CODES
    #: Report and ``/sms/status`` words (:data:`REPORT_STATUSES`) → ours; ``None``: decided by
    #: ``error_code`` (:meth:`status_error`).
    status_words: ClassVar[Mapping[str, NotificationStatus | None]] = {
        "SENT": NotificationStatus.SENT,
        "DELIVERED": NotificationStatus.DELIVERED,
        "FAILED": None,
    }

    def __init__(
        self,
        url: str,
        key_id: str,
        secret: str,
        *,
        sign_name: str = "长安政务",
        templates: Mapping[str, str] | None = None,
        generic_template: str = "",
        timeout: float = 5.0,
        connect_timeout: float = 3.05,
    ) -> None:
        templates = dict(templates or {})
        problems = []
        if not _secure_url(url):
            problems.append("url must be an https URL (http only to a loopback host)")
        for label, value in (("key_id", key_id), ("secret", secret)):
            if not value or not value.strip():
                problems.append(f"{label} is empty")
            elif any(c.isspace() for c in value):
                problems.append(f"{label} contains whitespace")  # the value is not echoed
        if not sign_name.strip() or len(sign_name) > 12 or "【" in sign_name or "】" in sign_name:
            problems.append("sign_name must be 1-12 characters, without 【】")
        empty = sorted(name for name, template_id in templates.items() if not template_id.strip())
        if empty:
            problems.append(f"templates without an id: {', '.join(empty)}")
        if not templates and not generic_template.strip():
            problems.append("no template mapped and no generic template: nothing could be sent")
        if not timeout > 0 or not connect_timeout > 0:
            problems.append("timeouts must be positive")
        self._refuse_config("SMS gateway", problems)
        self.url = url.rstrip("/")
        self.key_id = key_id
        self._secret = secret
        self.sign_name = sign_name
        self.templates = templates
        self.generic_template = generic_template.strip()
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        # requests.Session is not documented as thread-safe: one per thread.
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HttpGatewayNotifier(url={self.url!r}, key_id={self.key_id!r})"

    # ---- transport ---------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        http: requests.Session | None = getattr(self._local, "session", None)
        if http is None:
            http = self._local.session = requests.Session()
            with self._sessions_lock:
                self._sessions.append(http)
        return http

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        payload: dict[str, Any] | None = None,
        action: str,
    ) -> tuple[int, dict[str, Any], float | None]:
        """(HTTP status, JSON answer, seconds of its ``Retry-After`` or ``None``); transport
        failures raised as typed errors."""
        target = path + ("?" + urlencode(query) if query else "")
        raw = (
            json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            if payload is not None
            else b""
        )
        # A GET has no body: its path and query are what is signed.
        headers = signed_headers(
            self.key_id, self._secret, raw if payload is not None else target.encode("utf-8")
        )
        if payload is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        try:
            response = self._session().request(
                method,
                self.url + target,
                data=raw if payload is not None else None,
                headers=headers,
                timeout=(self.connect_timeout, self.timeout),
            )
        except requests.exceptions.RequestException as exc:
            raise transport_error(exc, action, provider=PROVIDER) from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            if 200 <= response.status_code < 300:
                # Taken or not? A 2xx we cannot read is as ambiguous as no answer at all.
                raise DeliveryTimeoutError(
                    f"{action}: HTTP {response.status_code} with an unreadable body; the "
                    "request may have been accepted",
                    provider=PROVIDER,
                )
            answer = {}
        return response.status_code, answer, retry_after_s(response.headers.get("Retry-After"))

    def _error(
        self, action: str, status: int, answer: dict[str, Any], retry_after: float | None = None
    ) -> DeliveryError:
        code = answer.get("code")
        code = None if code in (None, "", "OK") else str(code)
        cls = classify_gateway_error(status, code)
        # The gateway's messages can quote the number; this text reaches logs and the database.
        text = mask_pii(str(answer.get("message") or ""))[:200]
        what = f"{action}: HTTP {status} code {code}: {text}"
        if issubclass(cls, RateLimitedError):
            scope = "recipient" if code in RECIPIENT_LIMIT_CODES else "provider"
            return cls(what, retry_after=retry_after, scope=scope, code=code, provider=PROVIDER)
        return cls(what, code=code, provider=PROVIDER)

    # ---- sending -----------------------------------------------------------------------------
    def template_for(self, message: OutboundMessage) -> tuple[str, dict[str, str]]:
        """(template id, parameters) the gateway gets for ``message``.

        Raises:
          NotifierConfigError: neither a mapped template nor a generic one.
        """
        if message.template and message.template in self.templates:
            return self.templates[message.template], {k: str(v) for k, v in message.params.items()}
        if self.generic_template:
            content = message.body
            own_signature = f"【{self.sign_name}】"
            # The gateway prefixes 【sign_name】 itself; ours too would show it twice.
            if content.startswith(own_signature):
                content = content[len(own_signature) :]
            return self.generic_template, {"content": content}
        raise NotifierConfigError(
            f"no gateway template for {message.template or 'a message without a template'!r} "
            "and no generic template (GOVNOTIFY_GATEWAY_TEMPLATES / "
            "GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE)",
            provider=PROVIDER,
        )

    def _send(self, message: OutboundMessage) -> Receipt:
        template_id, params = self.template_for(message)
        too_long = sorted(k for k, v in params.items() if len(v) > self.param_maxlen)
        if too_long:
            raise MessageRejectedError(
                f"template parameters over {self.param_maxlen} characters: {', '.join(too_long)}",
                provider=PROVIDER,
            )
        payload = {
            "phone": message.to,
            "sign_name": self.sign_name,
            "template_id": template_id,
            "params": params,
            # Our id, so a lookup after a timeout finds exactly this message.
            "out_id": message.notification_id,
        }
        try:
            status, answer, retry_after = self._request(
                "POST", "/sms/send", payload=payload, action="send"
            )
            if not (200 <= status < 300 and answer.get("code") == "OK" and answer.get("biz_id")):
                raise self._error("send", status, answer, retry_after)
        except DeliveryError as error:
            _log.warning(
                "gateway refused notification %s to %s: %s (reason=%s code=%s)",
                message.notification_id,
                mask_mobile(message.to),
                type(error).__name__,
                error.reason,
                error.code,
            )
            raise
        return Receipt(
            provider=PROVIDER,
            provider_ref=str(answer["biz_id"]),
            status="accepted",
            segments=count_segments(message.body),
        )

    # ---- asking afterwards ---------------------------------------------------------------------
    def lookup(
        self, to: str, body: str, since: dt.datetime, *, notification_id: str | None = None
    ) -> str | None:
        """The ``biz_id`` of our message to ``to`` sent at or after ``since``, or ``None``.

        With ``notification_id`` the record whose ``out_id`` is that id decides (every send
        carries it), and ``None`` means the gateway never took the message. Without it, a
        record's ``content`` must equal ``body``; a template send's content is the gateway's
        rendering, which we cannot reproduce, so when records exist and none matches the answer
        is not "not sent" but :class:`LookupUnsupportedError`: a sweep must not resend on a guess.

        Raises:
          ValueError: when ``since`` is naive.
          LookupUnsupportedError: see above.
          DeliveryError: when the gateway cannot be asked, classified like a send.
        """
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError("since must be timezone-aware")
        status, answer, _ = self._request(
            "GET",
            "/sms/query",
            query={"phone": to, "since": str(int(since.timestamp()))},
            action="query",
        )
        if not (200 <= status < 300 and answer.get("code") == "OK"):
            raise self._error("query", status, answer)
        records = [r for r in answer.get("records") or [] if isinstance(r, dict)]
        if notification_id is not None:
            for record in records:
                if record.get("out_id") == notification_id:
                    return str(record["biz_id"])
            return None
        for record in records:
            if record.get("content") in (body, self._signed(body)):
                return str(record["biz_id"])
        if records:
            raise LookupUnsupportedError(
                "gateway lookup without our notification id cannot tell template sends apart",
                provider=PROVIDER,
            )
        return None

    def _signed(self, body: str) -> str:
        own_signature = f"【{self.sign_name}】"
        return body if body.startswith(own_signature) else own_signature + body

    def fetch_status(self, provider_ref: str) -> ProviderStatus | None:
        """The gateway's status of ``provider_ref`` (a ``biz_id``), or ``None`` if it has no such
        message.

        Returns:
          SENT, DELIVERED or FAILED, as a :class:`ProviderStatus` carrying the ``error_code``
          of a failure (the sweep maps both like a status report).

        Raises:
          DeliveryError: when the gateway cannot be asked, classified like a send.
        """
        status, answer, _ = self._request(
            "GET", "/sms/status", query={"biz_id": provider_ref}, action="status"
        )
        if status == 404 or answer.get("code") == "isv.BIZ_ID_NOT_FOUND":
            return None
        if not (200 <= status < 300 and answer.get("code") == "OK" and answer.get("status")):
            raise self._error("status", status, answer)
        return ProviderStatus(str(answer["status"]), answer.get("error_code"))

    # ---- status words --------------------------------------------------------------------------
    @classmethod
    def status_word(cls, provider_status: str) -> str:
        """The gateway's words are upper case (``DELIVERED``)."""
        return provider_status.upper()

    @classmethod
    def status_error(cls, error_code: str | None) -> type[DeliveryError]:
        """The error of a ``FAILED`` report's code; one :data:`GATEWAY_ERROR_CODES` does not
        list (or none) is transient, unlike a refused send (:func:`classify_gateway_error`)."""
        if not error_code:
            return TransientDeliveryError
        return GATEWAY_ERROR_CODES.get(error_code, TransientDeliveryError)

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for http in sessions:
            http.close()
        self._local = threading.local()
