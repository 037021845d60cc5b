"""Staff alerts by e-mail: one :class:`~notifiers.staff.StaffMessage` to one address over SMTP.

Many department heads read e-mail rather than a group robot, so a staff-directory entry may be
``{"url": "mailto:market-head@changan.gov.cn", "format": "email"}``. One :class:`EmailNotifier`
sends to one such address through the district's mail server (``GOVNOTIFY_SMTP_URL``), with the
stdlib :mod:`smtplib`, one connection per message: staff messages are a few hundred a day, and
a connection of our own per send makes the notifier thread-safe with no pool to look after.

Transport security, decided by the URL alone:

- ``smtps://host[:465]``: implicit TLS, certificate and host name verified.
- ``smtp://host[:587]``: STARTTLS is **required** (verified the same way); a server that does not
  offer it is refused with :class:`NotifierConfigError` before credentials or the message leave
  the host. There is no switch to turn this off: a relay without TLS is reached on loopback.
- ``smtp://`` to a loopback host (``127.0.0.0/8``, ``::1``, ``localhost``): plain SMTP, no
  STARTTLS even if offered. The traffic never leaves the machine, and a local relay's
  self-signed certificate (Postfix's "snakeoil") must not stop the alerts.

Every message carries ``Message-ID: <{message_id}@govnotify>`` and ``X-Govnotify-Id``: a retry
resends the same ids, so mail systems and receivers can de-duplicate.

Replies are classified by stage (greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA) and code into
the typed errors of :mod:`notifiers.errors` (:func:`classify_smtp_reply`). Error messages and
logs carry the endpoint (``smtp://host:port``), the stage, the reply code and the enhanced status
code (``5.1.1``), never the server's reply text (it echoes the address), the address, the
message text or the credentials; exceptions are raised ``from None`` so no smtplib traceback,
whose arguments hold the addresses, is chained into a worker's log.

Mobile and ID-card shaped numbers in the title and text are masked before the message leaves
(mailboxes are kept for years and forwarded), never a reason to refuse it: a refused alert is
one nobody reads. The ``key: value`` data lines (case and alert ids) go as they are.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import logging
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

from notifiers.base import Notifier
from notifiers.errors import (
    DeliveryError,
    DeliveryTimeoutError,
    InvalidRecipientError,
    MessageRejectedError,
    NotifierConfigError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RateLimitedError,
)
from notifiers.staff import StaffMessage
from schemas.addresses import parse_address

__all__ = [
    "AUTH_REPLY_CODES",
    "RCPT_STATUS_SUBJECTS",
    "SMTP_STAGES",
    "EmailNotifier",
    "EmailReceipt",
    "SmtpStage",
    "classify_smtp_reply",
    "parse_address",
]

_log = logging.getLogger(__name__)

PROVIDER = "email"

#: ``smtps``: implicit TLS; ``starttls``: plain connection upgraded, required; ``plain``: loopback.
Security = Literal["smtps", "starttls", "plain"]

SmtpStage = Literal["connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data"]
#: The steps of one send, in order; errors name the one that failed.
SMTP_STAGES: tuple[str, ...] = ("connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data")

#: Reply codes meaning our account is refused, at whatever stage they come: 530 authentication
#: required, 534 mechanism too weak, 535 credentials invalid, 538 encryption required.
AUTH_REPLY_CODES: frozenset[int] = frozenset({530, 534, 535, 538})

#: 4xx codes with an error of their own; every other 4xx is :class:`ProviderUnavailableError`.
#: 452 is "too many recipients" / "insufficient storage": slow down and try again.
TRANSIENT_REPLY_CODES: dict[int, type[DeliveryError]] = {452: RateLimitedError}

#: A 5xx at RCPT by the subject of its enhanced status code (RFC 3463 ``5.<subject>.<detail>``):
#: 1 addressing (5.1.1 no such mailbox, 5.1.2 no such domain), 2 mailbox (disabled, full), 7
#: security or policy (5.7.1 relaying denied: our server does not accept us as a sender).
RCPT_STATUS_SUBJECTS: dict[str, type[DeliveryError]] = {
    "1": InvalidRecipientError,
    "2": PermanentDeliveryError,
    "7": NotifierConfigError,
}
#: A 5xx at RCPT without an enhanced status code: 550 no such mailbox, 551 user not local,
#: 553 mailbox name not allowed. Any other one is a :class:`PermanentDeliveryError`.
RCPT_BAD_ADDRESS_CODES: frozenset[int] = frozenset({550, 551, 553})

_STAGE_WORDS = {
    "connect": "connection",
    "ehlo": "EHLO",
    "starttls": "STARTTLS",
    "auth": "AUTH",
    "mail": "MAIL FROM",
    "rcpt": "RCPT TO",
    "data": "DATA",
}
#: The reply each stage expects.
_OK_CODES: dict[str, tuple[int, ...]] = {
    "connect": (220,),
    "ehlo": (250,),
    "starttls": (220,),
    "auth": (235,),
    "mail": (250,),
    "rcpt": (250, 251),
    "data": (250,),
}

_ENHANCED_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")
_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9._-]{1,64})", re.IGNORECASE)
#: A Message-ID's left part must be a dot-atom: our ids are hex, uuids and ``-suffix`` es.
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*")


def _enhanced_status(reply: bytes | str) -> str | None:
    """``5.1.1`` from ``b"5.1.1 <x@y>: Recipient address rejected"``, or ``None``."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    match = _ENHANCED_STATUS.match(text)
    return ".".join(match.groups()) if match else None


