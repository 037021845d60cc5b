"""Kafka epochs: noticing that Kafka lost its data, and giving it back what it lost.

The embedded Tansu keeps everything in memory: killed or restarted, it comes back without
topics, offsets or changelogs. A real cluster can lose data too (a topic deleted by hand, a
cluster rebuilt). Every event the relay accepted is in the journal (``ingest_event``) until the
stream has applied it, so nothing is lost as long as someone notices and re-drives it.

The relay writes a marker record (``<generation>:<nonce>``) to ``<ns>.epoch`` and records the
same epoch in ``kafka_epoch``. Every ``kafka_epoch_check_s`` (and at start) it reads the marker
back. Missing or different: Kafka's data is not the data we wrote, a new epoch begins (one
relay at a time, under an advisory lock), the topics are created again, and every journaled
event not applied yet that was written in an older epoch is written again, tagged with the new
epoch. The same query runs at every check, so a re-drive cut short by a crash resumes, and an
event a relay wrote in the old epoch after the broker came back (before it noticed) is not
forgotten either. Re-driven events the stream had in fact applied are harmless: every effect
carries an idempotency key, and the stream skips events the journal says it applied.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select, update

from infra.db import session
from infra.journal import (
    EPOCH_HEADER,
    Epoch,
    begin_epoch,
    current_epoch,
    lock_epochs,
    record_redriven,
)
from infra.services import create_topics, topic_configs
from producers.kafka import KafkaSink
from schemas.models import IngestEvent, utcnow

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["EpochKeeper", "redrive", "redrive_stuck"]

log = logging.getLogger("govnotify.epochs")

EPOCH = Gauge("govnotify_kafka_epoch", "Generation of the Kafka data the relay writes into.")
RESETS = Counter(
    "govnotify_kafka_resets_total",
    "Times the relay found Kafka without its epoch marker (the broker lost its data).",
)
REDRIVEN = Counter(
    "govnotify_ingest_redriven_total",
    "Journaled events written to Kafka again because the epoch they were written in is gone.",
)

#: Events re-driven per Kafka round trip.
REDRIVE_PAGE = 1000


class EpochKeeper:
    """The relay's view of the Kafka epoch; :meth:`check` it now and then."""

    def __init__(self, settings: Settings, sink: KafkaSink) -> None:
        self.settings = settings
        self.sink = sink
        self.current: Epoch | None = None
        self._checked_at = 0.0

    def due(self) -> bool:
        return time.monotonic() - self._checked_at >= self.settings.kafka_epoch_check_s

    def check(self, keepalive: Callable[[], object] = lambda: None) -> Epoch | None:
        """Make sure Kafka holds our epoch (beginning a new one if not) and that no event of an
        older epoch is missing from it. Never raises: a Kafka or database that cannot be
        reached now is checked again at the next interval."""
        self._checked_at = time.monotonic()
        try:
            epoch, reset = self._ensure()
            self.current = epoch
            EPOCH.set(epoch.generation)
            if reset:
                RESETS.inc()
            self._redrive(epoch, keepalive)
        except Exception:
            log.warning("checking the Kafka epoch failed; trying again", exc_info=True)
        return self.current

    def _ensure(self) -> tuple[Epoch, bool]:
        s = self.settings
        with session(s) as db:
            lock_epochs(db)
            known = current_epoch(db)
            seen = self._marker()
            if known is not None and seen == known:
                db.rollback()
                return known, False
            # Gone (or never written): the broker's data is not what we wrote. Make sure the
            # topics are there with the right partitions before anything is written again.
            create_topics(
                s.kafka_bootstrap,
                s.topics,
                s.kafka_partitions,
                replication_factor=s.topic_replication_factor,
                min_insync_replicas=s.topic_min_insync_replicas,
                topic_configs=topic_configs(s),
                align_existing=False,
            )
            epoch = begin_epoch(db, known)
            self.sink.write_marker(s.epoch_topic, epoch.marker().encode())
            db.commit()
        if known is None:
            log.info("Kafka epoch %d begins (first marker)", epoch.generation)
        else:
            log.warning(
                "Kafka lost its data (epoch marker %s, expected %s): epoch %d begins; events "
                "not yet applied are re-driven from the journal",
                seen.marker() if seen else "missing",
                known.marker(),
                epoch.generation,
            )
        return epoch, known is not None

    def _marker(self) -> Epoch | None:
        raw = self.sink.read_last(self.settings.epoch_topic)
        if raw is None:
            return None
        try:
            return Epoch.parse(raw.decode())
        except UnicodeDecodeError:
            return None

    def _redrive(self, epoch: Epoch, keepalive: Callable[[], object]) -> int:
        """Write again every event relayed in an older epoch and not applied; returns how many."""
        return redrive(
            self.settings,
            self.sink,
            epoch,
            IngestEvent.epoch < epoch.generation,
            keepalive=keepalive,
        )


