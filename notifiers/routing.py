"""Per-flow provider routing with failover, behind one circuit breaker per provider.

A :class:`RoutingNotifier` is what the workers send through. For each message it takes the
flow's providers in order (``GOVNOTIFY_SMS_ROUTES``; primary first) and:

- skips a provider whose circuit is open (:mod:`notifiers.circuit`);
- waits for the provider's next send slot (:mod:`notifiers.pacing`, key ``sms:<provider>``),
  at the provider's rate (``GOVNOTIFY_SEND_RATES``, else its declared
  ``request_rate_per_sec``) kept by every worker process together;
- on a failure that certainly sent nothing — :class:`ProviderUnavailableError` (5xx, connection
  refused), :class:`NotifierConfigError` (the provider refused our credentials or has no
  template for it) — moves on to the next provider within the same attempt, counting
  ``govnotify_provider_failovers_total``;
- on a :class:`RateLimitedError` (429, throttling, the carrier's per-number limit) stops and
  re-raises: the message waits and goes to the same provider again (the worker's retry queue,
  after the provider's ``Retry-After`` when it gave one). Failing over would defeat the limit:
  the gateway's ``isv.BUSINESS_LIMIT_CONTROL`` protects the citizen from too many messages,
  whichever provider carries them. A limit on our account (``scope == "provider"``) holds the
  provider's pace back for every worker (:meth:`notifiers.pacing.Pacer.hold`);
- on :class:`DeliveryTimeoutError` (and any other transient error that does not say nothing was
  sent) stops and re-raises: the first provider may have taken the message, and a second send
  could reach the citizen twice. The worker leaves the row ``sending`` and the sweep asks that
  provider (the error's ``provider`` says which);
- on a :class:`PermanentDeliveryError` stops and re-raises at once: an invalid or unsubscribed
  number is the same number at every provider;
- when every provider failed or was skipped, raises the last transient error (the worker hands
  the notification to the retry queue); all circuits open counts as a
  :class:`ProviderUnavailableError`; only when every provider was misconfigured does the
  :class:`NotifierConfigError` come out.

For the circuits, a transient failure or a timeout is an error; a success or a permanent refusal
is not (the provider answered; the number or content was at fault); a configuration error or a
rate limit is neither (a configuration error is usually one message's missing template, not the
provider's health; a rate limit is a healthy provider answering). Every error
raised carries the ``provider`` that raised it, and the :class:`Receipt` names the provider
that took the message.

Asking afterwards (the sweep): :meth:`RoutingNotifier.find` (→ provider and reference),
:meth:`RoutingNotifier.lookup` (→ reference) and :meth:`RoutingNotifier.fetch_status` take
``provider=`` (the row's ``provider``) to ask that provider only, and ``notification_id=`` for
providers that store our id. Without ``provider`` they ask every provider and trust only a
certain answer: a reference found anywhere wins; "not found" is returned only when every
provider could be asked.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar

from infra.metrics import FAILOVERS, PACE_WAIT, PROVIDER_DURATION, RATE_LIMITED
from notifiers.circuit import CircuitBoard, CircuitConfig
from notifiers.errors import (
    DeliveryError,
    DeliveryTimeoutError,
    LookupUnsupportedError,
    NotifierConfigError,
    PermanentDeliveryError,
    ProviderUnavailableError,
    RateLimitedError,
    TransientDeliveryError,
)
from notifiers.pacing import NoPacer, Pacer, interval_of, sms_key
from notifiers.sms import OutboundMessage, Receipt, SMSNotifier

__all__ = ["RoutingNotifier"]

_log = logging.getLogger(__name__)

#: Failures after which nothing was sent, so the next provider may take the message. Not a
#: :class:`RateLimitedError`: that message waits for the same provider.
FAILOVER_ERRORS: tuple[type[DeliveryError], ...] = (
    ProviderUnavailableError,
    NotifierConfigError,
)
#: How long every worker holds back from a provider that throttled our account without saying
#: how long (no ``Retry-After``), in seconds.
THROTTLE_HOLD_S = 1.0


class RoutingNotifier(SMSNotifier):
    """Sends each message through its flow's providers in order, with failover.

    Parameters:
      providers: provider name → notifier ("twilio", "gateway", "sandbox").
      routes: flow → provider names, primary first; the "default" entry serves flows without
        their own (``settings.sms_routes``).
      default: the order for flows with no route and no "default" route.
      circuits: the breakers, shared by every notifier of the process; a fresh board (default
        thresholds, real clock) when omitted.
      pacer: where each provider's send slots are taken (:mod:`notifiers.pacing`); default
        :class:`~notifiers.pacing.NoPacer`, nothing paced.
      rates: provider name → sends per second (``None`` or 0: not paced); a provider not
        named keeps its declared rate (:attr:`~notifiers.base.Notifier.declared_rate`).

    Raises:
      NotifierConfigError: a route names a provider that is not given, or no provider at all.
    """

    name: ClassVar[str] = "routing"
    #: Each provider checks its own limit in its own ``send``; this one is never reached first.
    body_maxlen: ClassVar[int] = 10_000

    def __init__(
        self,
        providers: Mapping[str, SMSNotifier],
        *,
        routes: Mapping[str, Sequence[str]] | None = None,
        default: Sequence[str] | None = None,
        circuits: CircuitBoard | None = None,
        pacer: Pacer | None = None,
        rates: Mapping[str, float | None] | None = None,
    ) -> None:
        self.providers = dict(providers)
        self.pacer = pacer or NoPacer()
        self.rates: dict[str, float | None] = {
            name: (rates or {}).get(name, notifier.declared_rate) or None
            for name, notifier in self.providers.items()
        }
        self.routes = {flow: list(order) for flow, order in (routes or {}).items()}
        self.default = list(default) if default is not None else list(self.providers)
        self.circuits = circuits or CircuitBoard(CircuitConfig())
        problems = []
        if not self.providers:
            problems.append("no provider")
        for flow, order in [*self.routes.items(), ("(default)", self.default)]:
            if not order:
                problems.append(f"route {flow!r} names no provider")
            missing = [p for p in order if p not in self.providers]
            if missing:
                problems.append(f"route {flow!r} names {', '.join(missing)}, not configured")
        self._refuse_config("SMS routing", problems)

    def __repr__(self) -> str:
        return f"RoutingNotifier(providers={sorted(self.providers)}, routes={self.routes!r})"

    def route(self, flow: str) -> list[str]:
        """Provider names for ``flow``, primary first."""
        if flow in self.routes:
            return list(self.routes[flow])
        if "default" in self.routes:
            return list(self.routes["default"])
        return list(self.default)

    def rate(self, provider: str) -> float | None:
        """Sends per second ``provider`` is paced at; ``None``: not paced."""
        return self.rates.get(provider)

    # ---- sending --------------------------------------------------------------------------------
    def _validate(self, message: OutboundMessage) -> None:
        # Each provider validates against its own limits inside its own send().
        return

    def _send(self, message: OutboundMessage) -> Receipt:
        order = self.route(message.flow)
        flow = message.flow or "default"
        last_transient: TransientDeliveryError | None = None
        config_error: NotifierConfigError | None = None
        skipped: list[str] = []
        for i, name in enumerate(order):
            following = order[i + 1] if i + 1 < len(order) else None
            permit = self.circuits.get(name).acquire()
            if permit is None:
                skipped.append(name)
                self._moved(flow, name, following, "circuit_open")
                continue
            try:
                self._pace(name)
            except BaseException:
                permit.release()  # our database, not the provider's health
                raise
            try:
                receipt = self._timed_send(name, message)
            except PermanentDeliveryError as exc:
                permit.record(ok=True)
                _tagged(exc, name)
                raise
            except RateLimitedError as exc:
                # The provider answered: healthy, and the circuit is left as it was. The message
                # waits for this provider; another would defeat the limit.
                permit.release()
                _tagged(exc, name)
                self._rate_limited(name, exc, message)
                raise
            except FAILOVER_ERRORS as exc:
                _tagged(exc, name)
                if isinstance(exc, NotifierConfigError):
                    # Not the provider's health: often one message's missing template. It
                    # neither opens nor closes the circuit.
                    permit.release()
                    config_error = exc
                    _log.error(
                        "provider %s misconfigured for notification %s: %s",
                        name,
                        message.notification_id,
                        exc.reason,
                    )
                else:
                    permit.record(ok=False)
                    last_transient = exc  # type: ignore[assignment]
                self._moved(flow, name, following, exc.reason)
                continue
            except TransientDeliveryError as exc:
                # A timeout (or a transient error that does not promise nothing was sent):
                # the provider may have the message. No failover; the sweep asks this provider.
                permit.record(ok=False)
                _tagged(exc, name)
                raise
            except BaseException:
                # A bug or an unclassified error: count it against the provider, and let it out.
                permit.record(ok=False)
                raise
            permit.record(ok=True)
            return receipt
        if last_transient is not None:
            raise last_transient
        if skipped:
            raise ProviderUnavailableError(
                f"every provider for flow {flow!r} is out of rotation (circuit open): "
                + ", ".join(skipped),
                reason="circuit_open",
                provider=skipped[0],
            )
        assert config_error is not None
        raise config_error

    def _pace(self, name: str) -> None:
        """Wait for ``name``'s next send slot, shared by every worker (no wait when unpaced)."""
        interval = interval_of(self.rates.get(name))
        if interval is None:
            return
        key = sms_key(name)
        PACE_WAIT.labels(key).observe(self.pacer.wait(key, interval))

    def _rate_limited(self, name: str, exc: RateLimitedError, message: OutboundMessage) -> None:
        RATE_LIMITED.labels(name, exc.scope).inc()
        if exc.scope == "provider":
            # Our account is over its rate: every worker holds back, not only this one.
            self.pacer.hold(sms_key(name), exc.retry_after or THROTTLE_HOLD_S)
        _log.info(
            "provider %s rate-limited notification %s (%s, scope %s, retry after %s s); "
            "no failover",
            name,
            message.notification_id,
            exc.code or exc.reason,
            exc.scope,
            exc.retry_after,
        )

    def _timed_send(self, name: str, message: OutboundMessage) -> Receipt:
        """One provider request, timed per provider and outcome (failover makes two)."""
        started = time.perf_counter()
        outcome = "error"
        try:
            receipt = self.providers[name].send(message)
            outcome = "ok"
            return receipt
        except PermanentDeliveryError:
            outcome = "permanent"
            raise
        except DeliveryTimeoutError:
            outcome = "timeout"
            raise
        except RateLimitedError:
            outcome = "rate_limited"
            raise
        except TransientDeliveryError:
            outcome = "transient"
            raise
        except NotifierConfigError:
            outcome = "misconfigured"
            raise
        finally:
            PROVIDER_DURATION.labels(name, outcome).observe(time.perf_counter() - started)

    def _moved(self, flow: str, from_provider: str, to_provider: str | None, reason: str) -> None:
        if to_provider is None:
            return
        FAILOVERS.labels(flow, from_provider, to_provider, reason).inc()
        _log.info("flow %s: %s → %s (%s)", flow, from_provider, to_provider, reason)

    # ---- asking afterwards -----------------------------------------------------------------------
    def _asked(self, provider: str | None) -> list[str]:
        if provider is None:
            # Default order first, then any provider only some flow uses.
            ordered = list(dict.fromkeys([*self.default, *self.providers]))
            return [p for p in ordered if p in self.providers]
        if provider not in self.providers:
            raise LookupUnsupportedError(
                f"provider {provider!r} is not configured here", provider=provider
            )
        return [provider]

    def find(
        self,
        to: str,
        body: str,
        since: dt.datetime,
        *,
        notification_id: str | None = None,
        provider: str | None = None,
    ) -> tuple[str, str] | None:
        """(provider name, provider reference) of the message, or ``None`` if surely not sent.

        Parameters:
          notification_id: our id; providers that store it (the gateway's ``out_id``) match
            on it, which is exact where a body match is not.
          provider: ask only this provider (the notification row's ``provider``).

        Raises:
          LookupUnsupportedError: ``provider`` is not configured, or it (or, without
            ``provider``, one of the providers, when none found the message) cannot be asked.
          DeliveryError: a provider could not be reached (classified like a send).
        """
        failure: DeliveryError | None = None
        for name in self._asked(provider):
            notifier = self.providers[name]
            try:
                ref = notifier.lookup(to, body, since, notification_id=notification_id)
            except DeliveryError as exc:
                if provider is not None:
                    raise
                failure = failure or _tagged(exc, name)
                continue
            if ref is not None:
                return name, ref
        if failure is not None:
            # One provider could not say: "not found" elsewhere does not mean "not sent".
            raise failure
        return None

    def lookup(
        self,
        to: str,
        body: str,
        since: dt.datetime,
        *,
        notification_id: str | None = None,
        provider: str | None = None,
    ) -> str | None:
        """The reference of the message at ``provider`` (or any provider); see :meth:`find`."""
        found = self.find(to, body, since, notification_id=notification_id, provider=provider)
        return None if found is None else found[1]

    def fetch_status(self, provider_ref: str, *, provider: str | None = None) -> str | None:
        """The provider's own status word for ``provider_ref`` (Twilio "delivered", gateway
        "DELIVERED"), as the provider returned it (a ``str`` that may carry ``error_code``);
        ``None`` when the provider has no such message.

        Without ``provider`` each provider that can be asked is tried in turn: the first that
        knows the reference answers (references of different providers do not collide), and
        ``None`` comes back only when every provider could be asked and none knows it.

        Raises:
          LookupUnsupportedError: no provider (or not ``provider``) can fetch a status.
          DeliveryError: the provider could not be asked (unreachable, refused).
        """
        failure: DeliveryError | None = None
        asked = 0
        for name in self._asked(provider):
            fetch = getattr(self.providers[name], "fetch_status", None)
            if fetch is None:
                if provider is not None:
                    raise LookupUnsupportedError(
                        f"{name} cannot fetch a message status", provider=name
                    )
                continue
            asked += 1
            try:
                word = fetch(provider_ref)
            except DeliveryError as exc:
                _tagged(exc, name)
                if provider is not None:
                    raise
                failure = exc
                continue
            if word is not None:
                return word  # type: ignore[no-any-return]
        if failure is not None:
            raise failure
        if not asked:
            raise LookupUnsupportedError("no configured provider can fetch a message status")
        return None

    def close(self) -> None:
        for notifier in self.providers.values():
            notifier.close()


def _tagged(exc: DeliveryError, provider: str) -> DeliveryError:
    """``exc`` with its ``provider`` set (providers set it themselves; a replacement may not)."""
    if exc.provider is None:
        exc.provider = provider
    return exc
