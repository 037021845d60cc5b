"""Staff alerts by HTTP POST: our generic JSON, or a WeCom / DingTalk group robot.

Staff are reached through the systems they already watch: a staff portal taking our JSON, or a
group robot in WeCom (企业微信) or DingTalk (钉钉). One :class:`WebhookNotifier` posts one
:class:`~notifiers.staff.StaffMessage` to one URL in one format.

Robot URLs carry their secret in the query string (``?key=…``, ``?access_token=…``), so the URL
is never logged, never put in an error message and never chained into a traceback: logs name the
scheme and host only. The robots answer HTTP 200 even when they refuse a message and put the
verdict in ``{"errcode", "errmsg"}``; both layers are classified into the typed errors of
:mod:`notifiers.errors`, and every limit is checked before the request so a message a robot would
refuse fails at once and permanently. Anything in the title or text shaped like a mobile or an
ID-card number (a citizen's, or an 18-digit case id that looks like one) is masked before it
leaves, never a reason to refuse the alert: an alert refused for good is an alert nobody reads.
"""

from __future__ import annotations

import base64
import contextvars
import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args
from urllib.parse import quote_plus, urlsplit

import requests

from notifiers.base import E164_PATTERN, Notifier
from notifiers.errors import (
    DeliveryError,
    InvalidRecipientError,
    MessageRejectedError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RateLimitedError,
    TransientDeliveryError,
)
from notifiers.http import retry_after_s, transport_error
from notifiers.staff import StaffMessage
from schemas.pii import mask_mobile, mask_pii

__all__ = [
    "ROBOT_ERRCODES",
    "WEBHOOK_FORMATS",
    "WebhookFormat",
    "WebhookNotifier",
    "WebhookReceipt",
]

_log = logging.getLogger(__name__)

PROVIDER = "webhook"

WebhookFormat = Literal["json", "wecom", "dingtalk"]
#: The body formats a webhook can take, as a tuple for validation and messages.
WEBHOOK_FORMATS: tuple[str, ...] = get_args(WebhookFormat)

#: Robot ``errcode`` → the error we raise; any other non-zero code is permanent. -1 is "系统繁忙"
#: on both platforms: the robot was reached but could not take the message now.
ROBOT_ERRCODES: dict[int, type[DeliveryError]] = {
    45009: RateLimitedError,  # WeCom: more than 20 messages a minute to one robot
    130101: RateLimitedError,  # DingTalk: "send too fast", more than 20 a minute
    -1: ProviderUnavailableError,  # WeCom / DingTalk: system busy
}
#: The robots' limit is counted over a minute: after a refusal, this long until the window
#: has surely cleared (the robot says nothing more precise).
ROBOT_LIMIT_WINDOW_S = 60.0

# Set while this module's request is on the wire: urllib3 logs the request line (path and query,
# so the robot key) at DEBUG, and the filter below redacts it only for our requests.
_IN_WEBHOOK_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "govnotify_webhook_request", default=False
)


