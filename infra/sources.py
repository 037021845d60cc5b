"""The sources registry: which upstream system may publish which events, and as whom.

An event's envelope names its ``source``, but anyone can write any name there. What a publisher
cannot fake is its AMQP login: publishers set the ``user_id`` property (:mod:`infra.amqp`) and
RabbitMQ refuses a message whose ``user_id`` is not the connection's user. The registry (table
``source``) says which RabbitMQ user publishes each source and which event types that source
may send; the relay checks every event against it (:meth:`SourceRegistry.authorize`) and
dead-letters the rest as ``unauthorised``. One RabbitMQ user per upstream system, with
permission to write to the ingest exchange and nothing else (:class:`RabbitmqUsers`); one user
may own several sources.

Two optional powers of a source: ``trace_any`` lets its token trace any id over the api
(``GET /trace/<id>``: the 12345 hotline), where others trace only the events they published;
an ``outcome_url`` receives the final status of every notification its events caused (outcome
webhooks, ``workers.outcomes``), signed with a key derived from
``GOVNOTIFY_OUTCOME_SIGNING_KEY`` and the source's name (:func:`outcome_key`): the database
holds no usable key, and an operator can print it again (``govnotify sources outcome-key``).

HTTP ingest (``producers.api``) authenticates a source by its token (:func:`authenticate_token`)
and publishes on its behalf with govnotify's own AMQP user and the header
:data:`HTTP_SOURCE_HEADER` naming it; the relay honours that header from govnotify's own user
only. Tokens are 32 random bytes; only a salted HMAC-SHA256 of them is stored.

govnotify's own source (the default rating, ``schemas.events.DEFAULT_RATING_SOURCE``) is
registered for govnotify's own user by the relay itself (:func:`ensure_builtin_sources`). So are
the sample sources (:data:`DEV_SOURCES`) when that user is RabbitMQ's ``guest``, which RabbitMQ
lets in from loopback only: the zero-set-up demo and the tests publish as ``guest``, while a
deployment has users of its own and registers every source with ``govnotify sources add``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pika
from sqlalchemy import select
from sqlmodel import Session

from infra.amqp import amqp_user
from infra.db import conflict_insert, session
from infra.settings import is_loopback
from schemas.events import DEFAULT_RATING_SOURCE, event_types
from schemas.models import OperatorAudit, Source, utcnow

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "BUILTIN_SOURCES",
    "DEV_AMQP_USER",
    "DEV_SOURCES",
    "HTTP_SOURCE_HEADER",
    "REGISTRY_TTL_S",
    "REPLAY_OF_HEADER",
    "BrokerAdminError",
    "CachedRegistry",
    "Grant",
    "NewSource",
    "RabbitmqUsers",
    "SourceError",
    "SourceNotFoundError",
    "SourceRegistry",
    "add_source",
    "authenticate_token",
    "authorize",
    "check_outcome_url",
    "create_source",
    "disable_source",
    "ensure_builtin_sources",
    "find_source",
    "list_sources",
    "load_registry",
    "outcome_key",
    "outcome_urls",
    "publisher_permissions",
    "remove_source",
    "set_outcome_url",
    "sources_of_user",
    "types_of",
]

log = logging.getLogger("govnotify.sources")

#: AMQP header naming the HTTP source an event was posted by; honoured from govnotify's own
#: AMQP user only (from anyone else it is ignored).
HTTP_SOURCE_HEADER = "govnotify-http-source"
#: AMQP header of an ingest dead letter replayed by govnotify (``govnotify dead-letters
#: replay``): the publisher the event first came from. Honoured from govnotify's own user only,
#: so a replayed event is judged as its first publisher's, neither more nor less trusted.
REPLAY_OF_HEADER = "govnotify-replay-of"
#: How long the relay uses a registry snapshot before reading the table again: a source added
#: or disabled takes effect within this many seconds, at one small query per interval.
REGISTRY_TTL_S = 2.0
#: RabbitMQ's default user, which it accepts from loopback only: the development set-up.
DEV_AMQP_USER = "guest"
#: The sample upstream systems of the demo, the README and the tests, and what each sends;
#: registered for :data:`DEV_AMQP_USER` only (see the module docstring).
DEV_SOURCES: Mapping[str, tuple[str, ...]] = {
    "license-registry": ("license.issued", "license.renewed", "license.revoked"),
    "case-system": ("case.submitted", "case.completed", "callback.completed"),
    # Queue-ticket machines: a ticket taken by a special-group applicant, and the on-duty
    # staff's acknowledgement of its green-channel alert.
    "queue-system": ("case.submitted", "greenchannel.acknowledged"),
    "evaluation-system": ("evaluation.submitted",),
}
#: Sources govnotify publishes itself, with its own AMQP user.
BUILTIN_SOURCES: Mapping[str, tuple[str, ...]] = {
    DEFAULT_RATING_SOURCE: ("evaluation.submitted",),
}

#: A source name is what an envelope's ``source`` may be (schemas.events.Envelope).
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: RabbitMQ accepts almost any user name; ours are plain, and never look like an option.
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: HTTP tokens: ``gn1.<token id: 16 hex>.<secret: 32 random bytes, URL-safe base64>``.
_TOKEN_PREFIX = "gn1"  # noqa: S105  (a format marker, not a secret)
_TOKEN = re.compile(r"^gn1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_HASH_SCHEME = "hmac-sha256"
#: Longest piece of sender-chosen text quoted in a rejection detail.
_SHOWN_CHARS = 64


class SourceError(Exception):
    """Raised when a source cannot be added, found or changed as asked."""


class SourceNotFoundError(SourceError):
    """Raised when no source has the name asked for."""


class BrokerAdminError(SourceError):
    """Raised when a RabbitMQ user cannot be checked or created (rabbitmqctl missing or failing)."""


# ---- the registry in memory: what the relay asks --------------------------------------------
@dataclass(frozen=True)
class Grant:
    """One registered source as the relay sees it: who publishes it and what it may send."""

    name: str
    amqp_user: str | None
    event_types: frozenset[str]
    http: bool
    enabled: bool

    @classmethod
    def of(cls, row: Source) -> Grant:
        return cls(
            name=row.name,
            amqp_user=row.amqp_user,
            event_types=frozenset(types_of(row)),
            http=row.token_hash is not None,
            enabled=row.disabled_at is None,
        )


def _shown(value: object) -> str:
    """Sender-chosen text quoted for a rejection detail: escaped (``repr``), and short."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _SHOWN_CHARS:
        return repr(text[:_SHOWN_CHARS]) + "…"
    return repr(text)


