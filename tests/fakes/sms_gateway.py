"""A loopback fake of the mainland-style SMS gateway that :mod:`notifiers.sms.gateway` speaks.

Point a notifier at it with ``url=fake.base_url``. It checks every request's HMAC signature,
key id and timestamp like the real gateway (a wrong one is answered 401 with
``isv.SIGNATURE_INVALID`` and counted), renders approved templates (``${name}`` placeholders)
so missing parameters are refused, records what it accepted, serves the query and status
endpoints, and can fail on cue: the next *n* requests or every request until :meth:`recover`,
with HTTP 503, 429, a held answer (the client times out; the message *was* accepted) or any
gateway error code. It can also POST signed status reports to a URL, like the gateway's
report push. Everything it records is guarded by one condition variable, so tests wait on it
with a deadline instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

from notifiers.sms.gateway import (
    KEY_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    signed_headers,
)
from tests.fakes.loopback import JsonHandler, LoopbackServer

__all__ = ["FakeSmsGateway"]

#: A failure script entry: an HTTP status (503, 429), "timeout", or a gateway error code.
Failure = int | str

_MESSAGES = {
    "isv.MOBILE_NUMBER_ILLEGAL": "非法手机号",
    "isv.BLACK_KEY_CONTROL_LIMIT": "黑名单管控",
    "isv.BUSINESS_LIMIT_CONTROL": "业务限流",
    "isv.TEMPLATE_MISSING_PARAMETERS": "模板缺少变量",
    "isv.SIGNATURE_INVALID": "签名校验失败",
    "isv.INVALID_KEY": "AccessKeyId不存在",
    "isv.TIMESTAMP_EXPIRED": "请求时间戳过期",
    "isv.SMS_TEMPLATE_ILLEGAL": "模板不合法",
    "isv.SMS_SIGNATURE_ILLEGAL": "签名不合法",
    "isv.INVALID_PARAMETERS": "参数异常",
    "isp.SYSTEM_ERROR": "系统错误",
    "Throttling": "请求过于频繁",
}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAINLAND_MOBILE = re.compile(r"\+861[3-9][0-9]{9}")


class FakeSmsGateway(LoopbackServer):
    """The gateway on ``127.0.0.1:<free port>``; use as a context manager.

    Parameters:
      templates: approved template id → text with ``${name}`` placeholders. ``SMS_GENERIC``
        (``${content}``) is always approved.
      sign_names: registered signatures.
      hold_s: how long a "timeout" failure holds its answer (ended early by :meth:`stop`).
    """

    def __init__(
        self,
        *,
        key_id: str = "gw-test-key",
        secret: str = "gw-test-secret-0123456789abcdef",  # noqa: S107 - a fake, not a secret
        templates: dict[str, str] | None = None,
        sign_names: tuple[str, ...] = ("长安政务",),
        hold_s: float = 30.0,
        max_skew_s: float = 300.0,
    ) -> None:
        super().__init__()
        self.key_id = key_id
        self.secret = secret
        self.templates = {"SMS_GENERIC": "${content}", **(templates or {})}
        self.sign_names = sign_names
        self.hold_s = hold_s
        self.max_skew_s = max_skew_s
        #: Every accepted message, oldest first: phone, sign_name, template_id, params, out_id,
        #: biz_id, content, status, error_code, send_time (unix s), headers.
        self.messages: list[dict[str, Any]] = []
        #: Every send request received, refused ones included.
        self.attempts = 0
        #: Query and status requests received.
        self.queries = 0
        #: Requests refused for their signature, key or timestamp.
        self.bad_signatures = 0
        self._fail_queue: deque[Failure] = deque()
        self._fail_all: Failure | None = None
        self._failing_numbers: dict[str, str] = {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    # ---- scripting ----------------------------------------------------------------------------
    def fail_next(self, n: int, status: Failure = 503) -> None:
        """The next ``n`` sends fail: HTTP 503 or 429, "timeout" (accepted, answer held until
        the client gives up), or a gateway error code answered with HTTP 200."""
        with self._cond:
            self._fail_queue.extend([status] * n)

    def fail_all(self, status: Failure = 503) -> None:
        """Every send fails like :meth:`fail_next` until :meth:`recover`."""
        with self._cond:
            self._fail_all = status

    def recover(self) -> None:
        """End :meth:`fail_all` and drop any queued failures."""
        with self._cond:
            self._fail_all = None
            self._fail_queue.clear()

    def fail_number(self, phone: str, code: str) -> None:
        """Every send to ``phone`` is refused with gateway error ``code``."""
        with self._cond:
            self._failing_numbers[phone] = code

    def set_status(self, biz_id: str, status: str, error_code: str | None = None) -> None:
        """What the query and status endpoints report for ``biz_id`` from now on."""
        with self._cond:
            for message in self.messages:
                if message["biz_id"] == biz_id:
                    message["status"], message["error_code"] = status, error_code

    def clear(self) -> None:
        """Forget messages, counters and every scripted failure."""
        with self._cond:
            self.messages.clear()
            self.attempts = self.queries = self.bad_signatures = 0
            self._fail_queue.clear()
            self._fail_all = None
            self._failing_numbers.clear()

    # ---- observing ----------------------------------------------------------------------------
    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """A copy of the messages once at least ``count`` arrived.

        Raises:
          TimeoutError: when fewer than ``count`` arrived within ``timeout`` seconds.
        """
        return [dict(m) for m in self._wait_count(self.messages, count, timeout, "messages")]

    # ---- status reports -----------------------------------------------------------------------
    def send_status_report(
        self,
        url: str,
        reports: list[dict[str, Any]],
        *,
        sign: bool = True,
        secret: str | None = None,
        timestamp: int | None = None,
        timeout: float = 5.0,
    ) -> int:
        """POST ``{"reports": reports}`` to ``url``, signed like the gateway; the HTTP status.

        ``secret`` signs with another secret (a forgery); ``timestamp`` backdates it.
        """
        raw = json.dumps({"reports": reports}, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if sign:
            headers.update(
                signed_headers(self.key_id, secret or self.secret, raw, timestamp=timestamp)
            )
        request = urllib.request.Request(  # noqa: S310 - tests post to their own loopback URL
            url, data=raw, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    def report(self, biz_id: str, status: str, error_code: str | None = None) -> dict[str, Any]:
        """A report entry for ``biz_id`` (and the status endpoint reports it from now on)."""
        self.set_status(biz_id, status, error_code)
        return {
            "biz_id": biz_id,
            "status": status,
            "error_code": error_code,
            "reported_at": dt.datetime.now(dt.UTC).isoformat(),
        }

    # ---- used by the handler ------------------------------------------------------------------
    def _check_signature(self, headers: Any, signed: bytes) -> str | None:
        """The error code for a badly signed request, or ``None``."""
        if headers.get(KEY_HEADER) != self.key_id:
            return "isv.INVALID_KEY"
        timestamp = headers.get(TIMESTAMP_HEADER) or ""
        nonce = headers.get(NONCE_HEADER) or ""
        signature = headers.get(SIGNATURE_HEADER) or ""
        if not timestamp.isdigit() or not nonce or not signature:
            return "isv.SIGNATURE_INVALID"
        if sign(self.secret, timestamp, nonce, signed) != signature:
            return "isv.SIGNATURE_INVALID"
        if abs(time.time() - int(timestamp)) > self.max_skew_s:
            return "isv.TIMESTAMP_EXPIRED"
        return None

    def _take_failure(self, phone: str) -> Failure | None:
        if phone in self._failing_numbers:
            return self._failing_numbers[phone]
        if self._fail_queue:
            return self._fail_queue.popleft()
        return self._fail_all

    def _send(self, payload: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any], float]:
        """(status, JSON answer, seconds to hold the answer) for one send."""
        if not isinstance(payload, dict):
            return 400, _answer("isv.INVALID_PARAMETERS"), 0.0
        phone = payload.get("phone")
        template_id = payload.get("template_id")
        params = payload.get("params")
        with self._cond:
            failure = self._take_failure(str(phone))
            if failure == 503:
                return 503, _answer("isp.SYSTEM_ERROR"), 0.0
            if failure == 429:
                return 429, _answer("Throttling"), 0.0
            if isinstance(failure, int):
                return failure, _answer("isp.SYSTEM_ERROR"), 0.0
            if failure is not None and failure != "timeout":
                return 200, _answer(failure), 0.0
            if not isinstance(phone, str) or not _MAINLAND_MOBILE.fullmatch(phone):
                return 200, _answer("isv.MOBILE_NUMBER_ILLEGAL"), 0.0
            if payload.get("sign_name") not in self.sign_names:
                return 200, _answer("isv.SMS_SIGNATURE_ILLEGAL"), 0.0
            if template_id not in self.templates:
                return 200, _answer("isv.SMS_TEMPLATE_ILLEGAL"), 0.0
            if not isinstance(params, dict) or not isinstance(payload.get("out_id"), str):
                return 200, _answer("isv.INVALID_PARAMETERS"), 0.0
            text = self.templates[str(template_id)]
            missing = sorted(set(_PLACEHOLDER.findall(text)) - set(params))
            if missing:
                return 200, _answer("isv.TEMPLATE_MISSING_PARAMETERS"), 0.0
            content = f"【{payload['sign_name']}】" + _PLACEHOLDER.sub(
                lambda m: str(params[m.group(1)]), text
            )
            biz_id = f"{int(time.time() * 1000)}^{uuid.uuid4().hex[:12]}"
            self.messages.append(
                {
                    "phone": phone,
                    "sign_name": payload["sign_name"],
                    "template_id": template_id,
                    "params": dict(params),
                    "out_id": payload["out_id"],
                    "biz_id": biz_id,
                    "content": content,
                    "status": "SENT",
                    "error_code": None,
                    "send_time": time.time(),
                    "headers": headers,
                }
            )
            self._cond.notify_all()
        hold = self.hold_s if failure == "timeout" else 0.0
        return 200, {"code": "OK", "message": "OK", "biz_id": biz_id}, hold

    def _query(self, query: dict[str, str]) -> dict[str, Any]:
        since = float(query.get("since") or 0)
        phone = query.get("phone")
        with self._cond:
            self.queries += 1
            found = [
                {k: m[k] for k in ("biz_id", "out_id", "phone", "status", "content", "send_time")}
                for m in self.messages
                if m["phone"] == phone and m["send_time"] >= since
            ]
        return {"code": "OK", "records": found}

    def _status(self, biz_id: str) -> tuple[int, dict[str, Any]]:
        with self._cond:
            self.queries += 1
            found = next((m for m in self.messages if m["biz_id"] == biz_id), None)
        if found is None:
            return 404, _answer("isv.BIZ_ID_NOT_FOUND")
        return 200, {
            "code": "OK",
            "biz_id": biz_id,
            "status": found["status"],
            "error_code": found["error_code"],
        }


def _answer(code: str) -> dict[str, Any]:
    return {"code": code, "message": _MESSAGES.get(code, code)}


def _make_handler(fake: FakeSmsGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def _refuse_signature(self, signed: bytes) -> bool:
            code = fake._check_signature(self.headers, signed)
            if code is None:
                return False
            with fake._cond:
                fake.bad_signatures += 1
            self._reply(401, _answer(code))
            return True

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path != "/sms/send":
                self._reply(404, _answer("isv.NOT_FOUND"))
                return
            with fake._cond:
                fake.attempts += 1
            if self._refuse_signature(raw):
                return
            try:
                payload = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self._reply(400, _answer("isv.INVALID_PARAMETERS"))
                return
            status, answer, hold = fake._send(payload, dict(self.headers.items()))
            if hold:
                # An Event, not sleep: stop() ends every held answer at once.
                fake._stopping.wait(hold)
                self.close_connection = True
                return
            self._reply(status, answer)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if self._refuse_signature(self.path.encode("utf-8")):
                return
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
            if parts.path == "/sms/query":
                self._reply(200, fake._query(query))
                return
            if parts.path == "/sms/status":
                self._reply(*fake._status(query.get("biz_id", "")))
                return
            self._reply(404, _answer("isv.NOT_FOUND"))

    return Handler
