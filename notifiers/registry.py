"""An explicit registry of notifier factories, by name (in the manner of faust's codecs).

SMS: "twilio", "gateway" and "sandbox" are registered at import. Tests may :func:`register` a
replacement under an existing name; :func:`notifier_from_settings` looks factories up here, so
it picks it up. Each factory is called with that provider's settings (see
:func:`provider_from_settings`). :func:`provider_class` names the class behind each name, whatever
factory is registered: what a status report's words are read with
(:meth:`notifiers.sms.SMSNotifier.status_of`).

Staff: :func:`staff_notifier` builds the notifier of one entry of the staff directory (a
webhook, an e-mail address or the staff sandbox).

Pacing: :func:`pacer` is the process's :class:`~notifiers.pacing.DatabasePacer` (the slots
live in the database, so one per process is all it takes to share them with every other);
:func:`send_rate` is a sender's rate: ``GOVNOTIFY_SEND_RATES``, else its class's declared
``request_rate_per_sec``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from infra.clock import Clock
from notifiers.base import Notifier
from notifiers.circuit import CircuitBoard, CircuitConfig
from notifiers.errors import NotifierConfigError
from notifiers.pacing import DatabasePacer, NoPacer, Pacer
from notifiers.routing import RoutingNotifier
from notifiers.sms import SMSNotifier
from notifiers.sms.gateway import HttpGatewayNotifier
from notifiers.sms.sandbox import SandboxNotifier
from notifiers.sms.twilio import TwilioSMSNotifier
from notifiers.staff import StaffMessage
from notifiers.staff.email import EmailNotifier
from notifiers.staff.sandbox import SandboxWebhook
from notifiers.staff.webhook import WebhookNotifier

if TYPE_CHECKING:
    from infra.settings import Settings
    from schemas.staff import Webhook

__all__ = [
    "circuit_board",
    "configured_providers",
    "get_factory",
    "names",
    "notifier_from_settings",
    "pacer",
    "provider_class",
    "provider_from_settings",
    "register",
    "send_rate",
    "staff_notifier",
]

#: File name of the sandbox outbox inside ``settings.data_dir``.
SANDBOX_OUTBOX = "sandbox-outbox.jsonl"
#: File name of the staff sandbox inside ``settings.data_dir``.
STAFF_SANDBOX_OUTBOX = "sandbox-webhooks.jsonl"

#: The class of each SMS provider, by registry name: it declares the provider's limits and
#: status words, whatever factory tests register under the name.
PROVIDER_CLASSES: dict[str, type[SMSNotifier]] = {
    "twilio": TwilioSMSNotifier,
    "gateway": HttpGatewayNotifier,
    "sandbox": SandboxNotifier,
}

#: Path of the api's Twilio status callback, under ``settings.api_public_url``.
TWILIO_STATUS_PATH = "/callbacks/twilio/status"

#: The GOVNOTIFY_* variables each provider is built from, named when it refuses them.
PROVIDER_SETTINGS: dict[str, tuple[str, ...]] = {
    "twilio": (
        "GOVNOTIFY_TWILIO_ACCOUNT_SID",
        "GOVNOTIFY_TWILIO_AUTH_TOKEN",
        "GOVNOTIFY_TWILIO_FROM",
        "GOVNOTIFY_TWILIO_API_BASE",
        "GOVNOTIFY_PUBLIC_BASE_URL",
    ),
    "gateway": (
        "GOVNOTIFY_GATEWAY_URL",
        "GOVNOTIFY_GATEWAY_KEY_ID",
        "GOVNOTIFY_GATEWAY_SECRET",
        "GOVNOTIFY_GATEWAY_SIGN_NAME",
        "GOVNOTIFY_GATEWAY_TEMPLATES",
        "GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE",
    ),
    "sandbox": ("GOVNOTIFY_DATA_DIR",),
}

_factories: dict[str, Callable[..., SMSNotifier]] = {}
_lock = threading.Lock()
#: One board of circuit breakers per process and thresholds: every worker thread has its own
#: notifier (HTTP sessions are per thread) but they must agree on which provider is failing.
_boards: dict[CircuitConfig, CircuitBoard] = {}
#: One pacer per process, database and clock: the slots are in the database, shared by all.
_pacers: dict[tuple[str, int], DatabasePacer] = {}


def register(name: str, factory: Callable[..., SMSNotifier]) -> None:
    """Make ``factory`` the notifier called ``name``, replacing any earlier one."""
    if not name or not name.isidentifier():
        raise ValueError(f"notifier name must be an identifier, got {name!r}")
    with _lock:
        _factories[name] = factory


def get_factory(name: str) -> Callable[..., SMSNotifier]:
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


def provider_class(name: str) -> type[SMSNotifier]:
    """The class of SMS provider ``name``: its limits and status words, without building one.

    Raises:
      KeyError: when ``name`` is not an SMS provider.
    """
    try:
        return PROVIDER_CLASSES[name]
    except KeyError:
        raise KeyError(f"no SMS provider {name!r}; known: {sorted(PROVIDER_CLASSES)}") from None


def circuit_board(settings: Settings) -> CircuitBoard:
    """The process-wide circuit breakers for ``settings``' thresholds."""
    config = CircuitConfig.from_settings(settings)
    with _lock:
        board = _boards.get(config)
        if board is None:
            board = _boards[config] = CircuitBoard(config)
        return board