class SourceRegistry:
    """A snapshot of the registry, answering :meth:`authorize` from memory."""

    def __init__(self, grants: Iterable[Grant], own_user: str | None) -> None:
        self.own_user = own_user
        self._by_name: dict[str, Grant] = {}
        self._by_user: dict[str, dict[str, Grant]] = {}
        for grant in grants:
            self._by_name[grant.name] = grant
            if grant.enabled and grant.amqp_user is not None:
                self._by_user.setdefault(grant.amqp_user, {})[grant.name] = grant

    def __len__(self) -> int:
        return len(self._by_name)

    def publisher_of(self, user_id: str | None, replay_of: object = None) -> str | None:
        """The publisher an event is judged as: ``user_id``, or, for a dead letter govnotify
        replays (:data:`REPLAY_OF_HEADER` from its own user), the event's first publisher."""
        if user_id == self.own_user and isinstance(replay_of, str) and replay_of:
            return replay_of
        return user_id

    def check_publisher(self, user_id: str | None) -> str | None:
        """Why nothing from ``user_id`` can be accepted, whatever it sends; None if something can.

        Asked before a message is even parsed: an unknown publisher's bytes are not looked at.
        """
        if user_id is None:
            return "the message has no AMQP user_id (publishers must set it to their login)"
        if user_id == self.own_user or user_id in self._by_user:
            return None
        return f"AMQP user {_shown(user_id)} publishes no registered source"

    def authorize(
        self,
        user_id: str | None,
        source: str,
        event_type: str,
        routing_key: str,
        *,
        http_source: object = None,
    ) -> str | None:
        """None if ``user_id`` may publish ``event_type`` as ``source``; else why not.

        ``user_id`` is the message's AMQP ``user_id`` (RabbitMQ checked it), ``routing_key``
        the one it was published with, which must be the event type. ``http_source`` is the
        :data:`HTTP_SOURCE_HEADER` value: from govnotify's own user it names the HTTP source
        the event was posted by, and only that source's grant counts; from anyone else it is
        ignored. The reason quotes sender-chosen text escaped.
        """
        refused = self.check_publisher(user_id)
        if refused is not None:
            return refused
        if user_id == self.own_user and http_source is not None:
            return self._authorize_http(http_source, source, event_type, routing_key)
        grant = self._by_user.get(user_id or "", {}).get(source)
        if grant is None:
            known = self._by_name.get(source)
            if known is not None and not known.enabled:
                return f"source {_shown(source)} is disabled"
            return f"source {_shown(source)} is not published by AMQP user {_shown(user_id)}"
        return _may_send(grant, event_type, routing_key)

    def _authorize_http(
        self, http_source: object, source: str, event_type: str, routing_key: str
    ) -> str | None:
        if not isinstance(http_source, str):
            return f"header {HTTP_SOURCE_HEADER} is not text"
        grant = self._by_name.get(http_source)
        if grant is None or not grant.enabled:
            return f"HTTP source {_shown(http_source)} is not registered or is disabled"
        if not grant.http:
            return f"source {_shown(http_source)} has no HTTP access"
        if source != http_source:
            return (
                f"event source {_shown(source)} is not the HTTP source {_shown(http_source)} "
                "that posted it"
            )
        return _may_send(grant, event_type, routing_key)


