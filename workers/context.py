"""What every actor reads at run time, built once at start: settings, clock, calendar, senders.

dramatiq runs module-level functions, so an actor cannot be handed its dependencies as
arguments. Instead the process installs one :class:`WorkerContext` at start (``workers.broker``
does, from the environment) and each actor asks :func:`current` when it runs, not when its
module is imported. A test builds a context from its own settings and runs the actors inside
:func:`using`, on dramatiq's ``StubBroker`` or by calling ``actor.fn``; nothing is patched.

What dramatiq fixes when an actor is declared (its queue name, its retry options) is read once,
at import, from the context installed then: those are per-deployment values, not per call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from infra.clock import Clock
from infra.jobs import JobSender
from infra.quiet_hours import QuietHours
from infra.settings import Settings, get_settings
from infra.workdays import WorkdayCalendar
from notifiers.pacing import Pacer
from notifiers.registry import STAFF_SANDBOX_OUTBOX, notifier_from_settings, pacer, staff_notifier
from schemas.staff import StaffDirectory, load_staff_directory

if TYPE_CHECKING:
    from notifiers.base import Notifier
    from notifiers.routing import RoutingNotifier
    from notifiers.staff import StaffMessage

__all__ = ["WorkerContext", "current", "install", "using"]

log = logging.getLogger("govnotify.staff")


class WorkerContext:
    """The settings of one worker process and what is built from them, each built on first use.

    Parameters:
      settings: the validated settings; every actor reads these, never the environment.
      clock: the one clock (default: the process clock for ``settings``, see
        :func:`infra.clock.install_clock`).
    """

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or Clock.from_settings(settings)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._staff: dict[str, Notifier[StaffMessage, Any]] = {}
        self._warned_email_sandbox = False

    @functools.cached_property
    def quiet(self) -> QuietHours:
        """The citizens' quiet hours (``GOVNOTIFY_QUIET_HOURS``)."""
        return QuietHours.parse(self.settings.quiet_hours)

    @functools.cached_property
    def calendar(self) -> WorkdayCalendar:
        """Working days of the centre (rectification deadlines, call-list digests)."""
        return WorkdayCalendar.from_settings(self.settings)

    @functools.cached_property
    def pacer(self) -> Pacer:
        """Send slots shared with every worker process (:mod:`notifiers.pacing`): the staff
        robots' pace and the spread of messages released together."""
        return pacer(self.settings)

    @functools.cached_property
    def jobs(self) -> JobSender:
        """Hands jobs to the work queues by actor name, confirms pipelined."""
        return JobSender(self.settings)

    @functools.cached_property
    def directory(self) -> StaffDirectory:
        """The staff directory (``GOVNOTIFY_STAFF_DIRECTORY``), loaded and validated once.

        Raises:
          StaffDirectoryError: the file is missing or not a valid directory.
        """
        return load_staff_directory(self.settings.staff_directory)

    def staff_notifier(self, webhook_key: str) -> Notifier[StaffMessage, Any]:
        """The notifier of one of the directory's webhooks, built once (the worker's start
        check builds every one, so the ones it checked are the ones used).

        Raises:
          NotifierConfigError: the webhook, or the SMTP settings of a ``mailto:`` one, refused.
          KeyError: the directory has no such webhook.
        """
        with self._lock:
            notifier = self._staff.get(webhook_key)
            if notifier is None:
                hook = self.directory.webhooks[webhook_key]
                if hook.format == "email" and not self.settings.smtp_url:
                    self._warn_email_sandbox()
                notifier = staff_notifier(webhook_key, hook, self.settings)
                self._staff[webhook_key] = notifier
        return notifier

    def _warn_email_sandbox(self) -> None:
        # Said once: the zero-setup default, but in production a misconfiguration.
        if not self._warned_email_sandbox:
            self._warned_email_sandbox = True
            log.warning(
                "GOVNOTIFY_SMTP_URL is empty: staff e-mail (mailto: webhooks) goes to the "
                "sandbox file %s, not to any mailbox",
                self.settings.data_dir / STAFF_SANDBOX_OUTBOX,
            )

    def sms_notifier(self) -> RoutingNotifier:
        """This thread's SMS notifier (HTTP sessions are not shared across threads)."""
        notifier = getattr(self._local, "sms", None)
        if notifier is None:
            notifier = self._local.sms = notifier_from_settings(self.settings)
        return notifier


_lock = threading.Lock()
_current: WorkerContext | None = None


def install(context: WorkerContext) -> WorkerContext:
    """Make ``context`` the one every actor of this process reads; returns it."""
    global _current
    with _lock:
        _current = context
    return context


def current() -> WorkerContext:
    """The installed context; without one, one built from the environment is installed.

    Raises:
      SettingsError: no context was installed and a ``GOVNOTIFY_*`` variable is invalid.
    """
    context = _current
    if context is None:
        with _lock:
            context = _current
            if context is None:
                context = _install_from_environment()
    return context


def _install_from_environment() -> WorkerContext:
    global _current
    _current = WorkerContext(get_settings())
    return _current


@contextlib.contextmanager
def using(context: WorkerContext) -> Iterator[WorkerContext]:
    """Run the block with ``context`` installed, then put back the one installed before."""
    global _current
    with _lock:
        before, _current = _current, context
    try:
        yield context
    finally:
        with _lock:
            _current = before