def send_rate(name: str, declared: float | None, settings: Settings) -> float | None:
    """Sends per second of sender ``name`` (an SMS provider, ``webhook``, ``email``,
    ``sandbox``): ``GOVNOTIFY_SEND_RATES``' entry, else ``declared`` (the class's
    ``request_rate_per_sec``); ``None`` when not paced (0 or nothing declared)."""
    return settings.send_rates.get(name, declared) or None


def pacer(settings: Settings) -> Pacer:
    """The process's pacer for ``settings``: a :class:`DatabasePacer` on its database and
    clock, built once and shared by every notifier of the process."""
    clock = Clock.from_settings(settings)
    key = (settings.resolved_database_url, id(clock))
    with _lock:
        found = _pacers.get(key)
        if found is None:
            found = _pacers[key] = DatabasePacer(settings, clock)
        return found


def configured_providers(settings: Settings) -> list[str]:
    """Provider names to build: Twilio and the gateway when configured, the sandbox when
    neither is or when a route names it."""
    named = {p for order in settings.sms_routes.values() for p in order}
    providers = [
        name
        for name, on in (("twilio", settings.twilio_enabled), ("gateway", settings.gateway_enabled))
        if on
    ]
    if not providers or "sandbox" in named:
        providers.append("sandbox")
    return providers


def provider_from_settings(name: str, settings: Settings) -> SMSNotifier:
    """The notifier registered as ``name``, built from its settings.

    Raises:
      NotifierConfigError: when its settings are missing or malformed, or the notifier refuses
        them; the message names the GOVNOTIFY_* variables it is built from.
      KeyError: when ``name`` is not a provider this function knows how to configure.
    """
    try:
        return _build_provider(name, settings)
    except NotifierConfigError as exc:
        variables = PROVIDER_SETTINGS.get(name, ())
        if not variables or any(v in exc.message for v in variables):
            raise
        # The notifier speaks of its own parameters (account_sid, url …); the operator fixes
        # a variable. Settings validation catches these shapes first; this is the backstop.
        raise NotifierConfigError(
            f"{name} refused its settings ({', '.join(variables)}): {exc.message}",
            reason=exc.reason,
            code=exc.code,
            provider=exc.provider or name,
        ) from None


