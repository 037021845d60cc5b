"""An explicit registry of notifier factories, by name (in the manner of faust's codecs).

"twilio" and "sandbox" are registered at import. Tests may :func:`register` a replacement under
an existing name; :func:`notifier_from_settings` looks factories up here, so it picks it up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from notifiers.base import Notifier
from notifiers.sandbox import SandboxNotifier

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["get_factory", "names", "notifier_from_settings", "register"]

#: File name of the sandbox outbox inside ``settings.data_dir``.
SANDBOX_OUTBOX = "sandbox-outbox.jsonl"

_factories: dict[str, Callable[..., Notifier]] = {}
_lock = threading.Lock()


def register(name: str, factory: Callable[..., Notifier]) -> None:
    """Make ``factory`` the notifier called ``name``, replacing any earlier one."""
    if not name or not name.isidentifier():
        raise ValueError(f"notifier name must be an identifier, got {name!r}")
    with _lock:
        _factories[name] = factory


def get_factory(name: str) -> Callable[..., Notifier]:
    """The factory registered as ``name``.

    Raises:
      KeyError: when nothing is registered under ``name``; the message lists what is.
    """
    with _lock:
        try:
            return _factories[name]
        except KeyError:
            raise KeyError(f"no notifier {name!r}; registered: {sorted(_factories)}") from None


def names() -> list[str]:
    """Registered notifier names, sorted."""
    with _lock:
        return sorted(_factories)


def notifier_from_settings(settings: Settings) -> Notifier:
    """Twilio when its credentials are set, else the sandbox writing to the data folder.

    Raises:
      NotifierConfigError: when the Twilio settings are present but malformed.
    """
    if settings.twilio_enabled:
        return get_factory("twilio")(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.twilio_from,
            api_base=settings.twilio_api_base or None,
        )
    return get_factory("sandbox")(settings.data_dir / SANDBOX_OUTBOX)


def _twilio_factory(*args: Any, **kwargs: Any) -> Notifier:
    # Imported on first use: twilio.rest is slow to import and the sandbox never needs it.
    from notifiers.twilio_sms import TwilioSMSNotifier

    return TwilioSMSNotifier(*args, **kwargs)


register("twilio", _twilio_factory)
register("sandbox", SandboxNotifier)