def redrive(
    settings: Settings,
    sink: KafkaSink,
    epoch: Epoch,
    *where: Any,
    keepalive: Callable[[], object] = lambda: None,
) -> int:
    """Write again, tagged with ``epoch``, every journaled event relayed and not applied that
    matches ``where``, oldest first, a page at a time; returns how many."""
    headers = [(EPOCH_HEADER, str(epoch.generation).encode())]
    total = 0
    after: tuple[dt.datetime, str] | None = None
    while True:
        query = select(IngestEvent).where(
            IngestEvent.applied_at.is_(None), IngestEvent.relayed_at.is_not(None), *where
        )
        if after is not None:
            query = query.where(
                (IngestEvent.received_at > after[0])
                | ((IngestEvent.received_at == after[0]) & (IngestEvent.event_id > after[1]))
            )
        with session(settings) as db:
            page = list(
                db.scalars(
                    query.order_by(IngestEvent.received_at, IngestEvent.event_id).limit(
                        REDRIVE_PAGE
                    )
                )
            )
        if not page:
            break
        sink.send_batch(
            [(settings.topic(e.family), e.entity_key.encode(), bytes(e.body)) for e in page],
            headers=headers,
        )
        with session(settings) as db:
            db.execute(
                update(IngestEvent)
                .where(IngestEvent.event_id.in_([e.event_id for e in page]))
                .values(
                    epoch=epoch.generation,
                    relayed_at=utcnow(),
                    redriven=IngestEvent.redriven + 1,
                )
            )
            db.commit()
        total += len(page)
        after = (page[-1].received_at, page[-1].event_id)
        REDRIVEN.inc(len(page))
        keepalive()  # the relay's AMQP connection answers heartbeats meanwhile
    if total:
        with session(settings) as db:
            record_redriven(db, epoch.generation, total)
        log.warning("re-drove %d events into Kafka epoch %d", total, epoch.generation)
    return total


def redrive_stuck(settings: Settings, older_than: dt.timedelta, *, dry_run: bool = False) -> int:
    """``govnotify journal redrive``: write again every accepted event the stream has not
    applied although it was relayed more than ``older_than`` ago, whatever its epoch.

    For the operator when GovnotifyEventsNotApplied fires and the stream runs: events the
    stream applied meanwhile are skipped by it, and every effect is keyed, so a re-drive can
    only repeat work, never send twice. Returns how many (with ``dry_run``: would be).
    """
    cutoff = utcnow() - older_than
    condition = IngestEvent.relayed_at < cutoff
    if dry_run:
        with session(settings) as db:
            return int(
                db.execute(
                    select(func.count())
                    .select_from(IngestEvent)
                    .where(
                        IngestEvent.applied_at.is_(None),
                        IngestEvent.relayed_at.is_not(None),
                        condition,
                    )
                ).scalar_one()
            )
    with session(settings) as db:
        epoch = current_epoch(db)
    if epoch is None:
        return 0  # nothing was ever relayed
    sink = KafkaSink(settings.kafka_bootstrap)
    try:
        return redrive(settings, sink, epoch, condition)
    finally:
        sink.close()