def _build_provider(name: str, settings: Settings) -> SMSNotifier:
    factory = get_factory(name)
    if name == "twilio":
        if not settings.twilio_enabled:
            raise NotifierConfigError(
                "a route names twilio but GOVNOTIFY_TWILIO_ACCOUNT_SID/_AUTH_TOKEN/_FROM are not "
                "set",
                provider="twilio",
            )
        kwargs: dict[str, Any] = {"api_base": settings.twilio_api_base or None}
        # Twilio can only reach the api at a public address: without GOVNOTIFY_PUBLIC_BASE_URL
        # no callback URL is sent (the sweep then resolves `sent` rows by asking Twilio).
        # Passed only to a notifier that takes it, so registering an older one still works.
        if settings.public_base_url and _accepts(factory, "status_callback_url"):
            kwargs["status_callback_url"] = settings.api_public_url + TWILIO_STATUS_PATH
        return factory(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            settings.twilio_from,
            **kwargs,
        )
    if name == "gateway":
        if not settings.gateway_enabled:
            raise NotifierConfigError(
                "a route names gateway but GOVNOTIFY_GATEWAY_URL is not set", provider="gateway"
            )
        return factory(
            settings.gateway_url,
            settings.gateway_key_id,
            settings.gateway_secret,
            sign_name=settings.gateway_sign_name,
            templates=settings.gateway_templates,
            generic_template=settings.gateway_generic_template,
        )
    if name == "sandbox":
        return factory(settings.data_dir / SANDBOX_OUTBOX)
    raise KeyError(f"no settings known for notifier {name!r}")


def notifier_from_settings(settings: Settings) -> RoutingNotifier:
    """A :class:`RoutingNotifier` over every configured provider, routed per flow.

    Providers: Twilio when its credentials are set, the gateway when its URL is set, the
    sandbox (writing to the data folder) when neither is or a route names it. Routes come from
    ``GOVNOTIFY_SMS_ROUTES``; without one, every configured provider, Twilio first. The
    breakers are shared by every notifier this process builds (:func:`circuit_board`).

    Raises:
      NotifierConfigError: when a provider's settings are malformed, or a route names a
        provider that is not configured.
    """
    providers = {
        name: provider_from_settings(name, settings) for name in configured_providers(settings)
    }
    missing = sorted({p for order in settings.sms_routes.values() for p in order} - set(providers))
    if missing:
        for notifier in providers.values():
            notifier.close()
        raise NotifierConfigError(
            f"GOVNOTIFY_SMS_ROUTES names {', '.join(missing)}, which is not configured",
            provider="routing",
        )
    rates = {
        name: send_rate(name, notifier.declared_rate, settings)
        for name, notifier in providers.items()
    }
    return RoutingNotifier(
        providers,
        routes=settings.sms_routes,
        default=settings.route(""),
        circuits=circuit_board(settings),
        # Nothing paced (the sandbox of the demo): no database round trip per send.
        pacer=pacer(settings) if any(rates.values()) else NoPacer(),
        rates=rates,
    )


def _accepts(factory: Callable[..., SMSNotifier], parameter: str) -> bool:
    """Does ``factory`` take ``parameter``?"""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return parameter in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


for _name, _cls in PROVIDER_CLASSES.items():
    register(_name, _cls)


# ---- staff ---------------------------------------------------------------------------------------
def staff_notifier(key: str, hook: Webhook, settings: Settings) -> Notifier[StaffMessage, Any]:
    """The notifier of the staff directory's webhook ``key``, described by ``hook``.

    A ``mailto:`` entry (``"format": "email"``) is sent through ``GOVNOTIFY_SMTP_URL`` by an
    :class:`EmailNotifier`, or written to the staff sandbox while that is empty; a
    ``sandbox://`` URL is the staff sandbox; any other URL a :class:`WebhookNotifier` in the
    entry's format. The sandbox is ``<data_dir>/``:data:`STAFF_SANDBOX_OUTBOX`.

    Raises:
      NotifierConfigError: the entry or the SMTP settings are refused by the notifier.
    """
    sandbox = settings.data_dir / STAFF_SANDBOX_OUTBOX
    if hook.format == "email":
        address = hook.email_address
        if not settings.smtp_url:
            return SandboxWebhook(key, sandbox)
        assert address is not None  # every "email" entry has one mailto: address (schemas)
        return EmailNotifier(settings.smtp_url, settings.smtp_from, to=address)
    if hook.url.startswith("sandbox://"):
        return SandboxWebhook(key, sandbox)
    return WebhookNotifier(hook.url, fmt=hook.format, secret=hook.secret)
