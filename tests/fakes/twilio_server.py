"""A loopback fake of Twilio's Messages API, for the real ``twilio`` client to talk to.

Point a notifier at it with ``api_base=fake.base_url``. It speaks the 2010-04-01 Messages
resource closely enough for the client's create, fetch and list (page JSON with
``next_page_uri``), answers errors in Twilio's legacy JSON shape (``code``, ``message``,
``more_info``, ``status``) so the client raises ``TwilioRestException``, and can fail, delay,
drop or hold requests on cue. A held create lets a test kill the sending worker at an exact
point: before Twilio took the message, or after it took it but before the answer got back.
Tests can also move a message's status (what a fetch by sid answers) and post signed, unsigned,
forged or tampered status callbacks like Twilio's. Everything it records is guarded by one
condition variable, so tests wait on it with a deadline instead of sleeping.

``FakeTwilio(keep_alive=True)`` serves HTTP/1.1 persistent connections, as real Twilio does, so
the client's requests session reuses one connection per thread (benchmarks). Scripted failures,
delays, drops and holds answer as in the default mode: a dropped or hung-up request closes its
connection, and a client that timed out closes its own.

For benchmarks the fake also runs in a process of its own, so its HTTP parsing does not share
the harness's GIL (:class:`FakeTwilioProcess`, or by hand)::

    python -m tests.fakes.twilio_server [--port 0] [--keep-alive]

prints one JSON line (``base_url``, ``account_sid``, ``auth_token``) and serves until stdin
closes or SIGTERM/SIGINT. ``GET /_fake/stats`` answers ``{"messages": n, "attempts": n,
"connections": n}``
and ``POST /_fake/clear`` forgets everything (:meth:`FakeTwilio.clear`); neither needs auth.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.utils
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from twilio.request_validator import RequestValidator

from notifiers.sms.text import count_segments
from tests.fakes.loopback import JsonHandler, LoopbackServer

__all__ = ["FakeTwilio", "FakeTwilioProcess"]

_API = "/2010-04-01"
_REPO = Path(__file__).resolve().parents[2]
#: The fake's own endpoints (no auth): counts of what it took, and a reset.
STATS_PATH = "/_fake/stats"
CLEAR_PATH = "/_fake/clear"

# Messages Twilio gives for the codes tests script; any other code gets a generic text.
_ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    21211: "The 'To' number is not a valid phone number.",
    21602: "Message body is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number is not currently reachable via SMS.",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}


@dataclass
class _Failure:
    status: int
    code: int | None


#: Hold points of a create (see :meth:`FakeTwilio.hold_next`).
_HOLD_BEFORE = "before"
_HOLD_AFTER = "after"


class FakeTwilio(LoopbackServer):
    """A Twilio Messages API on ``127.0.0.1:<free port>``; use as a context manager."""

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 31 + "1",
        # Both shaped as Twilio's (AC + 32 hex, 32 hex): the settings refuse any other shape.
        auth_token: str = "f4ce7e570ca1ab1e0123456789abcdef",  # noqa: S107 - a fake, not a secret
        *,
        keep_alive: bool = False,
    ) -> None:
        super().__init__(keep_alive=keep_alive)
        self.account_sid = account_sid
        self.auth_token = auth_token
        #: Every accepted message, oldest first: to, from, body, sid, status_callback, ….
        self.messages: list[dict[str, Any]] = []
        #: Every create request received, failed ones included.
        self.attempts = 0
        self._failing_numbers: dict[str, _Failure] = {}
        self._fail_queue: deque[_Failure] = deque()
        self._delay_queue: deque[float] = deque()
        self._drop_queue: deque[bool] = deque()
        self._hold_queue: deque[str] = deque()
        self._queued_next = 0
        self._release = threading.Event()
        #: Creates being held right now; requests held before being taken that were dropped
        #: because the client hung up.
        self.held = 0
        self.abandoned = 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    # ---- scripting ----------------------------------------------------------------------------
    def fail_number(self, to: str, status: int, code: int) -> None:
        """Every create to ``to`` fails with HTTP ``status`` and Twilio error ``code``."""
        with self._cond:
            self._failing_numbers[to] = _Failure(status, code)

    def fail_next(self, n: int, status: int, code: int | None = None) -> None:
        """The next ``n`` creates fail; without ``code`` the error JSON has none (like a 5xx)."""
        with self._cond:
            self._fail_queue.extend(_Failure(status, code) for _ in range(n))

    def delay_next(self, n: int, seconds: float) -> None:
        """The next ``n`` creates are recorded at once but answered after ``seconds``."""
        with self._cond:
            self._delay_queue.extend([seconds] * n)

    def drop_next(self, n: int) -> None:
        """The next ``n`` creates are recorded, then the connection closes with no answer."""
        with self._cond:
            self._drop_queue.extend([True] * n)

    def queue_next(self, n: int) -> None:
        """The next ``n`` creates are taken but stay ``queued`` with no send date, as at real
        Twilio while a sender's throughput queue is long (``DateSent`` filters miss them)."""
        with self._cond:
            self._queued_next += n

    def hold_next(self, n: int, *, taken: bool) -> None:
        """Hold the next ``n`` creates until :meth:`release_held` or the client hangs up.

        ``taken=True``: the message is recorded (Twilio took it) and only the answer is held,
        so a worker killed meanwhile never learns the sid. ``taken=False``: the request is held
        before it is taken; if the client hangs up first it is never recorded, as if the
        request had not arrived.
        """
        with self._cond:
            self._release = threading.Event()
            self._hold_queue.extend([_HOLD_AFTER if taken else _HOLD_BEFORE] * n)

    def release_held(self) -> None:
        """Let every held create go on (taken ones are answered, untaken ones recorded)."""
        with self._cond:
            self._release.set()
            self._cond.notify_all()

    def wait_held(self, count: int, timeout: float = 10.0) -> None:
        """Return once ``count`` creates are being held; TimeoutError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.held >= count, timeout=timeout):
                raise TimeoutError(f"FakeTwilio holds {self.held} creates, expected {count}")

    def set_status(self, sid: str, status: str, error_code: int | None = None) -> None:
        """Move message ``sid`` to ``status`` (what a fetch by sid answers from now on)."""
        with self._cond:
            message = next(m for m in self.messages if m["sid"] == sid)
            message["json"]["status"] = status
            message["json"]["error_code"] = error_code
            message["json"]["error_message"] = None if error_code is None else "scripted"

    def clear(self) -> None:
        """Forget messages, attempts and every scripted failure, delay, drop and hold."""
        with self._cond:
            self.messages.clear()
            self.attempts = 0
            self.abandoned = 0
            self._failing_numbers.clear()
            self._fail_queue.clear()
            self._delay_queue.clear()
            self._drop_queue.clear()
            self._hold_queue.clear()
            self._release.set()

    # ---- observing ----------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Messages taken, creates received, and (keep-alive mode) client connections accepted
        since start (``GET /_fake/stats``; the request itself counts when it opened one)."""
        with self._cond:
            return {
                "messages": len(self.messages),
                "attempts": self.attempts,
                "connections": self.connections_opened,
            }

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """A copy of the messages once at least ``count`` arrived.

        Raises:
          TimeoutError: when fewer than ``count`` arrived within ``timeout`` seconds.
        """
        return [dict(m) for m in self._wait_count(self.messages, count, timeout, "messages")]

    # ---- status callbacks ---------------------------------------------------------------------
    def send_status_callback(
        self,
        url: str,
        message_sid: str,
        status: str,
        *,
        sign: bool = True,
        error_code: int | None = None,
        auth_token: str | None = None,
        tamper: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> int:
        """POST a status callback like Twilio's to ``url``; return the HTTP status received.

        With ``sign`` the request carries a valid ``X-Twilio-Signature``; without, none.
        ``auth_token`` signs with another token (a forgery); ``tamper`` changes parameters
        after signing (a captured callback replayed with edits).
        """
        with self._cond:
            known = next((m for m in self.messages if m["sid"] == message_sid), None)
        params = {
            "MessageSid": message_sid,
            "SmsSid": message_sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
        }
        if known is not None:
            params["To"] = known["to"]
            params["From"] = known["from"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if sign:
            validator = RequestValidator(auth_token or self.auth_token)
            headers["X-Twilio-Signature"] = validator.compute_signature(url, params)
        params.update(tamper or {})
        request = urllib.request.Request(  # noqa: S310 - tests post to their own loopback URL
            url, data=urllib.parse.urlencode(params).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    # ---- used by the handler ------------------------------------------------------------------
    def _authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return header == f"Basic {expected}"

    def _take_failure(self, to: str) -> _Failure | None:
        if to in self._failing_numbers:
            return self._failing_numbers[to]
        if self._fail_queue:
            return self._fail_queue.popleft()
        return None

    def _create(self, form: dict[str, str]) -> tuple[int, dict[str, Any], float, bool]:
        """(status, JSON, delay before answering, drop the connection) for one create."""
        to, body = form.get("To", ""), form.get("Body", "")
        with self._cond:
            failure = self._take_failure(to)
            if failure is None and not to:
                failure = _Failure(400, 21604)
            if failure is None and not body:
                failure = _Failure(400, 21602)
            if failure is not None:
                return failure.status, _error(failure.status, failure.code), 0.0, False
            delay = self._delay_queue.popleft() if self._delay_queue else 0.0
            drop = self._drop_queue.popleft() if self._drop_queue else False
            message = self._message_json(to, form.get("From", ""), body)
            if self._queued_next:
                self._queued_next -= 1
                message["date_sent"] = None
            self.messages.append(
                {
                    "to": to,
                    "from": message["from"],
                    "body": body,
                    "sid": message["sid"],
                    "status_callback": form.get("StatusCallback"),
                    "json": message,
                }
            )
            self._cond.notify_all()
        return 201, message, delay, drop

    def _message_json(self, to: str, from_: str, body: str) -> dict[str, Any]:
        sid = "SM" + uuid.uuid4().hex
        now = email.utils.format_datetime(dt.datetime.now(dt.UTC).replace(microsecond=0), True)
        uri = f"{_API}/Accounts/{self.account_sid}/Messages/{sid}.json"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            # Real Twilio fills date_sent once the message leaves its queue; the fake "sends"
            # at once unless queue_next() asked for a message still waiting.
            "date_sent": now,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(count_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": to,
            "uri": uri,
        }

    def _list(self, query: dict[str, str], path: str) -> dict[str, Any]:
        after = _parse_twilio_datetime(query.get("DateSent>"))
        page_size = int(query.get("PageSize", "50"))
        with self._cond:
            found = [m["json"] for m in reversed(self.messages)]  # newest first, like Twilio
        if "To" in query:
            found = [m for m in found if m["to"] == query["To"]]
        if "From" in query:
            found = [m for m in found if m["from"] == query["From"]]
        if after is not None:
            # A message with no send date yet is not "sent after" anything.
            found = [
                m
                for m in found
                if m["date_sent"] and email.utils.parsedate_to_datetime(m["date_sent"]) >= after
            ]
        found = found[:page_size]
        uri = f"{path}?{urllib.parse.urlencode(query)}" if query else path
        return {
            "messages": found,
            "end": max(len(found) - 1, 0),
            "first_page_uri": uri,
            "next_page_uri": None,
            "previous_page_uri": None,
            "page": 0,
            "page_size": page_size,
            "start": 0,
            "uri": uri,
        }

    def _fetch(self, sid: str) -> dict[str, Any] | None:
        with self._cond:
            found = next((m["json"] for m in self.messages if m["sid"] == sid), None)
            return None if found is None else dict(found)

    def _next_hold(self) -> tuple[str | None, threading.Event]:
        with self._cond:
            return (self._hold_queue.popleft() if self._hold_queue else None), self._release

    def _wait_released(self, release: threading.Event, conn: socket.socket) -> bool:
        """Block a held create; False when the client hung up or the fake is stopping."""
        with self._cond:
            self.held += 1
            self._cond.notify_all()
        try:
            while not release.wait(0.05):
                if self._stopping.is_set() or _hung_up(conn):
                    return False
            return True
        finally:
            with self._cond:
                self.held -= 1
                self._cond.notify_all()


def _hung_up(conn: socket.socket) -> bool:
    """True when the peer closed the connection (a killed client's kernel sends FIN/RST)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _error(status: int, code: int | None) -> dict[str, Any]:
    # Legacy Twilio error JSON. No "type"/"title" keys: with those the client would switch to
    # its RFC 9457 exception class, which the Messages API does not use.
    payload: dict[str, Any] = {
        "message": _ERROR_MESSAGES.get(code or 0, f"HTTP {status} from FakeTwilio"),
        "status": status,
    }
    if code is not None:
        payload["code"] = code
        payload["more_info"] = f"https://www.twilio.com/docs/errors/{code}"
    return payload


def _parse_twilio_datetime(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    # The client sends "%Y-%m-%dT%H:%M:%SZ"; Twilio also accepts a bare date.
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _make_handler(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    messages_path = f"{_API}/Accounts/{fake.account_sid}/Messages.json"
    message_prefix = f"{_API}/Accounts/{fake.account_sid}/Messages/"

    class Handler(JsonHandler):
        def _check_auth(self) -> bool:
            if fake._authorized(self.headers.get("Authorization")):
                return True
            self._reply(401, _error(401, 20003))
            return False

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8")
            if path == CLEAR_PATH:
                fake.clear()
                self._reply(200, fake.stats())
                return
            if path.endswith("/Messages.json"):
                # Every create counts, refused ones included: tests assert "no request at all".
                with fake._cond:
                    fake.attempts += 1
            if not self._check_auth():
                return
            if path != messages_path:
                # Another account's path: Twilio answers 404 code 20404.
                self._reply(404, _error(404, 20404))
                return
            form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}
            hold, release = fake._next_hold()
            if hold == _HOLD_BEFORE and not fake._wait_released(release, self.connection):
                # The client died before Twilio took the request: nothing was created.
                with fake._cond:
                    fake.abandoned += 1
                    fake._cond.notify_all()
                self.close_connection = True
                return
            status, payload, delay, drop = fake._create(form)
            if (
                hold == _HOLD_AFTER
                and status == 201
                and not fake._wait_released(release, self.connection)
            ):
                # Taken, but the client is gone before the answer: it never learns the sid.
                self.close_connection = True
                return
            if delay:
                # An Event, not sleep: stop() ends every pending delay at once.
                fake._stopping.wait(delay)
            if drop:
                self.close_connection = True
                return
            self._reply(status, payload)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if parts.path == STATS_PATH:
                self._reply(200, fake.stats())
                return
            if not self._check_auth():
                return
            if parts.path == messages_path:
                query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
                self._reply(200, fake._list(query, parts.path))
                return
            if parts.path.startswith(message_prefix) and parts.path.endswith(".json"):
                sid = parts.path[len(message_prefix) : -len(".json")]
                found = fake._fetch(sid)
                if found is not None:
                    self._reply(200, found)
                    return
            self._reply(404, _error(404, 20404))

    return Handler


class FakeTwilioProcess:
    """A :class:`FakeTwilio` served by ``python -m tests.fakes.twilio_server`` in a child process.

    Has the attributes a notifier needs (``base_url``, ``account_sid``, ``auth_token``);
    :meth:`stats` and :meth:`clear` go through the fake's own endpoints. The child exits when
    its stdin closes, so it never outlives this process.
    """

    def __init__(self, *, keep_alive: bool = True, start_timeout: float = 30.0) -> None:
        self.keep_alive = keep_alive
        self.start_timeout = start_timeout
        self._popen: subprocess.Popen[str] | None = None
        self.base_url = self.account_sid = self.auth_token = ""

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def start(self) -> Self:
        if self._popen is not None:
            raise RuntimeError("FakeTwilioProcess already started")
        cmd = [sys.executable, "-m", "tests.fakes.twilio_server", "--port", "0"]
        if self.keep_alive:
            cmd.append("--keep-alive")
        self._popen = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_REPO
        )
        assert self._popen.stdout is not None
        ready, _, _ = select.select([self._popen.stdout], [], [], self.start_timeout)
        line = self._popen.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError("the fake Twilio process did not say where it listens")
        info = json.loads(line)
        self.base_url = info["base_url"]
        self.account_sid = info["account_sid"]
        self.auth_token = info["auth_token"]
        return self

    def _call(self, method: str, path: str) -> dict[str, int]:
        request = urllib.request.Request(  # noqa: S310 - our own loopback fake
            self.base_url + path, data=b"" if method == "POST" else None, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return dict(json.load(response))

    def stats(self) -> dict[str, int]:
        """Counts so far, as :meth:`FakeTwilio.stats`."""
        return self._call("GET", STATS_PATH)

    def clear(self) -> None:
        """Forget messages, attempts and scripts (:meth:`FakeTwilio.clear`)."""
        self._call("POST", CLEAR_PATH)

    def stop(self) -> None:
        popen, self._popen = self._popen, None
        if popen is None:
            return
        if popen.stdin is not None:
            popen.stdin.close()  # the child's cue to stop
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            popen.terminate()
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if popen.stdout is not None:
            popen.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve a FakeTwilio until stdin closes or SIGTERM.")
    p.add_argument("--port", type=int, default=0, help="loopback port; 0: a free one")
    p.add_argument("--keep-alive", action="store_true", help="HTTP/1.1 persistent connections")
    args = p.parse_args(argv)
    fake = FakeTwilio(keep_alive=args.keep_alive)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())

    def watch_stdin() -> None:
        # EOF: whoever started us has closed our stdin, or died.
        while sys.stdin.buffer.read(4096):
            pass
        done.set()

    fake.start(args.port)
    try:
        info = {
            "base_url": fake.base_url,
            "account_sid": fake.account_sid,
            "auth_token": fake.auth_token,
            "keep_alive": fake.keep_alive,
        }
        print(json.dumps(info), flush=True)
        threading.Thread(target=watch_stdin, daemon=True).start()
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
