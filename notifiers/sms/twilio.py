"""Twilio Programmable Messaging, through the real ``twilio`` client.

Errors are classified by Twilio's error code first (:data:`TWILIO_ERROR_CODES`), then by HTTP
status, into the typed errors of :mod:`notifiers.errors`. Message create has no idempotency key,
so a timeout after the request went out is ambiguous: it is raised as
:class:`DeliveryTimeoutError` and :meth:`TwilioSMSNotifier.lookup` lets a sweep find out whether
the message exists before anything is sent again. :meth:`TwilioSMSNotifier.fetch_status` asks
for the fate of a message by sid, for a sweep of messages whose status callback never came.

Twilio's status words (``MessageStatus`` of a callback, ``status`` of a fetched message) are
declared on the notifier, :attr:`TwilioSMSNotifier.status_words`: ``accepted``, ``scheduled``,
``queued``, ``sending``, ``sent`` → ``sent`` (Twilio has the message; our ``sending`` means
"claimed, provider call in flight", so any word from Twilio is already past it); ``delivered``,
``read`` → ``delivered``; ``canceled`` → ``cancelled``; ``undelivered`` and ``failed`` by
``ErrorCode`` through :data:`TWILIO_ERROR_CODES`: a number or content error (21211, 21610,
21614, 30005, 30006, 30007 …) is a permanent failure, an account or setting error (21408 …) a
technical one (our side, not the citizen's), anything else (30003 handset off or out of
coverage, 30008 unknown, no code) a temporary one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import certifi
import requests
import urllib3
from twilio.base.exceptions import TwilioException
from twilio.http import HttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from infra.logging import mask_mobile, mask_pii
from notifiers.errors import (
    DeliveryError,
    InvalidRecipientError,
    MessageRejectedError,
    NotifierConfigError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RateLimitedError,
    RecipientUnsubscribedError,
    TransientDeliveryError,
    UnsupportedRecipientError,
)
from notifiers.http import transport_error
from notifiers.sms import OutboundMessage, ProviderStatus, Receipt, SMSNotifier
from notifiers.sms.text import count_segments
from schemas.models import NotificationStatus

__all__ = [
    "TWILIO_ERROR_CODES",
    "TwilioSMSNotifier",
    "classify_twilio_error",
]

_log = logging.getLogger(__name__)

PROVIDER = "twilio"

#: Twilio error code → the error we raise. Codes come from API answers (2xxxx) and from status
#: callbacks' ``ErrorCode`` (3xxxx). A code not listed falls back on the HTTP status
#: (see :func:`classify_twilio_error`). https://www.twilio.com/docs/api/errors
TWILIO_ERROR_CODES: dict[int, type[DeliveryError]] = {
    # -- the recipient is not a phone number
    21211: InvalidRecipientError,  # Invalid 'To' phone number
    21217: InvalidRecipientError,  # Phone number does not appear to be valid
    21401: InvalidRecipientError,  # Invalid phone number
    21421: InvalidRecipientError,  # PhoneNumber is invalid
    21604: InvalidRecipientError,  # 'To' phone number is required
    30005: InvalidRecipientError,  # Unknown destination handset (callback)
    # -- the recipient said no
    21610: RecipientUnsubscribedError,  # Attempt to send to unsubscribed recipient (STOP)
    # -- a real number that cannot take this SMS
    21612: UnsupportedRecipientError,  # 'To' number is not currently reachable via SMS
    21614: UnsupportedRecipientError,  # 'To' number is not a valid mobile number
    30006: UnsupportedRecipientError,  # Landline or unreachable carrier (callback)
    # -- the content
    21602: MessageRejectedError,  # Message body is required
    21617: MessageRejectedError,  # Concatenated message body exceeds the 1600 character limit
    30007: MessageRejectedError,  # Message filtered by the carrier (callback)
    # -- our account or settings. 21408 is an account setting (Geo Permissions for the
    # destination country), not a fault of the number: suppressing the citizen would be wrong.
    20003: NotifierConfigError,  # Authentication failed
    20005: NotifierConfigError,  # Account not active
    20404: NotifierConfigError,  # Resource not found: wrong account SID in the URL
    21212: NotifierConfigError,  # Invalid 'From' number
    21408: NotifierConfigError,  # Permission to send an SMS has not been enabled for the region
    21606: NotifierConfigError,  # 'From' number is not a valid message-capable Twilio number
    21660: NotifierConfigError,  # Mismatch between the 'From' number and the account
    # -- try again later
    20429: RateLimitedError,  # Too many requests
    20500: ProviderUnavailableError,  # Internal server error
    20503: ProviderUnavailableError,  # Service unavailable
}


def classify_twilio_error(status: int | None, code: int | None) -> type[DeliveryError]:
    """The error class for a Twilio answer with HTTP ``status`` and error ``code``.

    ``status`` is ``None`` for a status callback's ``ErrorCode``; an unknown code there is taken
    as transient, because Twilio's ``undelivered`` covers temporary handset and carrier states.
    """
    if code is not None and code in TWILIO_ERROR_CODES:
        return TWILIO_ERROR_CODES[code]
    if status is None:
        return TransientDeliveryError
    if status == 429:
        return RateLimitedError
    if status in (401, 403):
        return NotifierConfigError
    if status >= 500:
        return ProviderUnavailableError
    if 400 <= status < 500:
        return PermanentDeliveryError
    # A 2xx/3xx that the client still refused (e.g. a page that is not JSON): try later.
    return ProviderUnavailableError


def _twilio_exception_details(exc: TwilioException) -> tuple[int | None, int | None, str]:
    """(HTTP status, Twilio code, message) from any of the client's exception shapes."""
    # TwilioRestException (legacy JSON errors) and TwilioServiceException (RFC 9457 errors)
    # both carry .status/.code but are siblings, not one subclass of the other.
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    message = getattr(exc, "msg", None) or getattr(exc, "title", None) or ""
    if status is None and len(exc.args) >= 2 and isinstance(exc.args[1], TwilioResponse):
        # A list page that is not 200 raises a bare TwilioException("Unable to fetch page",
        # response): no status attribute, only the response object.
        status = exc.args[1].status_code
        message = str(exc.args[0])
    # With no "code" in the error JSON the client copies the HTTP status into .code.
    if code is not None and code == status:
        code = None
    return (
        int(status) if status is not None else None,
        int(code) if code is not None else None,
        str(message),
    )


