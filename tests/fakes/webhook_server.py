"""A loopback fake of a staff webhook receiver: a portal taking our JSON, or a WeCom/DingTalk robot.

Every POST is recorded (path with query, headers, raw and parsed body, monotonic and wall-clock
arrival time) whatever the fake answers, so a test can assert "no request at all" as well as
"exactly one". By default it answers ``200 {"errcode": 0, "errmsg": "ok"}``, which every format
takes as success. It can fail, answer a robot ``errcode`` or delay on cue. Everything it records
is guarded by one condition variable, so tests wait on it with a deadline instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.fakes.loopback import JsonHandler, LoopbackServer

#: The staff directory bundled with govnotify (service points, staff, robots).
BUNDLED_DIRECTORY = (
    Path(__file__).resolve().parents[2] / "schemas" / "data" / "staff_directory.json"
)

__all__ = ["FakeWebhook", "WebhookRequest"]

_ERRMSG = {
    0: "ok",
    45009: "api freq out of limit",
    93000: "invalid webhook url",
    130101: "send too fast, exceed 20 times per minute",
    310000: "sign not match",
}


@dataclass(frozen=True)
class WebhookRequest:
    """One POST as the fake received it."""

    #: Path and query string, as sent (``/hooks/hall?key=…``).
    path: str
    #: Header names as sent; look them up with :meth:`header` for case-insensitivity.
    headers: dict[str, str]
    #: The exact bytes of the body (signatures are computed over these).
    raw: bytes
    #: The body parsed as JSON, or ``None`` when it is not JSON.
    body: Any
    #: ``time.monotonic()`` at arrival, for ordering and intervals.
    received_at: float
    #: Wall-clock arrival time, UTC.
    received_wall: dt.datetime
    #: The HTTP status the fake answered (or will answer, for a delayed request).
    answered: int
    #: Query parameters, last value of each.
    query: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    @property
    def route(self) -> str:
        """The path without the query string."""
        return urllib.parse.urlsplit(self.path).path


@dataclass
class _Script:
    status: int = 200
    errcode: int = 0
    delay: float = 0.0


class FakeWebhook(LoopbackServer):
    """A webhook receiver on ``127.0.0.1:<free port>``; use as a context manager."""

    def __init__(self) -> None:
        super().__init__()
        #: Every POST received, oldest first, failed and delayed ones included.
        self.requests: list[WebhookRequest] = []
        self._fail_queue: deque[int] = deque()
        self._errcode_queue: deque[int] = deque()
        self._delay_queue: deque[float] = deque()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    def url(self, path: str = "/hooks/staff") -> str:
        """The full URL of ``path`` (which may carry a query, e.g. ``/robot?key=k``)."""
        if not self.base_url:
            raise RuntimeError("FakeWebhook is not started")
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def staff_directory(self, path: Path) -> Path:
        """Write the bundled staff directory to ``path`` with every robot pointed at this fake
        (``/hooks/<webhook name>``); returns ``path``."""
        directory = json.loads(BUNDLED_DIRECTORY.read_text(encoding="utf-8"))
        for name, hook in directory["webhooks"].items():
            hook["url"] = self.url(f"/hooks/{name}")
        path.write_text(json.dumps(directory, ensure_ascii=False), encoding="utf-8")
        return path

    # ---- scripting ----------------------------------------------------------------------------
    def fail_next(self, n: int, status: int) -> None:
        """The next ``n`` POSTs are answered with HTTP ``status`` and a small JSON error."""
        with self._cond:
            self._fail_queue.extend([status] * n)

    def errcode_next(self, n: int, errcode: int) -> None:
        """The next ``n`` POSTs are answered HTTP 200 ``{"errcode": errcode, "errmsg": …}``."""
        with self._cond:
            self._errcode_queue.extend([errcode] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        """The next ``n`` POSTs are recorded at once and answered after ``seconds``."""
        with self._cond:
            self._delay_queue.extend([seconds] * n)

    def clear(self) -> None:
        """Forget requests and every scripted failure, errcode and delay."""
        with self._cond:
            self.requests.clear()
            self._fail_queue.clear()
            self._errcode_queue.clear()
            self._delay_queue.clear()

    # ---- observing ----------------------------------------------------------------------------
    def wait_for(self, count: int, timeout: float = 5.0) -> list[WebhookRequest]:
        """A copy of the requests once at least ``count`` arrived.

        Raises:
          TimeoutError: when fewer than ``count`` arrived within ``timeout`` seconds.
        """
        return self._wait_count(self.requests, count, timeout, "requests")

    # ---- used by the handler ------------------------------------------------------------------
    def _record(self, path: str, headers: dict[str, str], raw: bytes) -> _Script:
        """Record one POST and take the next scripted answer."""
        with self._cond:
            script = _Script()
            if self._fail_queue:
                script.status = self._fail_queue.popleft()
            elif self._errcode_queue:
                script.errcode = self._errcode_queue.popleft()
            if self._delay_queue:
                script.delay = self._delay_queue.popleft()
            try:
                body = json.loads(raw.decode("utf-8"))
            except ValueError:
                body = None
            query = {
                k: v[-1]
                for k, v in urllib.parse.parse_qs(
                    urllib.parse.urlsplit(path).query, keep_blank_values=True
                ).items()
            }
            self.requests.append(
                WebhookRequest(
                    path=path,
                    headers=headers,
                    raw=raw,
                    body=body,
                    received_at=time.monotonic(),
                    received_wall=dt.datetime.now(dt.UTC),
                    answered=script.status,
                    query=query,
                )
            )
            self._cond.notify_all()
            return script


def _make_handler(fake: FakeWebhook) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            script = fake._record(self.path, dict(self.headers.items()), raw)
            if script.delay:
                # An Event, not sleep: stop() ends every pending delay at once.
                fake._stopping.wait(script.delay)
            if script.status != 200:
                self._reply(script.status, {"error": f"HTTP {script.status} from FakeWebhook"})
                return
            errmsg = _ERRMSG.get(script.errcode, f"errcode {script.errcode} from FakeWebhook")
            self._reply(200, {"errcode": script.errcode, "errmsg": errmsg})

    return Handler