def _may_send(grant: Grant, event_type: str, routing_key: str) -> str | None:
    if event_type not in grant.event_types:
        return f"source {_shown(grant.name)} may not send {_shown(event_type)}"
    if routing_key != event_type:
        return f"routing key {_shown(routing_key)} is not the event type {_shown(event_type)}"
    return None


class CachedRegistry:
    """The registry as the relay keeps it: read again when older than ``ttl_s``.

    The first read also registers the built-in sources (:func:`ensure_builtin_sources`). A
    failed read raises (the relay hands its batch back, as for any database error) and is
    tried again at the next batch.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        ttl_s: float = REGISTRY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.own_user = amqp_user(settings.amqp_url)
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: SourceRegistry | None = None
        self._loaded_at = 0.0
        self._builtins_done = False
        #: Times the table was read (tests and the throughput measurement look at it).
        self.loads = 0

    def current(self) -> SourceRegistry:
        """The snapshot, read again from the database if older than ``ttl_s``."""
        now = self._clock()
        snapshot = self._snapshot
        if snapshot is not None and now - self._loaded_at < self.ttl_s:
            return snapshot
        with self._lock:
            if self._snapshot is not None and self._clock() - self._loaded_at < self.ttl_s:
                return self._snapshot
            with session(self.settings) as s:
                if not self._builtins_done:
                    ensure_builtin_sources(s, self.own_user)
                    self._builtins_done = True
                fresh = load_registry(s, self.own_user)
            self._snapshot, self._loaded_at = fresh, self._clock()
            self.loads += 1
            return fresh

    def expire(self) -> None:
        """Forget the snapshot: the next :meth:`current` reads the table."""
        self._loaded_at = float("-inf")


# ---- the store -------------------------------------------------------------------------------
@dataclass(frozen=True)
class NewSource:
    """A source just added, with the credentials to hand over once (never stored by us)."""

    source: Source
    #: The new RabbitMQ user's password; None when the user existed (or there is none).
    amqp_password: str | None
    #: The HTTP token; None without HTTP access.
    http_token: str | None


def types_of(row: Source) -> list[str]:
    """The event types ``row`` may send."""
    return [t for t in row.event_types.split(",") if t]


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise SourceError(
            f"source name {_shown(name)} must be 1-64 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit (as an event's source)"
        )
    return name


def _check_user(user: str) -> str:
    if not _USER.match(user):
        raise SourceError(
            f"AMQP user {_shown(user)} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '@', "
            "'-', starting with a letter or digit"
        )
    return user


def _check_types(types: Iterable[str]) -> list[str]:
    wanted = sorted({t.strip() for t in types if t.strip()})
    if not wanted:
        raise SourceError("a source must be allowed at least one event type (--types)")
    known = set(event_types())
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise SourceError(
            f"unknown event type(s) {', '.join(map(_shown, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    return wanted


def _audit(s: Session, operator: str, action: str, subject: str, detail: str) -> None:
    s.add(OperatorAudit(operator=operator[:64], action=action, subject=subject, detail=detail))


def find_source(s: Session, name: str) -> Source | None:
    """The source called ``name`` (enabled or not), or None."""
    return s.get(Source, name)


def sources_of_user(s: Session, user: str) -> list[Source]:
    """Every source ``user`` publishes (enabled or not), by name."""
    query = select(Source).where(Source.amqp_user == user).order_by(Source.name)
    return list(s.execute(query).scalars())


def list_sources(s: Session) -> list[Source]:
    """Every registered source, by name."""
    return list(s.execute(select(Source).order_by(Source.name)).scalars())


def load_registry(s: Session, own_user: str | None) -> SourceRegistry:
    """A snapshot of the registry for a relay publishing as ``own_user``."""
    return SourceRegistry((Grant.of(row) for row in list_sources(s)), own_user)


def authorize(
    s: Session,
    own_user: str | None,
    user_id: str | None,
    source: str,
    event_type: str,
    routing_key: str,
    *,
    http_source: object = None,
) -> str | None:
    """:meth:`SourceRegistry.authorize` on the registry as it is now (one query; the relay
    keeps a :class:`CachedRegistry` instead)."""
    return load_registry(s, own_user).authorize(
        user_id, source, event_type, routing_key, http_source=http_source
    )


def _hash_secret(secret: str, salt: bytes) -> str:
    digest = hmac.new(salt, secret.encode(), hashlib.sha256).digest()
    encode = base64.urlsafe_b64encode
    return f"{_HASH_SCHEME}${encode(salt).decode()}${encode(digest).decode()}"


def _new_token() -> tuple[str, str, str]:
    """(token, token id, stored hash) of a fresh HTTP token."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    stored = _hash_secret(secret, secrets.token_bytes(16))
    return f"{_TOKEN_PREFIX}.{token_id}.{secret}", token_id, stored