def _classify_exception(exc: BaseException, action: str) -> DeliveryError:
    """Our typed error for a client or transport exception; the caller raises it."""
    if isinstance(exc, TwilioException):
        status, code, message = _twilio_exception_details(exc)
        cls = classify_twilio_error(status, code)
        # Twilio's messages quote the number ("The 'To' number +86138… is not valid"), and
        # this text ends up in logs and the database.
        return cls(
            f"{action}: HTTP {status} code {code}: {mask_pii(message)}",
            code=code,
            provider=PROVIDER,
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return transport_error(exc, action, provider=PROVIDER)
    raise TypeError(mask_pii(f"not a provider error: {exc!r}"))


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


class _RoutingHttpClient(HttpClient):
    """Twilio's HTTP client interface over one urllib3 pool, with every ``https://*.twilio.com``
    URL sent to ``api_base``.

    Rewriting here, below the client, covers every domain (api, messaging, lookups …) and
    follow-up page URLs alike, where ``client.api.base_url`` covers only the api domain.

    twilio's own ``TwilioHttpClient`` sends through ``requests``, which prepared each request
    the long way (hooks, merged settings, cookies, typing-protocol checks): with ``urllib3``
    under it, ~30% of a sending worker's time, for the same request on the same keep-alive
    connection. This client sends what ``TwilioHttpClient`` sends (form body, basic auth,
    twilio's headers; no redirects unless asked) and raises the ``requests`` exceptions
    ``requests`` would raise for each failure, so :func:`notifiers.http.transport_error`
    reads them the same way (connect timeout: nothing sent; read timeout or a connection
    dropped after the request was written: perhaps sent).
    """

    #: Connections kept per host (one client per worker thread: one in use at a time).
    pool_size = 2

    def __init__(self, api_base: str | None, timeout: float) -> None:
        super().__init__(logger=logging.getLogger("twilio.http_client"), is_async=False)
        self.timeout = timeout
        self._api_base = api_base.rstrip("/") if api_base else None
        # The proxy and CA-bundle variables of the environment, read once for the host we
        # send to, by requests' own rules (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE …).
        target = self._api_base or "https://api.twilio.com"
        with requests.Session() as reader:
            env = reader.merge_environment_settings(target, {}, None, None, None)
        #: Proxy URL by scheme, as requests reads them (empty: straight to the host).
        self.proxy: dict[str, str] = env["proxies"]
        verify, cert = env["verify"], env["cert"]
        #: The CA bundle trusted (a path; requests' own, certifi's, by default), or None: no
        #: verification (REQUESTS_CA_BUNDLE cannot say that; kept for parity with requests).
        self.ca_bundle: str | None = (
            verify if isinstance(verify, str) else (certifi.where() if verify else None)
        )
        pool_kw: dict[str, Any] = {
            "maxsize": self.pool_size,
            "cert_reqs": "CERT_REQUIRED" if self.ca_bundle else "CERT_NONE",
            "ca_certs": self.ca_bundle,
        }
        if isinstance(cert, str):
            pool_kw["cert_file"] = cert
        elif isinstance(cert, tuple):
            pool_kw["cert_file"], pool_kw["key_file"] = cert
        self._pool_kw = pool_kw
        self._managers: dict[str | None, urllib3.PoolManager] = {}

    def manager_for(self, url: str) -> urllib3.PoolManager:
        """The pool ``url`` is sent through: a proxy's when the environment names one for it."""
        proxy = requests.utils.select_proxy(url, self.proxy)
        manager = self._managers.get(proxy)
        if manager is None:
            if proxy:
                manager = urllib3.ProxyManager(proxy, **self._pool_kw)
            else:
                manager = urllib3.PoolManager(**self._pool_kw)
            self._managers[proxy] = manager
        return manager

    def _route(self, url: str) -> str:
        if self._api_base is None:
            return url
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" or not (host == "twilio.com" or host.endswith(".twilio.com")):
            return url
        base = urlsplit(self._api_base)
        path = base.path.rstrip("/") + parts.path
        return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: Mapping[str, object] | None = None,
        data: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        if timeout is None:
            timeout = self.timeout
        elif timeout <= 0:
            raise ValueError(timeout)
        method = method.upper()
        url = self._route(url)
        query = _form(params)
        if query:
            url += ("&" if urlsplit(url).query else "?") + query
        sent = dict(headers or {})
        body: bytes | None = None
        if data is not None:
            if sent.get("Content-Type") in ("application/json", "application/scim+json"):
                body = json.dumps(data).encode()
            else:
                body = _form(data).encode()
                sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if auth is not None:
            sent.update(urllib3.make_headers(basic_auth=f"{auth[0]}:{auth[1]}"))
        self.log_request({"method": method, "url": url})
        self._test_only_last_response = None
        try:
            answer = self.manager_for(url).request(
                method,
                url,
                body=body,
                headers=sent,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                retries=False,
                redirect=allow_redirects,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _as_requests_error(exc) from exc
        response = TwilioResponse(answer.status, _text(answer), answer.headers)
        self.log_response(answer.status, response)
        self._test_only_last_response = response
        return response

    def log_request(self, kwargs: dict[str, Any]) -> None:
        # The base class logs query parameters at INFO, and a list() query carries To=<number>.
        self.logger.debug("%s %s", kwargs["method"], urlsplit(kwargs["url"]).path)

    def close(self) -> None:
        for manager in self._managers.values():
            manager.clear()


def _form(values: Mapping[str, object] | None) -> str:
    """``values`` form-encoded as requests encodes a dict: lists repeat their key, None is
    left out, text is UTF-8."""
    if not values:
        return ""
    pairs: list[tuple[str, object]] = []
    for key, value in values.items():
        items = value if isinstance(value, list | tuple) else [value]
        pairs.extend((key, item) for item in items if item is not None)
    return urlencode(pairs)


def _text(answer: urllib3.BaseHTTPResponse) -> str:
    """The body as text, in the charset the answer declares (UTF-8 without one: Twilio's)."""
    charset = "utf-8"
    for part in answer.headers.get("Content-Type", "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"')
    try:
        return answer.data.decode(charset, errors="replace")
    except LookupError:
        return answer.data.decode("utf-8", errors="replace")


def _as_requests_error(exc: BaseException) -> requests.exceptions.RequestException:
    """The exception requests' HTTPAdapter raises for ``exc`` (no retries), which is what
    :func:`notifiers.http.transport_error` classifies."""
    errors = requests.exceptions
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return errors.ConnectionError(exc)  # refused or unreachable (it is a connect timeout too)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return errors.ConnectTimeout(exc)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return errors.ReadTimeout(exc)
    if isinstance(exc, urllib3.exceptions.ProxyError):
        return errors.ProxyError(exc)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return errors.SSLError(exc)
    if isinstance(exc, urllib3.exceptions.DecodeError):
        return errors.ContentDecodingError(exc)
    if isinstance(exc, urllib3.exceptions.ProtocolError | OSError):
        # As requests: args[0] is the ProtocolError ("Connection aborted": perhaps sent).
        return errors.ConnectionError(exc)
    return errors.RequestException(exc)


class TwilioSMSNotifier(SMSNotifier):
    """SMS through Twilio's Messages API.

    Parameters:
      account_sid: ``AC`` and 32 hex digits (:attr:`account_sid_pattern`).
      auth_token: the account's Auth Token, 32 hex digits (never logged or echoed in errors).
      from_: sender: an E.164 number, or a Messaging Service SID (``MG…``) to let Twilio pick
        from the service's sender pool (:attr:`sender_pattern`).
      api_base: replaces ``https://*.twilio.com`` (a sandbox or a test fake).
      timeout: seconds for connect and for each read.
      status_callback_url: where Twilio should POST status callbacks for every message that
        does not name its own (``<api_public_url>/callbacks/twilio/status``); ``None``: none.

    Raises:
      NotifierConfigError: when a parameter is missing or malformed.
    """

    name: ClassVar[str] = "twilio"
    #: Twilio to mainland China: 500 characters at most.
    body_maxlen: ClassVar[int] = 500
    #: Message creates per second, for every worker process together. Twilio limits an account's
    #: *concurrent* API requests (about 100; past that it answers 20429, "safe to retry after
    #: backing off") and queues each sender's messages at that sender's own throughput (1
    #: message a second for a long code), up to four hours' worth. 50 a second keeps us well
    #: inside the concurrency (at most 50 in flight even if each took a second) and leaves
    #: room for the sweep's lookups and anyone else on the account; how fast the messages then
    #: leave Twilio's queue is the sender's throughput, not ours to pace. Set
    #: ``GOVNOTIFY_SEND_RATES`` twilio=<the senders' total MPS> to hold them here instead.
    request_rate_per_sec: ClassVar[float | None] = 50.0
    #: Twilio's ``MessageStatus`` → ours; ``None``: decided by ``ErrorCode``
    #: (:meth:`status_error`).
    status_words: ClassVar[Mapping[str, NotificationStatus | None]] = {
        "accepted": NotificationStatus.SENT,
        "scheduled": NotificationStatus.SENT,
        "queued": NotificationStatus.SENT,
        "sending": NotificationStatus.SENT,
        "sent": NotificationStatus.SENT,
        "delivered": NotificationStatus.DELIVERED,
        "read": NotificationStatus.DELIVERED,
        "undelivered": None,
        "failed": None,
        "canceled": NotificationStatus.CANCELLED,
    }
    #: How far Twilio's clock may be behind ours when the sweep matches a message's creation.
    lookup_clock_skew_s: ClassVar[float] = 30.0
    #: Account SID: "AC" and 32 hex digits (the pattern in Twilio's API reference). The
    #: settings check the same shapes at start (GOVNOTIFY_TWILIO_*), naming the variable.
    account_sid_pattern: ClassVar[re.Pattern[str]] = re.compile(r"AC[0-9a-fA-F]{32}")
    #: Auth Token: 32 hex digits.
    auth_token_pattern: ClassVar[re.Pattern[str]] = re.compile(r"[0-9a-fA-F]{32}")
    #: Sender: an E.164 number ("+" and 7 to 15 digits) or a Messaging Service SID; Twilio
    #: takes either in ``From`` (see its error 21603). Alphanumeric sender ids are not accepted.
    sender_pattern: ClassVar[re.Pattern[str]] = re.compile(r"\+[1-9][0-9]{6,14}|MG[0-9a-fA-F]{32}")

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_: str,
        *,
        api_base: str | None = None,
        timeout: float = 10.0,
        status_callback_url: str | None = None,
    ) -> None:
        problems = []
        if not _matches(self.account_sid_pattern, account_sid):
            problems.append("account_sid must be 'AC' and 32 hex digits")
        if not auth_token:
            problems.append("auth_token is empty")
        elif not _matches(self.auth_token_pattern, auth_token):
            problems.append("auth_token must be 32 hex digits")  # never echoed
        if not _matches(self.sender_pattern, from_):
            problems.append(
                "from_ must be an E.164 number or a Messaging Service SID ('MG' and 32 hex digits)"
            )
        if api_base and urlsplit(api_base).scheme not in ("http", "https"):
            problems.append("api_base must be an http(s) URL")
        if not timeout > 0:
            problems.append("timeout must be positive")
        if status_callback_url and urlsplit(status_callback_url).scheme not in ("http", "https"):
            problems.append("status_callback_url must be an http(s) URL")
        self._refuse_config("Twilio notifier", problems)
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.from_ = from_
        self.api_base = api_base or None
        self.timeout = float(timeout)
        self.status_callback_url = status_callback_url or None
        # Workers run many threads: one client (and connection pool) per thread, so a thread
        # never waits for another's connection.
        self._local = threading.local()
        self._http_clients: list[_RoutingHttpClient] = []
        self._clients_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TwilioSMSNotifier(account_sid={self.account_sid!r}, api_base={self.api_base!r})"

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            http_client = _RoutingHttpClient(self.api_base, self.timeout)
            client = Client(self.account_sid, self._auth_token, http_client=http_client)
            self._local.client = client
            with self._clients_lock:
                self._http_clients.append(http_client)
        return client

    def _send(self, message: OutboundMessage) -> Receipt:
        kwargs: dict[str, Any] = {"to": message.to, "from_": self.from_, "body": message.body}
        callback = message.status_callback or self.status_callback_url
        if callback:
            kwargs["status_callback"] = callback
        try:
            created = self._client().messages.create(**kwargs)
        except (TwilioException, requests.exceptions.RequestException) as exc:
            error = _classify_exception(exc, "create message")
            _log.warning(
                "twilio refused notification %s to %s: %s (reason=%s code=%s)",
                message.notification_id,
                mask_mobile(message.to),
                type(error).__name__,
                error.reason,
                error.code,
            )
            raise error from exc
        return Receipt(
            provider=PROVIDER,
            provider_ref=str(created.sid),
            status=str(created.status or "queued"),
            segments=int(created.num_segments or count_segments(message.body)),
        )

    def lookup(
        self, to: str, body: str, since: dt.datetime, *, notification_id: str | None = None
    ) -> str | None:
        """The sid of a message to ``to`` with exactly ``body``, created at or after ``since``.

        Used by the sweep to resolve a :class:`DeliveryTimeoutError`: a sid means Twilio took
        the message and it must not be sent again. Messages are matched on when Twilio
        *created* them, not on its ``DateSent`` filter: a message still waiting in the sender's
        queue has no send date yet, and missing it would mean a second SMS. Only the 50 most
        recent messages from our sender to ``to`` are read.

        Parameters:
          since: timezone-aware; allowed ``lookup_clock_skew_s`` of disagreement with Twilio.

        Raises:
          ValueError: when ``since`` is naive.
          DeliveryError: when Twilio cannot be asked, classified like a send.
        """
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError("since must be timezone-aware")
        earliest = since.astimezone(dt.UTC) - dt.timedelta(seconds=self.lookup_clock_skew_s)
        try:
            found = self._client().messages.list(to=to, from_=self.from_, limit=50)
        except (TwilioException, requests.exceptions.RequestException) as exc:
            raise _classify_exception(exc, "list messages") from exc
        for candidate in found:
            created = candidate.date_created
            if candidate.body == body and created is not None and created >= earliest:
                return str(candidate.sid)
        return None

    def fetch_status(self, provider_ref: str) -> ProviderStatus | None:
        """Twilio's current status of message ``provider_ref`` (its sid), with its error code.

        Used by the sweep for messages left ``sent`` with no final status callback. ``None``
        when Twilio has no such message (HTTP 404).

        Raises:
          DeliveryError: when Twilio cannot be asked, classified like a send.
        """
        try:
            message = self._client().messages(provider_ref).fetch()
        except (TwilioException, requests.exceptions.RequestException) as exc:
            if isinstance(exc, TwilioException) and _twilio_exception_details(exc)[0] == 404:
                return None
            raise _classify_exception(exc, "fetch message") from exc
        return ProviderStatus(str(message.status or ""), message.error_code)

    @classmethod
    def status_error(cls, error_code: str | None) -> type[DeliveryError]:
        """The error of a callback's ``ErrorCode``; an unknown one, or none, is transient."""
        code = int(error_code) if error_code and error_code.isdigit() else None
        return classify_twilio_error(None, code)

    def close(self) -> None:
        with self._clients_lock:
            clients, self._http_clients = self._http_clients, []
        for http_client in clients:
            http_client.close()
        self._local = threading.local()
