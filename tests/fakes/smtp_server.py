"""A loopback fake of a mail server, on the real aiosmtpd SMTP implementation.

Every accepted message is recorded (envelope, raw bytes, the parsed :class:`EmailMessage`,
whether the session was TLS and who logged in), and so is every scripted refusal, so a test can
assert "refused at RCPT once, then accepted once". It can answer a chosen code at MAIL, RCPT or
DATA, delay its answer to DATA, offer STARTTLS or speak implicit TLS with a throw-away
certificate (:func:`tls_contexts`), and require AUTH (PLAIN/LOGIN, allowed without TLS: this is
a fake). What it records is guarded by one condition variable: tests wait on it with a deadline.

:func:`silent_listener` is the other kind of broken server: it accepts the TCP connection and
never says a word.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, cast
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "FakeSmtp",
    "SmtpMessage",
    "SmtpRefusal",
    "non_loopback_address",
    "silent_listener",
    "tls_contexts",
]

Stage = Literal["mail", "rcpt", "data"]

# aiosmtpd logs every peer, sender and recipient at INFO and a deprecation of its own at WARNING
# on each login; what the fake received is in its records, where tests read it.
logging.getLogger("mail.log").setLevel(logging.ERROR)

#: The text of a scripted refusal, by code; RCPT ones echo the address as real servers do (so a
#: test can prove the client never repeats it).
_TEXTS = {
    421: "4.3.2 Service not available, closing transmission channel",
    450: "4.2.1 Mailbox busy, try again later",
    451: "4.3.0 Local error in processing",
    452: "4.5.3 Too many recipients",
    530: "5.7.0 Authentication required",
    550: "5.1.1 <{address}>: Recipient address rejected: User unknown",
    551: "5.1.6 User not local",
    552: "5.3.4 Message size exceeds fixed limit",
    553: "5.1.3 <{address}>: Bad recipient address syntax",
    554: "5.6.0 Message content rejected",
}


@dataclass(frozen=True)
class SmtpMessage:
    """One message the fake accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    #: The bytes after DATA, as sent.
    raw: bytes
    #: ``raw`` parsed with the modern policy (headers decoded, ``get_content()``).
    message: EmailMessage
    #: Whether the session was encrypted (STARTTLS or implicit TLS).
    tls: bool
    #: The user name the client logged in with, or ``None``.
    login: str | None
    #: ``time.monotonic()`` at arrival.
    received_at: float

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        """The decoded body with ``\\n`` line ends (the wire and base64 carry CRLF)."""
        return cast(str, self.message.get_content()).replace("\r\n", "\n")

    def header(self, name: str) -> str | None:
        value = self.message[name]
        return None if value is None else str(value)


@dataclass(frozen=True)
class SmtpRefusal:
    """One scripted refusal the fake answered."""

    stage: Stage
    code: int
    reply: str


