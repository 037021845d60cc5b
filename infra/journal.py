"""The ingest journal and the Kafka epochs: what makes a Kafka that lost its data lose nothing.

The relay journals every valid event in PostgreSQL (``ingest_event``) before it acknowledges
RabbitMQ, and the stream marks events applied once their effects are handed on. Kafka then
holds nothing that is not also here: when a broker comes back empty (a new *epoch*), the relay
re-drives every event not applied yet. The journal also answers three other questions:

- was this ``event_id`` seen before? (an upstream that publishes an event twice; the same id
  with other content is a conflict, dead-lettered by the relay);
- was this event already applied? (Kafka redelivers after a stream crash; the stream skips
  those, so a rating is never counted twice);
- what happened to this case before? (the stream rebuilds a case's state from its applied
  events when its table lost it).

Every function takes a session and leaves committing to the caller unless it says otherwise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from infra.db import binary_array, bound_array, conflict_insert, on_postgresql, one_of
from schemas.models import TZ, Checkpoint, IngestEvent, KafkaEpoch, utcnow

__all__ = [
    "Epoch",
    "JournalEntry",
    "JournalVerdict",
    "Journaled",
    "applied_ids",
    "begin_epoch",
    "current_epoch",
    "fingerprint",
    "get_checkpoint",
    "history",
    "journal",
    "journaled",
    "lock_epochs",
    "mark_applied",
    "mark_relayed",
    "oldest_unapplied",
    "purge_applied",
    "record_redriven",
    "set_checkpoint",
    "unapplied_page",
]

#: Kafka record header carrying the epoch an event was written in.
EPOCH_HEADER = "govnotify-epoch"


def fingerprint(body: bytes) -> str:
    """sha256 of an event's bytes, hex."""
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class JournalEntry:
    """One valid event as the relay writes it to Kafka."""

    event_id: str
    event_type: str
    family: str
    entity_key: str
    occurred_at: dt.datetime
    body: bytes


@dataclass
class JournalVerdict:
    """What to do with a batch of entries after journaling it.

    ``forward``: write to Kafka (new, or journaled before but never acknowledged by Kafka).
    ``duplicates``: the same event again, already in Kafka: nothing to do.
    ``conflicts``: an id seen before with other content: a dead letter.
    """

    forward: list[JournalEntry]
    duplicates: list[JournalEntry]
    conflicts: list[JournalEntry]


def _event_id_in(s: Session, event_ids: Collection[str]) -> ColumnElement[bool]:
    """``event_id`` is one of ``event_ids`` (:func:`infra.db.one_of`: one array parameter on
    PostgreSQL, so the relay's and the stream's statements keep one text for any batch)."""
    return one_of(s, IngestEvent.event_id, event_ids)  # type: ignore[no-any-return]


