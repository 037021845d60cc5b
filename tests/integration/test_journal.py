"""The ingest journal's verdict on repeats: what it holds for an id is what a copy is judged by."""

from __future__ import annotations

import datetime as dt

import pytest

from infra.db import session
from infra.journal import JournalEntry, journal, mark_relayed
from infra.settings import load_settings

pytestmark = pytest.mark.integration

AT = dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC)


def entry(event_id: str, body: bytes) -> JournalEntry:
    return JournalEntry(
        event_id=event_id,
        event_type="license.issued",
        family="licenses",
        entity_key="LIC-1",
        occurred_at=AT,
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
    database_url: str, tmp_path, before: list[bytes], batch: list[bytes], expected: dict
) -> None:
    # Given the journal holding ``before`` for event E-1 (relayed to Kafka)
    settings = load_settings(data_dir=tmp_path / "data", database_url=database_url)
    with session(settings) as s:
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