def classify_smtp_reply(stage: str, code: int, reply: bytes | str = b"") -> type[DeliveryError]:
    """The error for an unexpected reply ``code`` at ``stage`` (one of :data:`SMTP_STAGES`).

    ====================  =========================================================
    530 534 535 538       :class:`NotifierConfigError` (our account), any stage
    452                   :class:`RateLimitedError`
    other 4xx, and        :class:`ProviderUnavailableError` (greylisting, 421
    anything not 4xx/5xx  shutting down or throttling, 451 local error …)
    5xx at RCPT           by enhanced status subject (:data:`RCPT_STATUS_SUBJECTS`),
                          else 550/551/553 :class:`InvalidRecipientError`, else
                          :class:`PermanentDeliveryError`
    5xx at DATA           :class:`MessageRejectedError` (content, spam, size)
    552 at MAIL           :class:`MessageRejectedError` (over the server's SIZE)
    other 5xx             :class:`NotifierConfigError`: the greeting, EHLO,
                          STARTTLS, AUTH or our sender address was refused
    ====================  =========================================================
    """
    if code in AUTH_REPLY_CODES:
        return NotifierConfigError
    if not 500 <= code < 600:
        return TRANSIENT_REPLY_CODES.get(code, ProviderUnavailableError)
    if stage == "rcpt":
        status = _enhanced_status(reply)
        if status is not None:
            return RCPT_STATUS_SUBJECTS.get(status.split(".")[1], PermanentDeliveryError)
        return InvalidRecipientError if code in RCPT_BAD_ADDRESS_CODES else PermanentDeliveryError
    if stage == "data" or (stage == "mail" and code == 552):
        return MessageRejectedError
    return NotifierConfigError


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def _local_hostname() -> str:
    """The EHLO name; ``socket.getfqdn()`` may ask DNS, so it is asked once per process."""
    return socket.getfqdn() or "localhost"


@dataclass(frozen=True)
class EmailReceipt:
    """What the server answered when it accepted a message."""

    #: The ``Message-ID`` header sent (``<id@govnotify>``).
    message_id: str
    #: The final reply code (250).
    reply_code: int
    #: The server's queue id when its reply says ``queued as …`` (Postfix, Exim …).
    provider_ref: str | None


