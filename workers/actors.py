"""Entry module for ``dramatiq workers.actors``: declares every actor, and refuses to start a
worker that could not send.

A worker process stops before it consumes anything, so nothing is claimed by a worker that
cannot send. The settings are read as this module is imported (every GOVNOTIFY_* shape,
:mod:`infra.settings`); then, when dramatiq boots the worker process and before it creates any
consumer, :class:`StartCheck` builds once everything the worker sends with
(:func:`check_can_send`): the SMS notifiers of every route, the staff directory and a notifier
for each of its webhooks. What refuses them ends the process with one line on stderr naming the
variable to fix and exit status :data:`EXIT_MISCONFIGURED`, without a traceback (the fault is
the configuration, not the code); dramatiq's main process then exits with that status too.

First of all at boot, each worker process asks to die with dramatiq's main process
(:func:`workers.observability.die_with_parent`): that process killed with SIGKILL, its worker
processes would otherwise live on as orphans, consuming with the old code and settings.

The check runs at process boot rather than at import because other processes import this
module only to declare the actors on the broker (the scheduler, the stream's job sender): they
send nothing through these notifiers, and the stream imports it on a background thread.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import dramatiq

from infra.logging import install_masking, quiet_libraries
from infra.settings import SettingsError
from notifiers.errors import NotifierConfigError
from notifiers.registry import notifier_from_settings
from schemas.staff import StaffDirectoryError
from workers.observability import die_with_parent

__all__ = ["EXIT_MISCONFIGURED", "StartCheck", "broker", "check_can_send"]

#: Exit status of a worker refused at start: dramatiq's own for a failed import, and
#: ``govnotify``'s for a bad setting.
EXIT_MISCONFIGURED = 2


def _refuse_to_start(problem: BaseException) -> NoReturn:
    # In a dramatiq worker process sys.stderr is the pipe to the main process, which writes it
    # to its own stderr (or --log-file) in order with the log lines.
    print(f"govnotify: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_MISCONFIGURED)


try:
    # workers.broker builds the worker context from the settings as it is imported (dramatiq's
    # convention): a bad GOVNOTIFY_* value raises here, before any actor or broker exists.
    from workers import (  # noqa: F401  (each module declares its actors)
        call_list,
        callbacks,
        delivery,
        green_channel,
        rectification,
        reminders,
        staff,
        surveys,
    )
    from workers.broker import broker, context
except SettingsError as exc:
    _refuse_to_start(exc)

# dramatiq configured its log handlers before importing us; mask personal data on all of them.
install_masking()
# and at INFO (its default): ``govnotify worker`` exec'd dramatiq, so configure_logging's levels
# are not here. Without this, the twilio client's request and response lines are 2 of 5 per SMS.
quiet_libraries()


def check_can_send() -> None:
    """Build, once, everything this worker sends with, so that what refuses it does so now.

    The SMS notifiers are built and closed (each worker thread builds its own later: HTTP
    sessions are per thread); the staff directory and its webhooks' notifiers are cached for
    the process, so the ones checked are the ones used.

    Raises:
      NotifierConfigError: a provider or webhook refused its settings; the message names the
        GOVNOTIFY_* variables to fix.
      StaffDirectoryError: the staff directory is not valid (GOVNOTIFY_STAFF_DIRECTORY).
      OSError: the data folder cannot be written (GOVNOTIFY_DATA_DIR): the sandbox outboxes
        live there.
    """
    settings = context.settings
    try:
        notifier_from_settings(settings).close()
    except OSError as exc:
        raise OSError(f"GOVNOTIFY_DATA_DIR {settings.data_dir}: {exc}") from None
    try:
        book = context.directory
    except StaffDirectoryError as exc:
        raise StaffDirectoryError(f"GOVNOTIFY_STAFF_DIRECTORY: {exc}") from None
    for key, hook in book.webhooks.items():
        try:
            context.staff_notifier(key)
        except NotifierConfigError as exc:
            where = "GOVNOTIFY_SMTP_URL or GOVNOTIFY_SMTP_FROM" if hook.format == "email" else ""
            raise NotifierConfigError(
                f"{where + ', or ' if where else ''}webhook {key!r} of GOVNOTIFY_STAFF_DIRECTORY: "
                f"{exc.message}",
                provider=exc.provider,
            ) from None
        except OSError as exc:
            raise OSError(f"GOVNOTIFY_DATA_DIR {settings.data_dir}: {exc}") from None


class StartCheck(dramatiq.Middleware):
    """Ties a dramatiq worker process to its parent, then runs :func:`check_can_send`, as it
    boots and before any consumer exists; a refusal ends the process
    (:data:`EXIT_MISCONFIGURED`), and so does a parent already gone (status 1)."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # Before the check, which takes a moment: a parent that dies meanwhile is caught too.
        # Added last, this middleware's after_* hooks run first (dramatiq runs them reversed).
        die_with_parent()
        try:
            check_can_send()
        except (NotifierConfigError, StaffDirectoryError, OSError) as exc:
            # SystemExit, not an exception: dramatiq logs and ignores an Exception raised in a
            # middleware hook, and would go on to consume.
            _refuse_to_start(exc)


broker.add_middleware(StartCheck())