class _RedactRequestLine(logging.Filter):
    """Replaces the request target in urllib3's DEBUG lines while a webhook request runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        # urllib3.connectionpool: '%s://%s:%s "%s %s %s" %s %s' with the target as 5th argument.
        if _IN_WEBHOOK_REQUEST.get() and isinstance(record.args, tuple) and len(record.args) >= 5:
            args = list(record.args)
            args[4] = "<redacted>"
            record.args = tuple(args)
        return True


_urllib3_log = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _RedactRequestLine) for f in _urllib3_log.filters):
    _urllib3_log.addFilter(_RedactRequestLine())


@contextmanager
def _webhook_request() -> Iterator[None]:
    token = _IN_WEBHOOK_REQUEST.set(True)
    try:
        yield
    finally:
        _IN_WEBHOOK_REQUEST.reset(token)


@dataclass(frozen=True)
class WebhookReceipt:
    """What the receiver answered when it accepted a message."""

    status_code: int
    #: The receiver's id for the message when it gave one (``"id"`` in a JSON answer); robots
    #: give none.
    provider_ref: str | None


class WebhookNotifier(Notifier[StaffMessage, WebhookReceipt]):
    """POSTs :class:`StaffMessage` s to one URL in one format.

    Parameters:
      url: ``http`` or ``https`` URL with a host; for robots, the full URL with its key.
      fmt: ``"json"`` (our body, HMAC-signed when ``secret`` is set), ``"wecom"`` or
        ``"dingtalk"`` (group robot text messages).
      secret: for ``"json"`` the HMAC key of ``X-Govnotify-Signature``; for ``"dingtalk"`` the
        robot's 加签 secret. WeCom robots have no signing, so a secret there is refused.
      timeout: seconds for connect and for the answer.

    Raises:
      NotifierConfigError: naming each problem with the parameters.
    """

    name: ClassVar[str] = "webhook"
    channel: ClassVar[str] = "webhook"
    #: Longest title + text of a ``"json"`` message, in characters.
    body_maxlen: ClassVar[int] = 4096
    #: WeCom robot text: ``content`` at most 2048 bytes of UTF-8 (about 680 Chinese characters).
    wecom_content_maxbytes: ClassVar[int] = 2048
    #: DingTalk robot text: ``content`` at most 20000 characters.
    dingtalk_content_maxlen: ClassVar[int] = 20000
    #: Both robots accept 20 messages a minute each; more is answered 45009 / 130101. A
    #: ``"json"`` webhook (our own body, to a portal of the centre's) declares no limit
    #: (:attr:`declared_rate`).
    request_rate_per_sec: ClassVar[float | None] = 20 / 60

    def __init__(
        self,
        url: str,
        *,
        fmt: WebhookFormat = "json",
        secret: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        problems = []
        parts = urlsplit(url if isinstance(url, str) else "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The URL itself is not echoed: it may hold the robot's key.
            problems.append("url must be an http(s) URL with a host")
        if fmt not in WEBHOOK_FORMATS:
            problems.append(f"fmt must be one of {list(WEBHOOK_FORMATS)}, got {fmt!r}")
        if secret is not None and not secret:
            problems.append("secret is empty; leave it unset instead")
        if secret and fmt == "wecom":
            problems.append("secret is not supported by WeCom robots (they have no signing)")
        if not (isinstance(timeout, int | float) and timeout > 0):
            problems.append("timeout must be a positive number of seconds")
        self._refuse_config("webhook notifier", problems)
        self._url = url
        self.fmt: WebhookFormat = fmt
        self._secret = secret
        self.timeout_s = float(timeout)
        #: ``scheme://host[:port]``: all of the URL that may appear in logs and errors.
        self.endpoint = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        # requests.Session is not documented as thread-safe and workers run many threads: one
        # session (and connection pool) per thread.
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"WebhookNotifier(endpoint={self.endpoint!r}, fmt={self.fmt!r})"

    @property
    def declared_rate(self) -> float | None:
        """A WeCom or DingTalk robot's 20 a minute; a ``"json"`` receiver's is not ours to know."""
        return None if self.fmt == "json" else self.request_rate_per_sec

    # ---- sending -----------------------------------------------------------------------------
    def _send(self, message: StaffMessage) -> WebhookReceipt:
        """POST a validated ``message`` and classify the answer (:meth:`send` validates first).

        Raises:
          ProviderUnavailableError: cannot connect, 5xx, or robot errcode -1.
          RateLimitedError: HTTP 429, or robot errcode 45009 (WeCom) / 130101 (DingTalk).
          DeliveryTimeoutError: no answer in time; the receiver may have taken the message.
          PermanentDeliveryError: any other 3xx/4xx, or another robot errcode (``code`` holds it).

        Returns:
          The :class:`WebhookReceipt`.
        """
        body = self._body(message)
        url = self._signed_url()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Govnotify-Id": message.message_id,
        }
        if self.fmt == "json" and self._secret:
            digest = hmac.new(self._secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
            headers["X-Govnotify-Signature"] = f"sha256={digest}"
        try:
            with _webhook_request():
                response = self._session().post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=self.timeout_s,
                    # A redirect would re-send the alert to another place (as a GET, even).
                    allow_redirects=False,
                )
        except requests.exceptions.RequestException as exc:
            error = self._transport_error(exc)
            self._log_refusal(message, error)
            # "from None": the requests exception's text holds the full URL, key included, and
            # a chained traceback would put it in the worker's log.
            raise error from None
        try:
            receipt = self._receipt(response)
        except DeliveryError as error:
            self._log_refusal(message, error)
            raise
        finally:
            response.close()
        return receipt

    def _log_sent(self, message: StaffMessage, receipt: WebhookReceipt) -> None:
        _log.info(
            "sent staff message %s (%s) via %s %s: status=%d ref=%s mentions=%s",
            message.message_id,
            message.kind,
            self.fmt,
            self.endpoint,
            receipt.status_code,
            receipt.provider_ref,
            [mask_mobile(m) for m in message.mention_mobiles],
        )

    def _validate(self, message: StaffMessage) -> None:
        """Every check a receiver of this format would make; nothing is sent.

        Limits are checked on the text as it will be sent, numbers masked.

        Raises:
          MessageRejectedError: empty title/text, over this format's limit, or data that is
            not JSON-serialisable.
          InvalidRecipientError: a mention is not an E.164 mainland mobile.
        """
        if not message.title.strip() or not message.text.strip():
            raise MessageRejectedError("staff message title or text is empty", provider=PROVIDER)
        try:
            # Checked for every format, though only "json" sends it: the same message must be
            # valid whichever receiver a staff member has.
            json.dumps(dict(message.data), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise MessageRejectedError(
                f"staff message data is not JSON-serialisable: {exc}", provider=PROVIDER
            ) from None
        for mobile in message.mention_mobiles:
            self._national(mobile)
        title, text = message.shown()
        content = f"{title}\n{text}"
        if self.fmt == "wecom":
            size = len(content.encode("utf-8"))
            if size > self.wecom_content_maxbytes:
                raise MessageRejectedError(
                    f"WeCom content is {size} bytes of UTF-8; robots accept at most "
                    f"{self.wecom_content_maxbytes}",
                    provider=PROVIDER,
                )
        elif self.fmt == "dingtalk":
            if len(content) > self.dingtalk_content_maxlen:
                raise MessageRejectedError(
                    f"DingTalk content is {len(content)} characters; robots accept at most "
                    f"{self.dingtalk_content_maxlen}",
                    provider=PROVIDER,
                )
        elif len(title) + len(text) > self.body_maxlen:
            raise MessageRejectedError(
                f"staff message title and text are {len(title) + len(text)} characters; at most "
                f"{self.body_maxlen}",
                provider=PROVIDER,
            )

    def _body(self, message: StaffMessage) -> bytes:
        """The request body for this format, of a message :meth:`_validate` passed."""
        mentions = [self._national(m) for m in message.mention_mobiles]
        title, text = message.shown()
        content = f"{title}\n{text}"
        payload: dict[str, Any]
        if self.fmt == "wecom":
            payload = {
                "msgtype": "text",
                "text": {"content": content, "mentioned_mobile_list": mentions},
            }
        elif self.fmt == "dingtalk":
            payload = {
                "msgtype": "text",
                "text": {"content": content},
                "at": {"atMobiles": mentions, "isAtAll": False},
            }
        else:
            payload = {
                "id": message.message_id,
                "kind": message.kind,
                "title": title,
                "text": text,
                "data": json.loads(json.dumps(dict(message.data), ensure_ascii=False)),
                "sent_at": dt.datetime.now(dt.UTC).isoformat(),
            }
        # UTF-8, not \u escapes: the robots' byte limit is on what they receive.
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def _national(mobile: str) -> str:
        """``+8613800138000`` → ``13800138000``: the robots @-mention by national number."""
        if not (E164_PATTERN.fullmatch(mobile) and mobile.startswith("+861") and len(mobile) == 14):
            raise InvalidRecipientError(
                f"mention {mask_mobile(mobile)} is not an E.164 mainland mobile",
                provider=PROVIDER,
            )
        return mobile[3:]

    def _signed_url(self) -> str:
        if self.fmt != "dingtalk" or not self._secret:
            return self._url
        # DingTalk 加签: HMAC-SHA256 over "<ms timestamp>\n<secret>", base64, URL-encoded; the
        # robot refuses a timestamp more than an hour off, so it is computed per request.
        timestamp = str(int(time.time() * 1000))
        mac = hmac.new(
            self._secret.encode("utf-8"),
            f"{timestamp}\n{self._secret}".encode(),
            hashlib.sha256,
        ).digest()
        sign = quote_plus(base64.b64encode(mac).decode("ascii"))
        separator = "&" if urlsplit(self._url).query else "?"
        return f"{self._url}{separator}timestamp={timestamp}&sign={sign}"

    def _transport_error(self, exc: requests.exceptions.RequestException) -> DeliveryError:
        """Our typed error for a requests exception; the text never holds the URL."""
        return transport_error(exc, f"POST {self.endpoint}", provider=PROVIDER)

    def _receipt(self, response: requests.Response) -> WebhookReceipt:
        """The receipt for an accepted message; raises the typed error for anything else."""
        status = response.status_code
        where = f"POST {self.endpoint}: HTTP {status}"
        if status == 429:
            raise RateLimitedError(
                where,
                retry_after=retry_after_s(response.headers.get("Retry-After")),
                code=status,
                provider=PROVIDER,
            )
        if status >= 500 or status == 408:
            raise ProviderUnavailableError(where, code=status, provider=PROVIDER)
        if not 200 <= status < 300:
            # 3xx (redirects are not followed) and every other 4xx: the same request would be
            # refused again. 401/403/404 usually mean a revoked or mistyped robot URL.
            raise PermanentDeliveryError(where, code=status, provider=PROVIDER)
        answer = _json_or_none(response)
        if self.fmt == "json":
            ref = answer.get("id") if isinstance(answer, dict) else None
            return WebhookReceipt(status_code=status, provider_ref=str(ref) if ref else None)
        if not isinstance(answer, dict) or "errcode" not in answer:
            # A robot always answers {"errcode": …}; anything else is a proxy or a wrong host,
            # and whether the message arrived is unknown.
            raise TransientDeliveryError(
                f"{where}: answer has no errcode", reason="unexpected_answer", provider=PROVIDER
            )
        errcode = answer["errcode"]
        if errcode != 0:
            errmsg = mask_pii(str(answer.get("errmsg", "")))[:200]
            cls = ROBOT_ERRCODES.get(errcode, PermanentDeliveryError)
            what = f"{where}: errcode {errcode}: {errmsg}"
            if issubclass(cls, RateLimitedError):
                raise cls(what, retry_after=ROBOT_LIMIT_WINDOW_S, code=errcode, provider=PROVIDER)
            raise cls(what, code=errcode, provider=PROVIDER)
        return WebhookReceipt(status_code=status, provider_ref=None)

    def _log_refusal(self, message: StaffMessage, error: DeliveryError) -> None:
        _log.warning(
            "webhook %s %s refused staff message %s (%s): %s (reason=%s code=%s)",
            self.fmt,
            self.endpoint,
            message.message_id,
            message.kind,
            type(error).__name__,
            error.reason,
            error.code,
        )

    # ---- connections -------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close every connection; the notifier must not be used afterwards."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