#: The journal's INSERT on PostgreSQL: one row per element of the array parameters. Its text
#: never changes, so psycopg parses it once and prepares it after a few batches; the multi-row
#: ``VALUES`` SQLAlchemy renders otherwise (``insertmanyvalues``, ~6,000 placeholders for 500
#: events, a different text for each batch size) cost the relay a sixth of its CPU in psycopg's
#: query parsing (docs/perf/where-the-time-goes.md). Same rows, same conflict rule, same
#: ``RETURNING`` as the SQLite statement in :func:`journal`.
_JOURNAL_UNNEST = text(
    """
    INSERT INTO ingest_event (event_id, event_type, family, entity_key, occurred_at, body,
                              fingerprint, received_at, relayed_at, epoch, applied_at, redriven)
    SELECT e.event_id, e.event_type, e.family, e.entity_key, e.occurred_at, e.body,
           e.fingerprint, :received_at, NULL, 0, NULL, 0
    FROM unnest(CAST(:event_ids AS text[]), CAST(:event_types AS text[]),
                CAST(:families AS text[]), CAST(:entity_keys AS text[]),
                CAST(:occurred_ats AS timestamptz[]), CAST(:bodies AS bytea[]),
                CAST(:fingerprints AS text[]))
         AS e(event_id, event_type, family, entity_key, occurred_at, body, fingerprint)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
).bindparams(
    # TZ refuses a naive time and stores UTC, as the ORM column does (occurred_ats: by
    # bound_array, element by element, sent binary).
    bindparam("received_at", type_=TZ),
)


def _insert_new(s: Session, entries: Collection[JournalEntry], now: dt.datetime) -> set[str]:
    """Insert each of ``entries`` (distinct ids) unless its id is journaled; the ids inserted."""
    if on_postgresql(s):
        # Binary arrays: as text arrays psycopg would quote and escape every element in Python.
        params = {
            "received_at": now,
            "event_ids": binary_array([e.event_id for e in entries]),
            "event_types": binary_array([e.event_type for e in entries]),
            "families": binary_array([e.family for e in entries]),
            "entity_keys": binary_array([e.entity_key for e in entries]),
            "occurred_ats": bound_array(TZ, [e.occurred_at for e in entries]),
            "bodies": binary_array([e.body for e in entries]),
            "fingerprints": binary_array([fingerprint(e.body) for e in entries]),
        }
        return set(s.scalars(_JOURNAL_UNNEST, params).all())
    table = IngestEvent.__table__
    rows = [
        {
            "event_id": e.event_id,
            "event_type": e.event_type,
            "family": e.family,
            "entity_key": e.entity_key,
            "occurred_at": e.occurred_at,
            "body": e.body,
            "fingerprint": fingerprint(e.body),
            "received_at": now,
            "relayed_at": None,
            "epoch": 0,
            "applied_at": None,
            "redriven": 0,
        }
        for e in entries
    ]
    stmt = (
        sqlite.insert(table)
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(table.c.event_id)
    )
    return set(s.scalars(stmt, rows).all())


def journal(s: Session, entries: Sequence[JournalEntry]) -> JournalVerdict:
    """Insert ``entries`` once each (by ``event_id``) and sort them into a verdict.

    An id the journal held before keeps what it holds: every copy in the batch is a duplicate
    or a conflict of that. A new id is journaled as its first copy in the batch; later copies are
    duplicates or conflicts of it. Commits.
    """
    verdict = JournalVerdict([], [], [])
    known: dict[str, tuple[str, dt.datetime | None]] = {}
    first: dict[str, JournalEntry] = {}
    repeats: list[JournalEntry] = []
    for entry in entries:
        if entry.event_id in first:
            repeats.append(entry)
        else:
            first[entry.event_id] = entry
    if first:
        created = _insert_new(s, first.values(), utcnow())
        seen = [i for i in first if i not in created]
        if seen:
            known = {
                row.event_id: (row.fingerprint, row.relayed_at)
                for row in s.execute(
                    select(
                        IngestEvent.event_id, IngestEvent.fingerprint, IngestEvent.relayed_at
                    ).where(_event_id_in(s, seen))
                )
            }
        for event_id, entry in first.items():
            if event_id in created:
                verdict.forward.append(entry)
                continue
            stored = known.get(event_id)
            if stored is None:
                # Purged between the insert and the read: journal it as new next time.
                verdict.forward.append(entry)
            elif stored[0] != fingerprint(entry.body):
                verdict.conflicts.append(entry)
            elif stored[1] is None:
                # Journaled by an attempt whose Kafka write failed: it is not in Kafka yet.
                verdict.forward.append(entry)
            else:
                verdict.duplicates.append(entry)
        s.commit()
    for entry in repeats:
        # Compared with what the journal holds for the id: stored before this batch (the batch's
        # first copy may be the conflicting one), else the batch's first copy, just stored.
        stored = known.get(entry.event_id)
        kept = stored[0] if stored is not None else fingerprint(first[entry.event_id].body)
        if kept == fingerprint(entry.body):
            verdict.duplicates.append(entry)
        else:
            verdict.conflicts.append(entry)
    return verdict


def mark_relayed(s: Session, event_ids: Collection[str], epoch: int) -> None:
    """Kafka acknowledged these events, written in ``epoch``. Commits."""
    if not event_ids:
        return
    s.execute(
        update(IngestEvent)
        .where(_event_id_in(s, event_ids))
        .values(relayed_at=utcnow(), epoch=epoch)
        .execution_options(synchronize_session=False)
    )
    s.commit()


def applied_ids(s: Session, event_ids: Collection[str]) -> set[str]:
    """Those of ``event_ids`` the stream has applied already."""
    if not event_ids:
        return set()
    return set(
        s.scalars(
            select(IngestEvent.event_id).where(
                _event_id_in(s, event_ids), IngestEvent.applied_at.is_not(None)
            )
        ).all()
    )


@dataclass(frozen=True)
class Journaled:
    """What the journal holds of one event, for the stream that reads it back from Kafka."""

    #: sha256 of the bytes the relay validated and wrote to Kafka (:func:`fingerprint`).
    fingerprint: str
    #: The stream has handed its effects on.
    applied: bool


def journaled(s: Session, event_ids: Collection[str]) -> dict[str, Journaled]:
    """Those of ``event_ids`` the journal holds: their fingerprints and whether applied.

    A record whose bytes have the fingerprint of its id is what the relay validated: the
    stream may take it as it is (:mod:`streams.relayed`). Anything else is read the long way.
    """
    if not event_ids:
        return {}
    rows = s.execute(
        select(
            IngestEvent.event_id, IngestEvent.fingerprint, IngestEvent.applied_at.is_not(None)
        ).where(_event_id_in(s, event_ids))
    )
    return {event_id: Journaled(digest, bool(applied)) for event_id, digest, applied in rows}


def mark_applied(s: Session, event_ids: Collection[str]) -> int:
    """The stream handed these events' effects on; returns how many were marked. Commits."""
    if not event_ids:
        return 0
    result = s.execute(
        update(IngestEvent)
        .where(_event_id_in(s, event_ids), IngestEvent.applied_at.is_(None))
        .values(applied_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    s.commit()
    return int(result.rowcount or 0)


def unapplied_page(
    s: Session, after: tuple[dt.datetime, str] | None, limit: int
) -> list[IngestEvent]:
    """The next ``limit`` events not applied yet, oldest first, after the ``after`` position
    (``(received_at, event_id)`` of the last row of the previous page)."""
    stmt = select(IngestEvent).where(IngestEvent.applied_at.is_(None))
    if after is not None:
        received_at, event_id = after
        stmt = stmt.where(
            (IngestEvent.received_at > received_at)
            | ((IngestEvent.received_at == received_at) & (IngestEvent.event_id > event_id))
        )
    return list(
        s.scalars(stmt.order_by(IngestEvent.received_at, IngestEvent.event_id).limit(limit))
    )


def history(
    s: Session, families: Iterable[str], keys: Collection[str]
) -> dict[str, list[tuple[str, bytes]]]:
    """Applied events of each key in ``families``, oldest first: ``key → [(type, body)]``."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    if not keys:
        return out
    rows = s.execute(
        select(IngestEvent.entity_key, IngestEvent.event_type, IngestEvent.body)
        .where(
            IngestEvent.family.in_(list(families)),
            IngestEvent.entity_key.in_(list(keys)),
            IngestEvent.applied_at.is_not(None),
        )
        .order_by(IngestEvent.occurred_at, IngestEvent.event_id)
    )
    for key, event_type, body in rows:
        out.setdefault(key, []).append((event_type, bytes(body)))
    return out


def oldest_unapplied(s: Session) -> dt.datetime | None:
    """When the oldest event not applied yet was received; None when all are applied."""
    return s.execute(
        select(func.min(IngestEvent.received_at)).where(IngestEvent.applied_at.is_(None))
    ).scalar_one()


def purge_applied(s: Session, older_than: dt.datetime, *, batch: int = 5000) -> int:
    """Delete events applied before ``older_than``, ``batch`` at a time; returns how many.
    Commits after each batch."""
    total = 0
    while True:
        ids = s.scalars(
            select(IngestEvent.event_id).where(IngestEvent.applied_at < older_than).limit(batch)
        ).all()
        if not ids:
            return total
        s.execute(delete(IngestEvent).where(IngestEvent.event_id.in_(ids)))
        s.commit()
        total += len(ids)


# ---- Kafka epochs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Epoch:
    """One life of the Kafka data: its generation (counting up) and a random nonce."""

    generation: int
    nonce: str

    def marker(self) -> str:
        return f"{self.generation}:{self.nonce}"

    @classmethod
    def parse(cls, marker: str) -> Epoch | None:
        generation, _, nonce = marker.partition(":")
        if not generation.isdigit() or not nonce:
            return None
        return cls(int(generation), nonce)


def lock_epochs(s: Session) -> None:
    """Serialise epoch checks of concurrent relays until the transaction ends (PostgreSQL;
    SQLite serialises writers itself)."""
    if on_postgresql(s):
        s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('kafka_epoch', 0))"))


def current_epoch(s: Session) -> Epoch | None:
    """The newest epoch, or None before the relay first wrote its marker."""
    row = s.execute(
        select(KafkaEpoch.generation, KafkaEpoch.nonce)
        .order_by(KafkaEpoch.generation.desc())
        .limit(1)
    ).first()
    return None if row is None else Epoch(row.generation, row.nonce)


def begin_epoch(s: Session, previous: Epoch | None) -> Epoch:
    """Record a new epoch after ``previous`` (not committed: the caller commits once the
    marker is in Kafka)."""
    epoch = Epoch((previous.generation if previous else 0) + 1, secrets.token_hex(8))
    s.add(
        KafkaEpoch(
            generation=epoch.generation,
            nonce=epoch.nonce,
            reason="first" if previous is None else "reset",
        )
    )
    return epoch


def record_redriven(s: Session, generation: int, count: int) -> None:
    """Add ``count`` re-driven events to epoch ``generation``. Commits."""
    s.execute(
        update(KafkaEpoch)
        .where(KafkaEpoch.generation == generation)
        .values(redriven=KafkaEpoch.redriven + count)
    )
    s.commit()


# ---- checkpoints -------------------------------------------------------------------------------
def get_checkpoint(s: Session, name: str) -> str | None:
    row = s.get(Checkpoint, name)
    return None if row is None else row.value


def set_checkpoint(s: Session, name: str, value: str, *, only_if: str | None = None) -> bool:
    """Set checkpoint ``name``; with ``only_if``, only when it currently holds that value (or
    does not exist when ``only_if`` is ``""``). True if this call set it. Commits."""
    now = utcnow()
    table = Checkpoint.__table__
    if only_if is None:
        stmt = conflict_insert(s)(table).values(name=name, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": value, "updated_at": now}
        )
        s.execute(stmt)
        s.commit()
        return True
    if only_if == "":
        created = s.execute(
            conflict_insert(s)(table)
            .values(name=name, value=value, updated_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(table.c.name)
        ).first()
        s.commit()
        return created is not None
    result = s.execute(
        update(Checkpoint)
        .where(Checkpoint.name == name, Checkpoint.value == only_if)
        .values(value=value, updated_at=now)
    )
    s.commit()
    return result.rowcount == 1
