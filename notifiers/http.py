"""What an HTTP transport failure means for delivery: surely not sent, or perhaps sent.

Every HTTP notifier (Twilio, the gateway, staff webhooks) asks the same question of a
``requests`` exception, and the answer decides between a failover or retry (nothing was sent)
and leaving the message for the sweep (the provider may have it; sending again could send twice).
"""

from __future__ import annotations

import requests
import urllib3.exceptions

from notifiers.errors import DeliveryError, DeliveryTimeoutError, ProviderUnavailableError

__all__ = ["transport_error"]


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