class EmailNotifier(Notifier[StaffMessage, EmailReceipt]):
    """Sends :class:`StaffMessage` s to one e-mail address through one SMTP server.

    Parameters:
      smtp_url: ``smtp://[user:password@]host[:587]`` (STARTTLS required unless the host is
        loopback) or ``smtps://[user:password@]host[:465]`` (implicit TLS). User and password
        are percent-decoded (write ``@`` as ``%40``); no path, query or fragment.
      sender: the From address, bare or with a display name (``长安政务 <govnotify@…>``).
      to: the one recipient.
      timeout: seconds for the connection and for each reply.
      ssl_context: certificates to trust instead of the system's (a private CA, tests).

    Raises:
      NotifierConfigError: naming each problem, never the password or the addresses.
    """

    name: ClassVar[str] = "email"
    channel: ClassVar[str] = "email"
    #: Longest subject (the message title), in characters; staff titles are a line.
    subject_maxlen: ClassVar[int] = 200
    #: Largest body (text and data lines), in bytes of UTF-8. Far under any server's SIZE
    #: limit; a staff message this long is a bug in the caller.
    body_maxbytes: ClassVar[int] = 64 * 1024
    #: Default ports when the URL names none.
    default_ports: ClassVar[dict[str, int]] = {"smtp": 587, "smtps": 465}

    def __init__(
        self,
        smtp_url: str,
        sender: str,
        *,
        to: str,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        problems: list[str] = []
        # Nothing of the URL is echoed: it holds the password.
        parts = urlsplit(smtp_url if isinstance(smtp_url, str) else "")
        scheme = parts.scheme.lower()
        if scheme not in self.default_ports:
            problems.append("smtp_url must start with smtp:// or smtps://")
        try:
            port = parts.port
        except ValueError:
            port = None
            problems.append("smtp_url port must be a number from 1 to 65535")
        else:
            if port == 0:
                problems.append("smtp_url port must be a number from 1 to 65535")
        host = parts.hostname or ""
        if not host:
            problems.append("smtp_url has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            problems.append(
                "smtp_url takes no path, query or fragment (STARTTLS cannot be turned off; "
                "percent-encode '/', '?', '#' and '@' in the password)"
            )
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if (user is None) != (password is None):
            problems.append("smtp_url must give both user and password, or neither")
        for label, value in (("sender", sender), ("to", to)):
            try:
                parsed = parse_address(value)
            except ValueError as exc:
                problems.append(f"{label} {exc}")
            else:
                if label == "sender":
                    self.sender = parsed
                else:
                    self.to = parsed
        if not (isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0):
            problems.append("timeout must be a positive number of seconds")
        self._refuse_config("e-mail notifier", problems)
        self.host = host
        self.port = port or self.default_ports[scheme]
        self.security: Security = (
            "smtps" if scheme == "smtps" else "plain" if _is_loopback(host) else "starttls"
        )
        self.timeout_s = float(timeout)
        self._user = user
        self._password = password
        self._ssl_context = ssl_context or ssl.create_default_context()
        #: ``scheme://host:port``: all of the URL that may appear in logs and errors.
        shown_host = f"[{host}]" if ":" in host else host
        self.endpoint = f"{scheme}://{shown_host}:{self.port}"

    def __repr__(self) -> str:
        return f"EmailNotifier(endpoint={self.endpoint!r}, security={self.security!r})"

    # ---- sending -----------------------------------------------------------------------------
    def _send(self, message: StaffMessage) -> EmailReceipt:
        """Build the e-mail for a validated ``message``, send it, and classify any refusal.

        Raises:
          MessageRejectedError: the server refused the content (5xx at DATA).
          InvalidRecipientError: the server says the address does not exist (5.1.x, 550/551/553).
          PermanentDeliveryError: any other 5xx at RCPT (mailbox disabled or full …).
          RateLimitedError: 452.
          ProviderUnavailableError: cannot connect, the connection dropped or timed out before
            DATA, a TLS failure, or any other 4xx: nothing was accepted.
          DeliveryTimeoutError: no answer (or a dropped connection) during DATA: the server may
            have accepted the message; a retry carries the same Message-ID.
          NotifierConfigError: STARTTLS not offered where required, an untrusted certificate,
            credentials refused or missing, our sender refused, relaying denied.

        Returns:
          The :class:`EmailReceipt`.
        """
        email_message = self._email(message)
        raw = email_message.as_bytes(policy=policy.SMTP)
        stage: str = "connect"
        smtp: smtplib.SMTP | None = None
        try:
            smtp = self._connect()
            stage = "ehlo"
            self._expect(stage, smtp.ehlo())
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise NotifierConfigError(
                        f"{self.endpoint}: the server does not offer STARTTLS, which is required "
                        "for a server off this host; use smtps:// if it speaks implicit TLS",
                        provider=PROVIDER,
                    )
                stage = "starttls"
                self._expect(stage, smtp.starttls(context=self._ssl_context))
                stage = "ehlo"
                self._expect(stage, smtp.ehlo())
            if self._user is not None and self._password is not None:
                stage = "auth"
                smtp.login(self._user, self._password)
            stage = "mail"
            options = [f"SIZE={len(raw)}"] if smtp.has_extn("size") else []
            self._expect(stage, smtp.mail(self.sender.addr_spec, options))
            stage = "rcpt"
            self._expect(stage, smtp.rcpt(self.to.addr_spec))
            stage = "data"
            code, reply = smtp.data(raw)
            self._expect(stage, (code, reply))
        except DeliveryError as error:
            self._log_refusal(message, error)
            self._close(smtp)
            raise
        except OSError as exc:  # smtplib's exceptions, socket and TLS errors are all OSErrors
            error = self._error(stage, exc)
            self._log_refusal(message, error)
            self._close(smtp)
            # "from None": smtplib's exceptions hold the addresses (SMTPRecipientsRefused …).
            raise error from None
        except BaseException:
            self._close(smtp)
            raise
        self._quit(smtp)
        match = _QUEUED_AS.search(reply.decode("utf-8", "replace"))
        receipt = EmailReceipt(
            message_id=str(email_message["Message-ID"]),
            reply_code=code,
            provider_ref=match.group(1) if match else None,
        )
        return receipt

    def _log_sent(self, message: StaffMessage, receipt: EmailReceipt) -> None:
        _log.info(
            "sent staff message %s (%s) by e-mail via %s: code=%d ref=%s",
            message.message_id,
            message.kind,
            self.endpoint,
            receipt.reply_code,
            receipt.provider_ref,
        )

    def _validate(self, message: StaffMessage) -> None:
        """Every check that needs no server; nothing is sent.

        Raises:
          MessageRejectedError: empty or over-long title/text, a line break in the title, data
            that is not JSON-serialisable or an id unfit for a Message-ID.
        """
        if not message.title.strip() or not message.text.strip():
            raise MessageRejectedError("staff message title or text is empty", provider=PROVIDER)
        if "\r" in message.title or "\n" in message.title:
            raise MessageRejectedError(
                "staff message title has a line break; a subject is one line", provider=PROVIDER
            )
        if len(message.title) > self.subject_maxlen:
            raise MessageRejectedError(
                f"staff message title is {len(message.title)} characters; a subject takes at "
                f"most {self.subject_maxlen}",
                provider=PROVIDER,
            )
        if not _MESSAGE_ID.fullmatch(message.message_id) or len(message.message_id) > 200:
            raise MessageRejectedError(
                "staff message id cannot be a Message-ID (letters, digits, '._+=-', at most 200)",
                provider=PROVIDER,
            )
        size = len(_text_body(message).encode("utf-8"))
        if size > self.body_maxbytes:
            raise MessageRejectedError(
                f"staff message body is {size} bytes of UTF-8; at most {self.body_maxbytes}",
                provider=PROVIDER,
            )

    def _email(self, message: StaffMessage) -> EmailMessage:
        """The e-mail for a message :meth:`_validate` passed."""
        body = _text_body(message)
        email_message = EmailMessage(policy=policy.SMTP)
        email_message["From"] = self.sender
        email_message["To"] = self.to
        email_message["Subject"] = message.shown()[0]
        email_message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
        email_message["Message-ID"] = f"<{message.message_id}@govnotify>"
        email_message["X-Govnotify-Id"] = message.message_id
        email_message["X-Govnotify-Kind"] = message.kind
        # RFC 3834: vacation auto-replies and the like must not answer a notification.
        email_message["Auto-Submitted"] = "auto-generated"
        # base64: 8bit would need the server's 8BITMIME, and Chinese is shorter in base64 than
        # in quoted-printable.
        email_message.set_content(body, charset="utf-8", cte="base64")
        return email_message

    def _connect(self) -> smtplib.SMTP:
        """Connected and greeted (raises SMTPConnectError on a greeting other than 220)."""
        # The host goes to the constructor: smtplib checks the certificate against it, for
        # implicit TLS and for STARTTLS alike.
        if self.security == "smtps":
            return smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=_local_hostname(),
                timeout=self.timeout_s,
                context=self._ssl_context,
            )
        return smtplib.SMTP(
            self.host, self.port, local_hostname=_local_hostname(), timeout=self.timeout_s
        )

    def _expect(self, stage: str, answer: tuple[int, bytes]) -> None:
        code, reply = answer
        if code not in _OK_CODES[stage]:
            raise self._reply_error(stage, code, reply)

    def _reply_error(self, stage: str, code: int, reply: bytes | str) -> DeliveryError:
        cls = classify_smtp_reply(stage, code, reply)
        status = _enhanced_status(reply)
        # The reply's text is left out: servers echo the address in it.
        text = f"{self.endpoint}: {_STAGE_WORDS[stage]} refused: {code}"
        if status:
            text += f" {status}"
        if cls is NotifierConfigError and stage == "mail":
            text += " (is GOVNOTIFY_SMTP_FROM allowed to send through this server?)"
        elif cls is NotifierConfigError and code in AUTH_REPLY_CODES:
            text += " (check the credentials in GOVNOTIFY_SMTP_URL)"
        reason = "invalid_address" if cls is InvalidRecipientError else None
        return cls(text, reason=reason, code=code, provider=PROVIDER)

    def _error(self, stage: str, exc: OSError) -> DeliveryError:
        """Our typed error for an exception raised at ``stage``; its text is never copied."""
        where = f"{self.endpoint}: {_STAGE_WORDS[stage]}"
        if isinstance(exc, smtplib.SMTPResponseException):
            # SMTPConnectError, SMTPAuthenticationError, SMTPDataError, STARTTLS refused.
            return self._reply_error(stage, exc.smtp_code, exc.smtp_error)
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return NotifierConfigError(
                f"{where}: the server offers no AUTH; drop the credentials from "
                "GOVNOTIFY_SMTP_URL or use a server that takes them",
                provider=PROVIDER,
            )
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return self._lost(stage, timed_out=isinstance(exc.__context__, TimeoutError))
        if isinstance(exc, smtplib.SMTPException):
            # "No suitable authentication method found", and smtplib's other refusals.
            if stage == "auth":
                return NotifierConfigError(
                    f"{where}: no authentication mechanism in common", provider=PROVIDER
                )
            return ProviderUnavailableError(f"{where}: {type(exc).__name__}", provider=PROVIDER)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return NotifierConfigError(
                f"{where}: the server's certificate is not trusted for {self.host} "
                f"({exc.verify_message})",
                provider=PROVIDER,
            )
        if isinstance(exc, TimeoutError):
            return self._lost(stage, timed_out=True)
        if isinstance(exc, ssl.SSLError):
            return ProviderUnavailableError(
                f"{where}: TLS failed ({exc.reason})", provider=PROVIDER
            )
        # Refused, reset, unreachable, no such host: nothing was accepted.
        detail = "cannot connect" if stage == "connect" else "connection lost"
        return ProviderUnavailableError(
            f"{where}: {detail} ({type(exc).__name__})", provider=PROVIDER
        )

    def _lost(self, stage: str, *, timed_out: bool) -> DeliveryError:
        what = "no answer in time" if timed_out else "connection closed"
        where = f"{self.endpoint}: {_STAGE_WORDS[stage]}"
        if stage == "data":
            # The message may be on the server already; the retry's Message-ID lets the mail
            # system de-duplicate.
            return DeliveryTimeoutError(
                f"{where}: {what}; the server may have accepted the message", provider=PROVIDER
            )
        # Before DATA nothing was accepted: a retry cannot send it twice.
        return ProviderUnavailableError(f"{where}: {what}", provider=PROVIDER)

    def _log_refusal(self, message: StaffMessage, error: DeliveryError) -> None:
        _log.warning(
            "e-mail via %s refused staff message %s (%s): %s (reason=%s code=%s)",
            self.endpoint,
            message.message_id,
            message.kind,
            type(error).__name__,
            error.reason,
            error.code,
        )

    @staticmethod
    def _quit(smtp: smtplib.SMTP) -> None:
        """QUIT after an accepted message; a failure here changes nothing."""
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    @staticmethod
    def _close(smtp: smtplib.SMTP | None) -> None:
        """Drop the connection without QUIT: after a failure it may be half-dead, and waiting
        for a QUIT answer would add another timeout."""
        if smtp is not None:
            smtp.close()


def _text_body(message: StaffMessage) -> str:
    """The text part: the message text (numbers masked), then its data as ``key: value`` lines."""
    body = message.shown()[1].rstrip() + "\n"
    lines = _data_lines(message.data)
    if lines:
        body += "\n" + "\n".join(lines) + "\n"
    return body


def _data_lines(data: Any) -> list[str]:
    """``key: value`` lines for the structured data; lists and objects as compact JSON."""
    try:
        items = json.loads(json.dumps(dict(data), ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        raise MessageRejectedError(
            f"staff message data is not JSON-serialisable: {exc}", provider=PROVIDER
        ) from None
    lines = []
    for key, value in items.items():
        shown = (
            value
            if isinstance(value, str)
            else json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
        )
        lines.append(f"{key}: {shown}")
    return lines
