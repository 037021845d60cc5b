"""The ingest journal's verdict on repeats: what it holds for an id is what a copy is judged by;
and its batch statements, on PostgreSQL (arrays: one statement text whatever the batch size)
and on SQLite (the zero-set-up default: the multi-row statements)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import StatementError

from infra.db import get_engine, session, upgrade
from infra.journal import JournalEntry, applied_ids, journal, mark_applied, mark_relayed
from infra.settings import Settings, load_settings
from schemas.models import IngestEvent

pytestmark = pytest.mark.integration

AT = dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
def journal_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a fresh, migrated database of either kind."""
    if request.param == "postgresql":
        url = request.getfixturevalue("database_url")
    else:
        url = f"sqlite:///{tmp_path / 'journal.db'}"
        upgrade(url=url)
    try:
        yield load_settings(data_dir=tmp_path / "data", database_url=url)
    finally:
        if request.param == "sqlite":
            get_engine(url).dispose()


def entry(event_id: str, body: bytes, *, occurred_at: dt.datetime = AT) -> JournalEntry:
    return JournalEntry(
        event_id=event_id,
        event_type="license.issued",
        family="licenses",
        entity_key="LIC-1",
        occurred_at=occurred_at,
        body=body,
    )


@pytest.mark.parametrize(
    ("before", "batch", "expected"),
    [
        # a known id: the batch's conflicting copy first must not make the genuine one a conflict
        ([b"X"], [b"X'", b"X"], {"forward": [], "duplicates": [b"X"], "conflicts": [b"X'"]}),
        ([b"X"], [b"X", b"X'"], {"forward": [], "duplicates": [b"X"], "conflicts": [b"X'"]}),
        ([b"X"], [b"X", b"X"], {"forward": [], "duplicates": [b"X", b"X"], "conflicts": []}),
        # a new id: the batch's first copy is journaled, later ones are judged by it
        ([], [b"X", b"X", b"X'"], {"forward": [b"X"], "duplicates": [b"X"], "conflicts": [b"X'"]}),
    ],
    ids=["known-conflict-first", "known-genuine-first", "known-twice", "new-id"],
)
def test_repeats_are_judged_by_what_the_journal_holds(
    journal_settings: Settings, before: list[bytes], batch: list[bytes], expected: dict
) -> None:
    # Given the journal holding ``before`` for event E-1 (relayed to Kafka)
    with session(journal_settings) as s:
        for body in before:
            journal(s, [entry("E-1", body)])
        mark_relayed(s, ["E-1"], 1)

        # When a batch with these copies of E-1 arrives
        verdict = journal(s, [entry("E-1", body) for body in batch])

    # Then
    got = {
        "forward": [e.body for e in verdict.forward],
        "duplicates": [e.body for e in verdict.duplicates],
        "conflicts": [e.body for e in verdict.conflicts],
    }
    assert got == expected


def test_a_batch_is_journaled_marked_relayed_and_applied_once(journal_settings: Settings) -> None:
    # Given a batch of 500 new events, 200 of them journaled before but never in Kafka and 100
    # of those relayed already (one with other content now)
    at_8 = dt.datetime(2026, 11, 20, 17, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    batch = [entry(f"E-{i}", b"body %d" % i, occurred_at=at_8) for i in range(500)]
    with session(journal_settings) as s:
        journal(s, batch[:200])
        mark_relayed(s, [e.event_id for e in batch[:100]], 1)
        batch[0] = entry("E-0", b"other", occurred_at=at_8)

        # When
        verdict = journal(s, batch)
        mark_relayed(s, [e.event_id for e in verdict.forward], 2)
        marked = mark_applied(s, [e.event_id for e in batch[50:150]])
        again = mark_applied(s, [e.event_id for e in batch[100:160]])
        applied = applied_ids(s, [e.event_id for e in batch[:200]] + ["unknown"])
        rows = {r.event_id: r for r in s.scalars(select(IngestEvent))}

    # Then: new and never-relayed ones forwarded, relayed ones duplicates, the changed one a
    # conflict; every mark touches each row once
    assert [e.event_id for e in verdict.conflicts] == ["E-0"]
    assert [e.event_id for e in verdict.duplicates] == [f"E-{i}" for i in range(1, 100)]
    assert [e.event_id for e in verdict.forward] == [f"E-{i}" for i in range(100, 500)]
    assert (marked, again) == (100, 10)
    assert applied == {f"E-{i}" for i in range(50, 160) if i < 200}
    assert len(rows) == 500 and rows["E-0"].body == b"body 0"
    assert {rows[f"E-{i}"].epoch for i in range(100)} == {1}
    assert {rows[f"E-{i}"].epoch for i in range(100, 500)} == {2}
    assert rows["E-7"].occurred_at == AT and rows["E-7"].occurred_at.tzinfo is not None
    assert rows["E-7"].fingerprint == rows["E-7"].fingerprint.lower() and rows["E-7"].redriven == 0


def test_bodies_are_stored_byte_for_byte(journal_settings: Settings) -> None:
    # Given bodies with every byte value, quotes, backslashes, braces and Chinese text: what a
    # text array would have to escape (on PostgreSQL they travel as a binary array)
    bodies = [
        bytes(range(256)),
        b'{"holder_name":"\xe6\x9e\x97","q":"\\"{}"}',
        b"",
        b"NULL",
        b"\\x00",
    ]
    batch = [entry(f"E-{i}", body) for i, body in enumerate(bodies)]

    # When they are journaled in one batch
    with session(journal_settings) as s:
        verdict = journal(s, batch)
        stored = {r.event_id: r.body for r in s.scalars(select(IngestEvent))}

    # Then each is stored exactly as given, and judged new
    assert len(verdict.forward) == len(bodies)
    assert stored == {f"E-{i}": body for i, body in enumerate(bodies)}


def test_a_naive_time_is_refused_as_by_the_column(journal_settings: Settings) -> None:
    # When / Then: the array parameter keeps the column type's rule (applied by SQLAlchemy on
    # SQLite, which wraps the error; by infra.db.bound_array before the binary array on
    # PostgreSQL)
    with (
        session(journal_settings) as s,
        pytest.raises((StatementError, ValueError), match="naive datetime"),
    ):
        journal(s, [entry("E-1", b"X", occurred_at=dt.datetime(2026, 11, 20, 9))])


def test_postgresql_sends_one_statement_text_whatever_the_batch_size(database_url: str) -> None:
    # Given: every statement text sent to PostgreSQL recorded
    settings = load_settings(database_url=database_url)
    texts: set[str] = set()

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        texts.add(statement)

    engine = get_engine(database_url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        # When: batches of 1, 7 and 500, some of them seen before
        with session(settings) as s:
            for size in (1, 7, 500):
                batch = [entry(f"E-{i}", b"X") for i in range(size)]
                journal(s, batch)
                mark_relayed(s, [e.event_id for e in batch], 1)
                applied_ids(s, [e.event_id for e in batch])
                mark_applied(s, [e.event_id for e in batch])
    finally:
        event.remove(engine, "before_cursor_execute", record)

    # Then: psycopg parses each statement once (the insert, the read of ids seen before, the
    # two marks and the applied read), not one text per batch size
    assert len(texts) == 5, sorted(texts)
