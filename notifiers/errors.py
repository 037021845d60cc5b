"""Typed delivery errors: every notifier raises one of these, never returns ``False``.

The split matters to the workers. A :class:`PermanentDeliveryError` is never retried (the
number is suppressed or the content fixed); a :class:`TransientDeliveryError` is retried with
backoff; a :class:`NotifierConfigError` means our side is broken (credentials, settings) and
needs an operator, not a different recipient. :class:`DeliveryTimeoutError` is the one
ambiguous case: the provider may have accepted the message, so a sweep must look it up before
anything is sent again. :class:`CallbackSignatureError` and :class:`UnknownStatusWordError` are
not about delivery at all: they refuse a status report that cannot be proven to come from the
provider, or that carries a word the provider's notifier does not know.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

__all__ = [
    "CallbackSignatureError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "InvalidRecipientError",
    "LookupUnsupportedError",
    "MessageRejectedError",
    "NotifierConfigError",
    "PermanentDeliveryError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "RecipientUnsubscribedError",
    "TransientDeliveryError",
    "UnknownStatusWordError",
    "UnsafeTextError",
    "UnsupportedRecipientError",
]


class DeliveryError(Exception):
    """Raised when a notifier could not deliver a message."""

    #: Short machine-readable reason, stored with the notification and used as a metric label.
    default_reason: ClassVar[str] = "delivery_failed"

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        code: str | int | None = None,
        provider: str | None = None,
    ) -> None:
        self.reason: str = reason or self.default_reason
        #: The provider's own error code (Twilio's 21211 …) as a string, when it gave one.
        self.code: str | None = None if code is None else str(code)
        self.provider: str | None = provider
        super().__init__(message or self.reason)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only attributes are lost by the default Exception pickling, and result
        # backends and multiprocessing pickle exceptions.
        return (
            _rebuild,
            (type(self), self.message, self.reason, self.code, self.provider),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, reason={self.reason!r}, "
            f"code={self.code!r}, provider={self.provider!r})"
        )


def _rebuild(
    cls: type[DeliveryError], message: str, reason: str, code: str | None, provider: str | None
) -> DeliveryError:
    return cls(message, reason=reason, code=code, provider=provider)


# ---- permanent: retrying cannot help ---------------------------------------------------------
class PermanentDeliveryError(DeliveryError):
    """Raised when the provider refused the message for good; it is never retried."""

    default_reason = "provider_rejected"


class InvalidRecipientError(PermanentDeliveryError):
    """Raised when the recipient is not a valid phone number."""

    default_reason = "invalid_number"


class RecipientUnsubscribedError(PermanentDeliveryError):
    """Raised when the recipient has opted out at the provider (replied STOP or similar)."""

    default_reason = "unsubscribed"


class UnsupportedRecipientError(PermanentDeliveryError):
    """Raised when the number exists but cannot receive SMS (landline, unreachable route)."""

    default_reason = "landline_or_unsupported"


class MessageRejectedError(PermanentDeliveryError):
    """Raised when the content is refused: empty, too long, a URL, or filtered by the provider."""

    default_reason = "content_rejected"


class UnsafeTextError(MessageRejectedError):
    """Raised when a value for an SMS holds a link, a phone number, a line break, 【】 or a
    character not allowed in an SMS (the rule of ``schemas.events.sms_text_problem``)."""

    default_reason = "unsafe_text"

    def __init__(
        self,
        message: str = "",
        *,
        field: str | None = None,
        reason: str | None = None,
        code: str | int | None = None,
        provider: str | None = None,
    ) -> None:
        #: The template parameter (or payload field) whose value was refused; never the value.
        self.field = field
        super().__init__(message, reason=reason, code=code, provider=provider)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_unsafe,
            (type(self), self.message, self.field, self.reason, self.code, self.provider),
        )


def _rebuild_unsafe(
    cls: type[UnsafeTextError],
    message: str,
    field: str | None,
    reason: str,
    code: str | None,
    provider: str | None,
) -> UnsafeTextError:
    return cls(message, field=field, reason=reason, code=code, provider=provider)


# ---- transient: retry with backoff -----------------------------------------------------------
class TransientDeliveryError(DeliveryError):
    """Raised when delivery failed for a reason that may pass; it is retried with backoff."""

    default_reason = "provider_error"


class ProviderUnavailableError(TransientDeliveryError):
    """Raised when the provider answered 5xx or could not be reached; nothing was sent."""

    default_reason = "provider_unavailable"


class RateLimitedError(TransientDeliveryError):
    """Raised when the provider throttled us (HTTP 429, a throttling or frequency code).

    Nothing was sent and the provider is healthy: it answered. The message waits and goes to
    the same provider again (no failover: a second provider would defeat a limit that protects
    the recipient, and the circuit is not touched). ``scope`` says whose limit it was:
    ``"provider"`` (our account or robot is over its rate: every worker backs off,
    :meth:`notifiers.pacing.Pacer.hold`) or ``"recipient"`` (the carrier's limit on messages to
    one number, such as the gateway's ``isv.BUSINESS_LIMIT_CONTROL``: only this message waits).
    ``retry_after`` is the provider's own advice in seconds (``Retry-After``), when it gave one.
    """

    default_reason = "rate_limited"

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: float | None = None,
        scope: Literal["provider", "recipient"] = "provider",
        reason: str | None = None,
        code: str | int | None = None,
        provider: str | None = None,
    ) -> None:
        #: Seconds the provider asked us to wait, or ``None``.
        self.retry_after = retry_after
        #: ``"provider"`` or ``"recipient"``: see the class.
        self.scope: Literal["provider", "recipient"] = scope
        super().__init__(message, reason=reason, code=code, provider=provider)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_rate_limited,
            (
                type(self),
                self.message,
                self.retry_after,
                self.scope,
                self.reason,
                self.code,
                self.provider,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, reason={self.reason!r}, "
            f"code={self.code!r}, provider={self.provider!r}, scope={self.scope!r}, "
            f"retry_after={self.retry_after!r})"
        )


def _rebuild_rate_limited(
    cls: type[RateLimitedError],
    message: str,
    retry_after: float | None,
    scope: Literal["provider", "recipient"],
    reason: str,
    code: str | None,
    provider: str | None,
) -> RateLimitedError:
    return cls(
        message, retry_after=retry_after, scope=scope, reason=reason, code=code, provider=provider
    )


class DeliveryTimeoutError(TransientDeliveryError):
    """Raised when the request may have reached the provider but no answer came back."""

    default_reason = "timeout"


# ---- our side is wrong -----------------------------------------------------------------------
class NotifierConfigError(DeliveryError):
    """Raised when credentials or settings are missing or refused by the provider."""

    default_reason = "misconfigured"


class LookupUnsupportedError(DeliveryError):
    """Raised when a notifier cannot be asked whether a message was sent."""

    default_reason = "lookup_unsupported"


# ---- the receiving side ----------------------------------------------------------------------
class CallbackSignatureError(Exception):
    """Raised when a provider status callback is unsigned, forged, stale or malformed."""

    def __init__(self, message: str, *, reason: str = "forged") -> None:
        #: "unsigned" (no signature), "forged" (wrong key or signature), "stale" (timestamp
        #: outside the allowed skew) or "malformed" (signed but not the agreed JSON): the
        #: api's metric label.
        self.reason = reason
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_callback_error, (str(self.args[0]) if self.args else "", self.reason))


def _rebuild_callback_error(message: str, reason: str) -> CallbackSignatureError:
    return CallbackSignatureError(message, reason=reason)


class UnknownStatusWordError(LookupError):
    """Raised when a provider reports a status word its notifier does not declare."""

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        self.provider = provider
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_status_word_error, (str(self.args[0]) if self.args else "", self.provider))


def _rebuild_status_word_error(message: str, provider: str | None) -> UnknownStatusWordError:
    return UnknownStatusWordError(message, provider=provider)
