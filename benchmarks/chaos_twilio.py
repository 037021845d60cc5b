"""The fault run's Twilio: the loopback fake, answering some creates after the client's timeout,
and posting signed status callbacks to ``govnotify api`` the way Twilio does.

:class:`LateTwilio` records every message at once (Twilio took it) but answers a seeded share of
creates only after the ``twilio`` client has given up, so the worker sees an ambiguous timeout,
leaves the row ``sending``, and the sweep must find the message (a list by recipient) instead of
sending it again. Which messages are late depends on the seed and the message body only, so a
run repeated with the same seed delays the same licenses' reminders.

:class:`CallbackPoster` posts one signed ``delivered`` callback per message to the URL the worker
gave Twilio. A refused or failed post is tried again, as Twilio does when asked to retry
(connection overrides), so killing the api delays callbacks without losing them.
"""

from __future__ import annotations

import hashlib
import inspect
import queue
import threading
import time
import uuid
from typing import Any

from notifiers.sms.twilio import TwilioSMSNotifier
from tests.fakes.twilio_server import FakeTwilio

__all__ = ["CallbackPoster", "LateTwilio", "client_timeout_s"]


def client_timeout_s() -> float:
    """The Twilio notifier's client timeout: its constructor default, which the worker uses
    (``notifiers.registry`` passes no ``timeout``; there is no setting for it)."""
    default = inspect.signature(TwilioSMSNotifier.__init__).parameters["timeout"].default
    return float(default)


class LateTwilio(FakeTwilio):
    """A :class:`FakeTwilio` that answers ``late_share`` of the creates ``late_after_s`` late.

    Parameters:
      late_share: the share of messages (by a hash of seed and body) answered late.
      late_after_s: how late; more than the client's timeout makes the worker give up.
      seed: makes the choice of late messages repeatable.
    """

    def __init__(self, *, late_share: float, late_after_s: float, seed: int) -> None:
        # The settings take only a token shaped like Twilio's (32 hex digits): one per run.
        super().__init__(auth_token=uuid.uuid4().hex)
        if not 0.0 <= late_share <= 1.0:
            raise ValueError(f"late_share must be within 0..1, not {late_share}")
        self.late_share = late_share
        self.late_after_s = late_after_s
        self.seed = seed
        #: Creates answered after the client's timeout.
        self.late_answers = 0

    def is_late(self, body: str) -> bool:
        """Whether a create with ``body`` is answered late (the same answer every run)."""
        digest = hashlib.sha256(f"{self.seed}:{body}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.late_share

    # FakeTwilio has no public hook for "answer this share late" (delay_next delays the next n
    # creates, whatever they are), so the one method that decides an answer is wrapped here.
    def _create(self, form: dict[str, str]) -> tuple[int, dict[str, Any], float, bool]:
        status, payload, delay, drop = super()._create(form)
        if status == 201:
            with self._cond:
                # When Twilio took it (time.monotonic()), on the recorded message itself.
                for message in reversed(self.messages):
                    if message["sid"] == payload["sid"]:
                        message["arrived"] = time.monotonic()
                        break
                if self.is_late(form.get("Body", "")):
                    self.late_answers += 1
                    delay = max(delay, self.late_after_s)
        return status, payload, delay, drop

    def count(self) -> int:
        with self._cond:
            return len(self.messages)


class CallbackPoster:
    """Posts a signed ``delivered`` status callback for every message ``fake`` took.

    Parameters:
      delay_s: after the message was taken (Twilio reports a moment later).
      retry_s: wait before trying a refused or failed post again.
      give_up_s: a callback still failing this long after its first try is counted lost.
      threads: posts in parallel (the api applies one callback in a few milliseconds).
    """

    def __init__(
        self,
        fake: LateTwilio,
        *,
        delay_s: float = 0.5,
        retry_s: float = 1.0,
        give_up_s: float = 600.0,
        threads: int = 3,
    ) -> None:
        self.fake = fake
        self.delay_s = delay_s
        self.retry_s = retry_s
        self.give_up_s = give_up_s
        self._queue: queue.Queue[tuple[float, float, str, str] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, name="callbacks-watch", daemon=True),
            *(
                threading.Thread(target=self._post_loop, name=f"callbacks-post-{i}", daemon=True)
                for i in range(threads)
            ),
        ]
        self._lock = threading.Lock()
        #: Callbacks the api answered (any status), posts retried, callbacks given up on, and
        #: answers that were not 2xx (403 would mean a signature problem).
        self.answered = 0
        self.retried = 0
        self.lost = 0
        self.refused_status: dict[int, int] = {}

    def start(self) -> CallbackPoster:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for _ in self._threads[1:]:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def pending(self) -> int:
        """Callbacks queued or waiting for a retry."""
        return self._queue.qsize()

    def _watch(self) -> None:
        seen = 0
        while not self._stop.wait(0.2):
            with self.fake._cond:
                new = [(m["sid"], m["status_callback"]) for m in self.fake.messages[seen:]]
            seen += len(new)
            now = time.monotonic()
            for sid, url in new:
                if url:
                    self._queue.put((now + self.delay_s, now, sid, url))

    def _post_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stop.is_set():
                return
            due, first, sid, url = item
            wait = due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            try:
                status = self.fake.send_status_callback(url, sid, "delivered", timeout=10.0)
            except OSError:
                status = None  # refused (api down) or timed out: Twilio tries again
            if status is not None and status < 500:
                with self._lock:
                    self.answered += 1
                    if status >= 300:
                        self.refused_status[status] = self.refused_status.get(status, 0) + 1
                continue
            if time.monotonic() - first > self.give_up_s:
                with self._lock:
                    self.lost += 1
                continue
            with self._lock:
                self.retried += 1
            self._queue.put((time.monotonic() + self.retry_s, first, sid, url))