def add_source(
    s: Session,
    name: str,
    types: Iterable[str],
    *,
    amqp_user: str | None,
    http_token: bool = False,
    operator: str,
    trace_any: bool = False,
    outcome_url: str | None = None,
) -> tuple[Source, str | None]:
    """Register ``name`` (published by ``amqp_user``, maybe with an HTTP token); not committed.

    ``trace_any`` lets its token trace any id over the api; ``outcome_url`` (checked by
    :func:`check_outcome_url` first) receives its outcome reports.

    Returns the row and the HTTP token (None without one). The caller creates the RabbitMQ user
    and commits (:func:`create_source` does both).

    Raises:
      SourceError: a bad name, user or type list, a name already registered, or neither an
        AMQP user nor an HTTP token.
    """
    _check_name(name)
    if name in BUILTIN_SOURCES:
        raise SourceError(f"{name} is govnotify's own source; it is registered by the relay")
    if amqp_user is not None:
        _check_user(amqp_user)
    elif not http_token:
        raise SourceError("a source needs an AMQP user or an HTTP token")
    allowed = _check_types(types)
    if find_source(s, name) is not None:
        raise SourceError(f"source {name} is already registered (govnotify sources list)")
    token, token_id, token_hash = _new_token() if http_token else (None, None, None)
    row = Source(
        name=name,
        amqp_user=amqp_user,
        event_types=",".join(allowed),
        token_id=token_id,
        token_hash=token_hash,
        trace_any=trace_any,
        outcome_url=outcome_url,
    )
    s.add(row)
    detail: dict[str, object] = {"amqp_user": amqp_user, "event_types": allowed, "http": http_token}
    if trace_any:
        detail["trace_any"] = True
    if outcome_url:
        detail["outcome_url"] = _url_origin(outcome_url)
    _audit(s, operator, "sources.add", name, json.dumps(detail, ensure_ascii=False))
    s.flush()
    return row, token


