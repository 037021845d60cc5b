"""The one notifier interface: one message in, a receipt out, or a typed error.

Every provider, SMS (:mod:`notifiers.sms`) or staff (:mod:`notifiers.staff`), is a
:class:`Notifier` subclass, generic over the message it takes and the receipt it gives. In the
manner of apprise, a provider's limits are class attributes and its configuration is checked in
``__init__`` (:meth:`Notifier._refuse_config` names every problem at once). :meth:`Notifier.send`
checks what the provider would refuse anyway before any network call (:meth:`Notifier._validate`),
so a bad message fails fast and permanently instead of burning a retry budget; failures are the
typed errors of :mod:`notifiers.errors`, never a ``False``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable
from types import TracebackType
from typing import ClassVar, Generic, Self, TypeVar, final

from notifiers.errors import NotifierConfigError

__all__ = ["E164_PATTERN", "MessageT", "Notifier", "ReceiptT"]

#: ``+`` then country code and subscriber number, 7 to 15 digits (ITU-T E.164); use fullmatch.
E164_PATTERN = re.compile(r"\+[1-9][0-9]{6,14}")

#: What a notifier takes: :class:`notifiers.sms.OutboundMessage`,
#: :class:`notifiers.staff.StaffMessage`.
MessageT = TypeVar("MessageT")
#: What it gives back when the provider took the message.
ReceiptT = TypeVar("ReceiptT")


class Notifier(abc.ABC, Generic[MessageT, ReceiptT]):
    """A delivery channel. Subclasses implement :meth:`_send` and set the limits below.

    Subclasses add their own limits as class attributes (``body_maxlen`` …) and check their
    parameters in ``__init__``, raising :class:`NotifierConfigError` through
    :meth:`_refuse_config`.
    """

    #: Registry name and metric label, e.g. "twilio", "sandbox", "webhook", "email".
    name: ClassVar[str]
    #: "sms" for :mod:`notifiers.sms`; "webhook" or "email" for :mod:`notifiers.staff`.
    channel: ClassVar[str]
    #: Highest request rate the provider accepts; ``None`` when it queues for us.
    request_rate_per_sec: ClassVar[float | None] = None

    @property
    def declared_rate(self) -> float | None:
        """The rate this notifier's receiver accepts (sends a second; ``None``: any): the
        class's :attr:`request_rate_per_sec` unless the instance knows better. What
        :mod:`notifiers.pacing` keeps to when ``GOVNOTIFY_SEND_RATES`` does not say."""
        return self.request_rate_per_sec

    @final
    def send(self, message: MessageT) -> ReceiptT:
        """Validate ``message`` and hand it to the provider.

        Raises:
          PermanentDeliveryError: the message is one the provider would refuse (a subclass
            says why: :class:`MessageRejectedError`, :class:`InvalidRecipientError` …);
            nothing was sent.
          DeliveryError: any other failure, as a subclass that says whether to retry.

        Returns:
          The provider's receipt.
        """
        self._validate(message)
        receipt = self._send(message)
        self._log_sent(message, receipt)
        return receipt

    @abc.abstractmethod
    def _validate(self, message: MessageT) -> None:
        """Raise the :class:`PermanentDeliveryError` the provider would answer ``message`` with;
        no network call."""

    @abc.abstractmethod
    def _send(self, message: MessageT) -> ReceiptT:
        """Deliver an already validated message, or raise a :class:`DeliveryError`."""

    def _log_sent(self, message: MessageT, receipt: ReceiptT) -> None:
        """Log a message the provider took (ids only: never a recipient or the text)."""

    @classmethod
    def _refuse_config(cls, what: str, problems: Iterable[str]) -> None:
        """Raise :class:`NotifierConfigError` naming every problem, when there is any.

        Parameters:
          what: the notifier as an operator knows it ("Twilio notifier", "SMS gateway").
          problems: one phrase per problem; never a secret, a password or a full robot URL.
        """
        problems = list(problems)
        if problems:
            raise NotifierConfigError(
                f"{what} misconfigured: " + "; ".join(problems), provider=cls.name
            )

    def close(self) -> None:
        """Release connections; the notifier must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
