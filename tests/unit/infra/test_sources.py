"""The sources registry: who may publish what (authorize as a table), HTTP tokens kept only as a
salted HMAC, the built-in and sample sources, the relay's cached snapshot, and a clear error
when rabbitmqctl is missing. On SQLite; the real-broker tests are in
tests/integration/ingest/test_publisher_identity.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from infra.db import session, upgrade
from infra.settings import Settings, load_settings
from infra.sources import (
    DEV_SOURCES,
    BrokerAdminError,
    CachedRegistry,
    Grant,
    RabbitmqUsers,
    SourceError,
    SourceRegistry,
    add_source,
    authenticate_token,
    authorize,
    disable_source,
    ensure_builtin_sources,
    find_source,
    publisher_permissions,
    sources_of_user,
)
from schemas.events import DEFAULT_RATING_SOURCE
from schemas.models import OperatorAudit

OWN = "govnotify"


def grant(name: str, user: str | None, *types: str, http: bool = False, enabled: bool = True):  # type: ignore[no-untyped-def]
    return Grant(name, user, frozenset(types), http, enabled)


REGISTRY = SourceRegistry(
    [
        grant("license-registry", "lic", "license.issued", "license.renewed"),
        grant("license-archive", "lic", "license.revoked"),
        grant("case-system", "cases", "case.submitted", "case.completed"),
        grant("old-system", "old", "case.submitted", enabled=False),
        grant("kiosk", None, "case.submitted", http=True),
        grant("kiosk-off", None, "case.submitted", http=True, enabled=False),
        grant("amqp-only", "amqp", "case.submitted"),
        grant(DEFAULT_RATING_SOURCE, OWN, "evaluation.submitted"),
    ],
    own_user=OWN,
)

ISSUED, REVOKED, SUBMITTED, RATED = (
    "license.issued",
    "license.revoked",
    "case.submitted",
    "evaluation.submitted",
)


def case(  # type: ignore[no-untyped-def]
    name: str, user, source: str, event_type: str, expected=None, *, key=None, header=None
):
    """One row: who publishes (AMQP user_id), the event's source and type, and None (accepted)
    or a fragment of the reason; the routing key is the type unless ``key`` says otherwise."""
    return pytest.param(user, source, event_type, key or event_type, header, expected, id=name)


CASES = [
    case("owner", "lic", "license-registry", ISSUED),
    case("user-owns-two-sources", "lic", "license-archive", REVOKED),
    case("someone-elses-source", "cases", "license-registry", ISSUED, "by AMQP user 'cases'"),
    case("type-not-allowed", "lic", "license-registry", REVOKED, "may not send 'license.revoked'"),
    case("routing-key", "lic", "license-registry", ISSUED, "routing key", key="license.renewed"),
    case(
        "unknown-user", "stranger", "license-registry", ISSUED, "'stranger' publishes no registered"
    ),
    case("no-user-id", None, "license-registry", ISSUED, "no AMQP user_id"),
    case("user-of-disabled-only", "old", "old-system", SUBMITTED, "publishes no registered"),
    case("disabled-source", "cases", "old-system", SUBMITTED, "'old-system' is disabled"),
    case("rating-from-upstream", "lic", DEFAULT_RATING_SOURCE, RATED, "by AMQP user 'lic'"),
    case("rating-from-govnotify", OWN, DEFAULT_RATING_SOURCE, RATED),
    case("own-user-not-every-source", OWN, "license-registry", ISSUED, "not published by"),
    # HTTP ingest: govnotify's own user, the header naming the source that posted the event
    case("http-source", OWN, "kiosk", SUBMITTED, header="kiosk"),
    case("http-other-source", OWN, "case-system", SUBMITTED, "not the HTTP", header="kiosk"),
    case("http-type", OWN, "kiosk", "case.completed", "may not send", header="kiosk"),
    case("http-key", OWN, "kiosk", SUBMITTED, "routing key", key=ISSUED, header="kiosk"),
    case("http-disabled", OWN, "kiosk-off", SUBMITTED, "is disabled", header="kiosk-off"),
    case("http-unknown", OWN, "nobody", SUBMITTED, "not registered", header="nobody"),
    case("http-no-token", OWN, "amqp-only", SUBMITTED, "no HTTP access", header="amqp-only"),
    case("http-header-bytes", OWN, "kiosk", SUBMITTED, "is not text", header=b"kiosk"),
    case("http-header-binds", OWN, DEFAULT_RATING_SOURCE, RATED, "not the HTTP", header="kiosk"),
    # From an upstream user the header is ignored: its own grants decide
    case("http-from-upstream", "lic", "kiosk", SUBMITTED, "not published by", header="kiosk"),
    case("http-from-owner", "lic", "license-registry", ISSUED, header="kiosk"),
    # Sender-chosen text is quoted escaped, never as it came
    case("escaped-key", "lic", "license-registry", ISSUED, r"'x\u202e\n'", key="x\u202e\n"),
    case("escaped-user", "x\u202e" * 100, "license-registry", ISSUED, r"'x\u202ex\u202e"),
]


@pytest.mark.parametrize(
    ("user_id", "source", "event_type", "routing_key", "header", "expected"), CASES
)
def test_authorize(
    user_id: str | None,
    source: str,
    event_type: str,
    routing_key: str,
    header: object,
    expected: str | None,
) -> None:
    # Given the registry above
    # When an event is checked against it
    reason = REGISTRY.authorize(user_id, source, event_type, routing_key, http_source=header)

    # Then it is accepted, or refused saying why, with no raw control character in the reason
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason
        assert not any(c in reason for c in "\n\u202e"), reason


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(namespace="tunit", data_dir=tmp_path / "data", database_url="")
    upgrade(s)
    return s


def test_a_source_is_stored_with_its_audit_row_and_found_by_name_and_user(
    settings: Settings,
) -> None:
    # Given two sources of one user, added by an operator
    with session(settings) as s:
        add_source(s, "lic-a", ["license.issued"], amqp_user="lic", operator="ops1")
        add_source(
            s, "lic-b", ["license.revoked", "license.issued"], amqp_user="lic", operator="ops1"
        )
        s.commit()

    # When they are looked up
    with session(settings) as s:
        row = find_source(s, "lic-b")
        owned = [r.name for r in sources_of_user(s, "lic")]
        audit = s.execute(select(OperatorAudit).order_by(OperatorAudit.id)).scalars().all()
        verdict = authorize(s, OWN, "lic", "lic-b", "license.revoked", "license.revoked")

    # Then each is there with its sorted types, the user owns both, and both adds were audited
    assert row is not None and row.event_types == "license.issued,license.revoked"
    assert owned == ["lic-a", "lic-b"]
    assert [(a.operator, a.action, a.subject) for a in audit] == [
        ("ops1", "sources.add", "lic-a"),
        ("ops1", "sources.add", "lic-b"),
    ]
    assert verdict is None


BAD_ADDS = [
    pytest.param("Case System", ["case.submitted"], "u", "source name", id="bad-name"),
    pytest.param("ok", ["case.stolen"], "u", "unknown event type", id="unknown-type"),
    pytest.param("ok", [" ", ""], "u", "at least one event type", id="no-types"),
    pytest.param("ok", ["case.submitted"], "-rf", "AMQP user", id="user-like-an-option"),
    pytest.param(
        DEFAULT_RATING_SOURCE, ["evaluation.submitted"], "u", "govnotify's own", id="reserved"
    ),
    pytest.param("dup", ["case.submitted"], "u", "already registered", id="duplicate"),
]


@pytest.mark.parametrize(("name", "types", "user", "message"), BAD_ADDS)
def test_a_bad_source_is_refused_with_a_clear_error(
    settings: Settings, name: str, types: list[str], user: str, message: str
) -> None:
    # Given a registry holding "dup"
    with session(settings) as s:
        add_source(s, "dup", ["case.submitted"], amqp_user="u", operator="t")
        s.commit()

    # When a bad source is added, Then it is refused saying what is wrong
    with session(settings) as s, pytest.raises(SourceError, match=message):
        add_source(s, name, types, amqp_user=user, operator="t")


def test_an_http_token_authenticates_its_source_only_while_enabled(settings: Settings) -> None:
    # Given an HTTP-only source with a token
    with session(settings) as s:
        row, token = add_source(
            s, "kiosk", ["case.submitted"], amqp_user=None, http_token=True, operator="t"
        )
        s.commit()
    assert token is not None
    prefix, token_id, secret = token.split(".")

    # Then the token is not stored, only its salted HMAC
    assert row.token_hash is not None and secret not in row.token_hash
    assert row.token_hash.startswith("hmac-sha256$")

    # And the token finds the source; a changed, truncated or foreign token finds nothing
    found = authenticate_token(settings, token)
    assert found is not None and found.name == "kiosk"
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for wrong in (
        f"{prefix}.{token_id}.{flipped}",
        token[:-1],
        f"{prefix}.{'0' * 16}.{secret}",
        "",
        "gn1..x",
    ):
        assert authenticate_token(settings, wrong) is None

    # When the source is disabled, Then its token no longer works
    with session(settings) as s:
        disable_source(s, "kiosk", operator="t")
    assert authenticate_token(settings, token) is None


def test_builtin_sources_follow_the_own_user_and_samples_are_for_guest_only(
    settings: Settings,
) -> None:
    # Given a deployment whose own AMQP user is "govnotify"
    with session(settings) as s:
        added = ensure_builtin_sources(s, "govnotify")
    # Then only the default-rating source is registered, for that user
    assert added == [DEFAULT_RATING_SOURCE]

    # When the own user changes to guest (the development set-up)
    with session(settings) as s:
        added = ensure_builtin_sources(s, "guest")
        rating = find_source(s, DEFAULT_RATING_SOURCE)
    # Then the default rating follows it, and the sample sources are registered for guest
    assert sorted(added) == sorted(DEV_SOURCES)
    assert rating is not None and rating.amqp_user == "guest"

    # And a sample source an operator disabled stays disabled on the next start
    with session(settings) as s:
        disable_source(s, "case-system", operator="t")
        assert ensure_builtin_sources(s, "guest") == []
        row = find_source(s, "case-system")
    assert row is not None and row.disabled_at is not None


def test_the_cached_registry_reads_the_table_once_per_ttl(settings: Settings) -> None:
    # Given a cached registry on a clock the test moves
    now = [100.0]
    cache = CachedRegistry(settings, ttl_s=2.0, clock=lambda: now[0])
    first = cache.current()
    assert first.authorize("kiosk-user", "late", "case.submitted", "case.submitted") is not None

    # When a source is added, and events keep coming within the TTL
    with session(settings) as s:
        add_source(s, "late", ["case.submitted"], amqp_user="kiosk-user", operator="t")
        s.commit()
    for _ in range(1000):
        cache.current()
    # Then the table was read once
    assert cache.loads == 1

    # When the TTL has passed, Then the new source is authorised
    now[0] += 2.0
    assert (
        cache.current().authorize("kiosk-user", "late", "case.submitted", "case.submitted") is None
    )
    assert cache.loads == 2


def test_publisher_permissions_are_write_only_on_the_exchange() -> None:
    # When the permissions of an upstream user on "govnotify.events" are made
    configure, write, read = publisher_permissions("govnotify.events")

    # Then it may configure and read nothing, and write to that exchange only (dot escaped)
    assert (configure, write, read) == ("^$", r"^govnotify\.events$", "^$")


def test_a_missing_rabbitmqctl_is_a_clear_error(tmp_path: Path) -> None:
    # Given no rabbitmqctl where it is looked for
    users = RabbitmqUsers(rabbitmqctl=str(tmp_path / "no-rabbitmqctl"))

    # When a user is checked, Then the error says what failed
    with pytest.raises(BrokerAdminError, match="rabbitmqctl list_users failed"):
        users.exists("someone")
