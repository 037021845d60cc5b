"""An explicit registry of notifier factories, by name (in the manner of faust's codecs).

"twilio", "gateway" and "sandbox" are registered at import. Tests may :func:`register` a
replacement under an existing name; :func:`notifier_from_settings` looks factories up here, so
it picks it up. Each factory is called with that provider's settings (see
:func:`provider_from_settings`).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from notifiers.base import Notifier
from notifiers.circuit import CircuitBoard, CircuitConfig
from notifiers.errors import NotifierConfigError
from notifiers.routing import RoutingNotifier
from notifiers.sandbox import SandboxNotifier

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "circuit_board",
    "configured_providers",
    "get_factory",
    "names",
    "notifier_from_settings",
    "provider_from_settings",
    "register",
]

#: File name of the sandbox outbox inside ``settings.data_dir``.
SANDBOX_OUTBOX = "sandbox-outbox.jsonl"

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

_factories: dict[str, Callable[..., Notifier]] = {}
_lock = threading.Lock()
#: One board of circuit breakers per process and thresholds: every worker thread has its own
#: notifier (HTTP sessions are per thread) but they must agree on which provider is failing.
_boards: dict[CircuitConfig, CircuitBoard] = {}


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


def circuit_board(settings: Settings) -> CircuitBoard:
    """The process-wide circuit breakers for ``settings``' thresholds."""
    config = CircuitConfig.from_settings(settings)
    with _lock:
        board = _boards.get(config)
        if board is None:
            board = _boards[config] = CircuitBoard(config)
        return board


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


def provider_from_settings(name: str, settings: Settings) -> Notifier:
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


def _build_provider(name: str, settings: Settings) -> Notifier:
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
    return RoutingNotifier(
        providers,
        routes=settings.sms_routes,
        default=settings.route(""),
        circuits=circuit_board(settings),
    )


def _accepts(factory: Callable[..., Notifier], parameter: str) -> bool:
    """Does ``factory`` (or the class behind our lazy Twilio factory) take ``parameter``?"""
    target: Any = factory
    if factory is _twilio_factory:
        from notifiers.twilio_sms import TwilioSMSNotifier

        target = TwilioSMSNotifier
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return parameter in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def _twilio_factory(*args: Any, **kwargs: Any) -> Notifier:
    # Imported on first use: twilio.rest is slow to import and the sandbox never needs it.
    from notifiers.twilio_sms import TwilioSMSNotifier

    return TwilioSMSNotifier(*args, **kwargs)


def _gateway_factory(*args: Any, **kwargs: Any) -> Notifier:
    from notifiers.http_gateway import HttpGatewayNotifier

    return HttpGatewayNotifier(*args, **kwargs)


register("twilio", _twilio_factory)
register("gateway", _gateway_factory)
register("sandbox", SandboxNotifier)