def create_source(
    settings: Settings,
    name: str,
    types: Iterable[str],
    *,
    amqp_user: str | None,
    http_token: bool = False,
    operator: str,
    users: RabbitmqUsers | None = None,
    trace_any: bool = False,
    outcome_url: str | None = None,
) -> NewSource:
    """Register a source and, if its AMQP user does not exist yet, create that user with
    write-only permission on the ingest exchange; both or neither.

    An existing RabbitMQ user is left as it is (its password and permissions belong to whoever
    made it: another of our sources, or govnotify itself).
    """
    password = None
    if outcome_url is not None:
        outcome_url = check_outcome_url(settings, outcome_url)
        outcome_key(settings, name)  # refuses before anything is made, without a master key
    with session(settings) as s:
        row, token = add_source(
            s,
            name,
            types,
            amqp_user=amqp_user,
            http_token=http_token,
            operator=operator,
            trace_any=trace_any,
            outcome_url=outcome_url,
        )
        if amqp_user is not None:
            users = users or RabbitmqUsers.for_url(settings.amqp_url)
            if not users.exists(amqp_user):
                password = users.create_publisher(amqp_user, settings.exchange)
        try:
            s.commit()
        except Exception:
            if password is not None:
                users.delete(amqp_user)  # type: ignore[union-attr,arg-type]
            raise
    return NewSource(row, password, token)


def disable_source(s: Session, name: str, *, operator: str) -> Source:
    """Refuse ``name``'s events from now on (the relay within :data:`REGISTRY_TTL_S`);
    committed. Disabling a disabled source changes nothing.

    Raises:
      SourceError: no such source.
    """
    row = find_source(s, name)
    if row is None:
        raise SourceNotFoundError(f"no source {_shown(name)} (govnotify sources list)")
    if row.disabled_at is None:
        row.disabled_at = utcnow()
        s.add(row)
        _audit(s, operator, "sources.disable", name, "")
        s.commit()
    return row


def remove_source(s: Session, name: str, *, operator: str) -> bool:
    """Delete ``name``'s row (committed); False if there was none. Its RabbitMQ user stays."""
    row = find_source(s, name)
    if row is None:
        return False
    s.delete(row)
    _audit(s, operator, "sources.remove", name, "")
    s.commit()
    return True