class FakeSmtp:
    """An SMTP server on ``host:<free port>`` (loopback by default); use as a context manager.

    Parameters:
      host: the address to listen on (a non-loopback one makes the client require STARTTLS).
      starttls: server context to offer STARTTLS with (see :func:`tls_contexts`).
      implicit_tls: server context for implicit TLS (``smtps://``) instead.
      credentials: ``(user, password)`` to require AUTH with; MAIL is refused (530) before it.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self._starttls = starttls
        self._implicit_tls = implicit_tls
        self._credentials = credentials
        self._cond = threading.Condition()
        self._controller: Controller | None = None
        self._queue_ids = itertools.count(1)
        #: Every accepted message, oldest first.
        self.messages: list[SmtpMessage] = []
        #: Every scripted refusal answered, oldest first.
        self.refusals: list[SmtpRefusal] = []
        #: Failed AUTH attempts (user names).
        self.failed_logins: list[str] = []
        self._fail: dict[str, deque[tuple[int, str | None]]] = {
            "mail": deque(),
            "rcpt": deque(),
            "data": deque(),
        }
        self._delays: deque[float] = deque()

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        if self._controller is not None:
            raise RuntimeError("FakeSmtp already started")
        self.port = _free_port(self.host)
        kwargs: dict[str, Any] = {}
        if self._starttls is not None:
            kwargs.update(tls_context=self._starttls, require_starttls=False)
        if self._credentials is not None:
            # The fake allows AUTH in clear; production servers (and our client off loopback)
            # only do it under TLS.
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            ssl_context=self._implicit_tls,
            server_hostname="fake-smtp.govnotify.test",
            **kwargs,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop serving; pending delays end at once (their tasks are cancelled)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(
        self, scheme: str = "smtp", *, user: str | None = None, password: str | None = None
    ) -> str:
        """``smtp://[user:password@]host:port`` for this fake (``GOVNOTIFY_SMTP_URL``)."""
        if not self.port:
            raise RuntimeError("FakeSmtp is not started")
        auth = ""
        if user is not None:
            auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}"

    # ---- scripting ----------------------------------------------------------------------------
    def fail_next(self, n: int, code: int, *, at: Stage = "rcpt", text: str | None = None) -> None:
        """The next ``n`` transactions reaching ``at`` (MAIL, RCPT or DATA) are answered ``code``
        (with ``text``, or a realistic one with an enhanced status code)."""
        with self._cond:
            self._fail[at].extend([(code, text)] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        """The next ``n`` messages are received at once and answered after ``seconds``."""
        with self._cond:
            self._delays.extend([seconds] * n)

    def clear(self) -> None:
        """Forget messages, refusals and every scripted failure and delay."""
        with self._cond:
            self.messages.clear()
            self.refusals.clear()
            self.failed_logins.clear()
            for queue in self._fail.values():
                queue.clear()
            self._delays.clear()

    # ---- observing ----------------------------------------------------------------------------
    def wait_for(self, count: int, timeout: float = 5.0) -> list[SmtpMessage]:
        """A copy of the accepted messages once at least ``count`` arrived.

        Raises:
          TimeoutError: when fewer than ``count`` arrived within ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout=timeout):
                raise TimeoutError(
                    f"FakeSmtp got {len(self.messages)} messages, expected {count} "
                    f"(refusals: {[(r.stage, r.code) for r in self.refusals]})"
                )
            return list(self.messages)

    # ---- used by the handler ------------------------------------------------------------------
    def _scripted(self, stage: Stage, address: str = "") -> str | None:
        """The scripted refusal for ``stage``, recorded, or ``None`` to go on."""
        with self._cond:
            if not self._fail[stage]:
                return None
            code, text = self._fail[stage].popleft()
            text = text or _TEXTS.get(code, "Refused by FakeSmtp")
            reply = f"{code} {text.format(address=address)}"
            self.refusals.append(SmtpRefusal(stage=stage, code=code, reply=reply))
            self._cond.notify_all()
            return reply

    def _next_delay(self) -> float:
        with self._cond:
            return self._delays.popleft() if self._delays else 0.0

    def _record(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or cast(bytes, envelope.content)
        auth = session.auth_data
        login = None
        if session.authenticated and isinstance(auth, LoginPassword):
            login = auth.login.decode()
        message = cast(EmailMessage, message_from_bytes(raw, policy=policy.default))
        with self._cond:
            self.messages.append(
                SmtpMessage(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    raw=raw,
                    message=message,
                    # session.ssl is set by STARTTLS only; implicit TLS shows on the transport.
                    tls=session.ssl is not None
                    or (
                        server.transport is not None
                        and server.transport.get_extra_info("ssl_object") is not None
                    ),
                    login=login,
                    received_at=time.monotonic(),
                )
            )
            self._cond.notify_all()
            return f"250 2.0.0 Ok: queued as FAKE{next(self._queue_ids):04d}"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        user, password = self._credentials
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        if not ok:
            with self._cond:
                login = auth_data.login if isinstance(auth_data, LoginPassword) else b""
                self.failed_logins.append(login.decode(errors="replace"))
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class _Handler:
    """aiosmtpd's hooks, delegating to the fake's script."""

    def __init__(self, fake: FakeSmtp) -> None:
        self.fake = fake

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.fake._credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        refusal = self.fake._scripted("mail", address)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refusal = self.fake._scripted("rcpt", address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        delay = self.fake._next_delay()
        if delay:
            await asyncio.sleep(delay)  # cancelled by stop()
        refusal = self.fake._scripted("data")
        if refusal:
            return refusal
        return self.fake._record(server, session, envelope)


# ---- helpers ----------------------------------------------------------------------------------
def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def silent_listener(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog does) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen(8)
        yield int(server.getsockname()[1])


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, or ``None`` (no network)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            # UDP "connect" sends nothing: it only asks the kernel for a route and a source.
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    if address.startswith("127.") or address == "0.0.0.0":
        return None
    return address


def tls_contexts(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1",)
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throw-away self-signed certificate for ``hosts`` (IP addresses or names), made with the
    ``openssl`` command: ``(server context, client context trusting only it)``."""
    key, cert = directory / "smtp-key.pem", directory / "smtp-cert.pem"
    names = ",".join(
        f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts
    )
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=govnotify test mail server",
            "-addext", f"subjectAltName={names}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client
