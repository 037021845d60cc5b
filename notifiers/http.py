"""What an HTTP transport failure means for delivery: surely not sent, or perhaps sent.

Every HTTP notifier (Twilio, the gateway, staff webhooks) asks the same question of a
``requests`` exception, and the answer decides between a failover or retry (nothing was sent)
and leaving the message for the sweep (the provider may have it; sending again could send twice).
"""

from __future__ import annotations

import datetime as dt
import email.utils

import requests
import urllib3.exceptions

from notifiers.errors import DeliveryError, DeliveryTimeoutError, ProviderUnavailableError

__all__ = ["retry_after_s", "transport_error"]


def transport_error(
    exc: requests.exceptions.RequestException, action: str, *, provider: str
) -> DeliveryError:
    """Our typed error for a transport failure of ``action`` (e.g. ``"POST /sms/send"``).

    The text names the action, never the URL (it may carry a signature or a number).
    """
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        # Checked before Timeout and ConnectionError (it is both): no connection, nothing sent.
        return ProviderUnavailableError(f"{action}: connect timeout", provider=provider)
    if isinstance(exc, requests.exceptions.Timeout):
        return DeliveryTimeoutError(
            f"{action}: no answer in time; the request may have been accepted", provider=provider
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        if exc.args and isinstance(exc.args[0], urllib3.exceptions.ProtocolError):
            # "Connection aborted": dropped after the request was written, so the provider may
            # have taken it. As ambiguous as a read timeout.
            return DeliveryTimeoutError(
                f"{action}: connection dropped before the answer; the request may have been "
                "accepted",
                provider=provider,
            )
        return ProviderUnavailableError(f"{action}: cannot connect", provider=provider)
    return ProviderUnavailableError(f"{action}: {type(exc).__name__}", provider=provider)


def retry_after_s(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks us to wait (RFC 9110: delay-seconds or an
    HTTP-date), at least 0; ``None`` when absent or unreadable.

    Parameters:
      now: the instant an HTTP-date is measured from (default: the real time, which is what
        the provider's date is written in).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())