def ensure_builtin_sources(s: Session, own_user: str | None) -> list[str]:
    """Register govnotify's own sources for ``own_user`` (and, for ``guest``, the sample
    sources of :data:`DEV_SOURCES`); committed. Returns the names newly registered.

    A row already there is kept as it is (an operator may have disabled it), except that a
    built-in source follows govnotify's user when that changed. Several relays may start at
    once: inserts that lose the race are skipped.
    """
    if own_user is None:
        return []
    wanted = dict(BUILTIN_SOURCES)
    if own_user == DEV_AMQP_USER:
        wanted.update(DEV_SOURCES)
    insert = conflict_insert(s)
    added = []
    for name, types in wanted.items():
        result = s.execute(
            insert(Source)
            .values(
                name=name,
                amqp_user=own_user,
                event_types=",".join(sorted(types)),
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(Source.name)  # type: ignore[arg-type]
        )
        if result.first() is not None:
            added.append(name)
        elif name in BUILTIN_SOURCES:
            row = find_source(s, name)
            if row is not None and row.amqp_user != own_user:
                row.amqp_user = own_user
                s.add(row)
    s.commit()
    if added:
        log.info("registered sources %s for AMQP user %s", ", ".join(added), own_user)
    return added


def authenticate_token(settings: Settings, token: str) -> Source | None:
    """The enabled source whose HTTP token ``token`` is, or None.

    The token's id finds the row; its secret is checked against the stored salted
    HMAC-SHA256 with a constant-time comparison. A fast keyed hash is enough here: the secret
    is 32 random bytes, so a stolen hash cannot be brute-forced, and a slow hash (scrypt)
    would cost every HTTP request tens of milliseconds of CPU for nothing.
    """
    match = _TOKEN.match(token) if isinstance(token, str) else None
    if match is None:
        return None
    token_id, secret = match.groups()
    with session(settings) as s:
        row = s.execute(select(Source).where(Source.token_id == token_id)).scalars().first()
    if row is None or row.token_hash is None or row.disabled_at is not None:
        return None
    try:
        scheme, salt, _digest = row.token_hash.split("$")
        expected = _hash_secret(secret, base64.urlsafe_b64decode(salt))
    except ValueError:
        log.error("source %s has a malformed token hash", row.name)
        return None
    return row if scheme == _HASH_SCHEME and hmac.compare_digest(expected, row.token_hash) else None


# ---- outcome webhooks ----------------------------------------------------------------------------
#: Longest outcome URL (the column's width).
_OUTCOME_URL_MAX = 500
#: What the per-source key is derived for: a new version changes every key at once.
_OUTCOME_KEY_CONTEXT = b"govnotify-outcome-v1\0"


def _url_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what the audit keeps (a path or query may carry a
    receiver's own token)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def check_outcome_url(settings: Settings, url: str) -> str:
    """``url`` if it may receive outcome reports: ``http(s)://`` with a host, no user or
    password in it, at most 500 characters; in production (``GOVNOTIFY_ENV=production``) plain
    http only to a loopback host (a receiver on this machine).

    Raises:
      SourceError: otherwise, saying why (the URL is quoted escaped and short).
    """
    url = url.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise SourceError(f"outcome URL {_shown(url)} cannot be read") from None
    if parts.scheme not in ("http", "https") or not host:
        raise SourceError(f"outcome URL {_shown(url)} must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise SourceError("an outcome URL must not carry a user or password")
    if len(url) > _OUTCOME_URL_MAX or not url.isprintable() or " " in url:
        raise SourceError(f"outcome URL {_shown(url)} is too long or has spaces")
    if settings.environment == "production" and parts.scheme == "http" and not is_loopback(host):
        raise SourceError(
            f"GOVNOTIFY_ENV=production: outcome URL {_shown(url)} must be https:// "
            "(http:// only to a loopback host)"
        )
    return url


def outcome_key(settings: Settings, name: str) -> str:
    """The key source ``name``'s outcome reports are signed with (64 hex characters; the
    receiver uses this text, as ASCII, as its HMAC-SHA256 key).

    Derived, not stored: HMAC-SHA256 of the name under ``GOVNOTIFY_OUTCOME_SIGNING_KEY``. The
    database holds no key a reader of it could sign with; changing the master key changes every
    source's key at once (tell each receiver its new one).

    Raises:
      SourceError: when ``GOVNOTIFY_OUTCOME_SIGNING_KEY`` is not set.
    """
    if not settings.outcome_signing_key:
        raise SourceError(
            "outcome webhooks need GOVNOTIFY_OUTCOME_SIGNING_KEY (at least 32 characters, e.g. "
            "`openssl rand -hex 32`) in every scheduler's and this command's environment"
        )
    master = settings.outcome_signing_key.encode()
    return hmac.new(master, _OUTCOME_KEY_CONTEXT + name.encode(), hashlib.sha256).hexdigest()


def set_outcome_url(
    settings: Settings, s: Session, name: str, url: str | None, *, operator: str
) -> Source:
    """Give ``name`` an outcome URL (checked), or none (``url`` None); committed and audited.

    Raises:
      SourceError: no such source, a URL :func:`check_outcome_url` refuses, or no master key.
    """
    row = find_source(s, name)
    if row is None:
        raise SourceNotFoundError(f"no source {_shown(name)} (govnotify sources list)")
    if url is not None:
        url = check_outcome_url(settings, url)
        outcome_key(settings, name)
    row.outcome_url = url
    s.add(row)
    _audit(
        s,
        operator,
        "sources.set-outcome",
        name,
        json.dumps({"outcome_url": _url_origin(url) if url else None}),
    )
    s.commit()
    return row


def outcome_urls(s: Session) -> dict[str, str]:
    """Every enabled source with an outcome URL: name → URL."""
    rows = s.execute(
        select(Source.name, Source.outcome_url).where(
            Source.outcome_url.is_not(None),  # type: ignore[union-attr]
            Source.disabled_at.is_(None),  # type: ignore[union-attr]
        )
    ).all()
    return {name: url for name, url in rows if url}


# ---- RabbitMQ users ----------------------------------------------------------------------------
def publisher_permissions(exchange: str) -> tuple[str, str, str]:
    """RabbitMQ (configure, write, read) patterns of an upstream user: write to ``exchange``
    only. No configure (it declares nothing: the relay owns the topology) and no read."""
    return "^$", f"^{re.escape(exchange)}$", "^$"


class RabbitmqUsers:
    """RabbitMQ users, made with ``rabbitmqctl`` on the broker's host.

    ``rabbitmqctl`` comes with every RabbitMQ node, whereas the management HTTP API needs a
    plugin that is often off (it is on neither this project's CI nor its dev machines). The
    password goes to ``rabbitmqctl`` on stdin, never on its command line (where ``ps`` would
    show it); RabbitMQ keeps only its hash.
    """

    #: Longest a single rabbitmqctl call may take.
    timeout_s = 60.0

    def __init__(self, vhost: str = "/", *, rabbitmqctl: str | None = None) -> None:
        self.vhost = vhost
        self._ctl = rabbitmqctl

    @classmethod
    def for_url(cls, amqp_url: str) -> RabbitmqUsers:
        """Users of the virtual host ``amqp_url`` connects to."""
        return cls(pika.URLParameters(amqp_url).virtual_host)

    def _run(self, *args: str, stdin: str | None = None) -> str:
        ctl = self._ctl or shutil.which("rabbitmqctl")
        if ctl is None:
            raise BrokerAdminError(
                "rabbitmqctl is not installed here: run `govnotify sources add` on a RabbitMQ "
                "node (or a host with rabbitmqctl and the cluster's Erlang cookie)"
            )
        try:
            done = subprocess.run(
                [ctl, "--quiet", *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerAdminError(f"rabbitmqctl {args[0]} failed: {exc}") from exc
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise BrokerAdminError(
                f"rabbitmqctl {args[0]} failed (exit {done.returncode}): "
                + (why[-1][:300] if why else "no output")
            )
        return done.stdout

    def exists(self, user: str) -> bool:
        """Whether RabbitMQ has a user called ``user``."""
        listed = json.loads(self._run("list_users", "--formatter", "json") or "[]")
        return any(entry.get("user") == user for entry in listed)

    def create_publisher(self, user: str, exchange: str) -> str:
        """Create ``user`` with a new random password and :func:`publisher_permissions` on
        ``exchange``; returns the password (to be shown once, never stored)."""
        _check_user(user)
        password = secrets.token_urlsafe(24)
        self._run("add_user", user, stdin=password + "\n")
        try:
            self._run("set_permissions", "-p", self.vhost, user, *publisher_permissions(exchange))
        except BrokerAdminError:
            self.delete(user)
            raise
        return password

    def delete(self, user: str) -> None:
        """Delete ``user`` (nothing if there is none)."""
        try:
            self._run("delete_user", user)
        except BrokerAdminError as exc:
            if "no_such_user" not in str(exc) and "does not exist" not in str(exc):
                raise
