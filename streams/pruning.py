"""Forgetting stream state nobody needs any more, so the tables do not grow for ever.

A city's case table gains every case ever handled: in memory, and replayed from the changelog
on every restart. An entry is dropped once the rules can no longer need it
(``prunable_case``), by writing a tombstone to the table's changelog, so a restarted or
rebalanced worker does not recover it either. (Licenses are not stream state at all: the
registry lives in PostgreSQL.)

A table writes its changelog to the partition of the current event, and a timer has none. So
every entry carries the partition it was written from (``PARTITION``), and only partitions this
worker actively owns are pruned: the in-memory store keeps entries of partitions a rebalance
took away, and a tombstone for one of those could delete the new owner's fresher entry.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    import faust

__all__ = [
    "PARTITION",
    "STREAM_TABLE_ENTRIES",
    "STREAM_TABLE_PRUNED",
    "owned_partitions",
    "prunable_case",
    "prune",
    "record_entries",
    "stamp",
]

log = logging.getLogger("govnotify.streams.pruning")

#: The key, in every table entry, of the partition the entry was written from.
PARTITION = "_partition"

STREAM_TABLE_ENTRIES = Gauge(
    "govnotify_stream_table_entries",
    "Entries held in a stream table on this worker (after its last batch or scan).",
    ["table"],
)
STREAM_TABLE_PRUNED = Counter(
    "govnotify_stream_table_pruned_total",
    "Stream table entries forgotten because no rule can need them any more.",
    ["table"],
)


def record_entries(table: faust.Table) -> None:
    """Export the table's size. Call it on the stream's event loop only.

    Not a scrape-time callback: the metrics server's thread reading ``table.data`` before the
    table made its store would create the store, and bind the table, to an event loop of that
    thread; the table's tasks then never run and the stream hangs on SIGTERM until killed.
    """
    STREAM_TABLE_ENTRIES.labels(table.name).set(len(table.data))


def stamp(state: dict[str, Any], partition: int) -> dict[str, Any]:
    """``state`` as stored: with the partition it is written from."""
    return {**state, PARTITION: partition}


def prunable_case(state: dict[str, Any], now: dt.datetime, keep_days: int) -> bool:
    """No event for the case in ``keep_days``: its survey and alerts are long decided.

    A replayed event after that starts jobs whose idempotency keys the workers already hold.
    """
    last = state.get("last_event_at")
    if not last:
        return False
    return dt.datetime.fromisoformat(last) < now - dt.timedelta(days=keep_days)


def owned_partitions(app: faust.App, topic: str) -> set[int]:
    """Partitions of ``topic`` this worker is the active owner of."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


def prune(
    table: faust.Table,
    owned: Collection[int],
    prunable: Callable[[dict[str, Any]], bool],
) -> int:
    """Forget the entries of ``owned`` partitions that are ``prunable``; returns how many.

    The tombstone goes to the entry's changelog partition first, then the entry leaves the
    local store without a second changelog write (``table.data``, not ``del table[key]``,
    which needs a current event to find the partition).
    """
    doomed = [
        (key, state[PARTITION])
        for key, state in list(table.data.items())
        if state and state.get(PARTITION) in owned and prunable(state)
    ]
    for key, partition in doomed:
        table.send_changelog(partition, key, None, value_serializer="raw")
        del table.data[key]
    name = table.name
    if doomed:
        STREAM_TABLE_PRUNED.labels(name).inc(len(doomed))
        log.info("%s: forgot %d entries no rule needs any more", name, len(doomed))
    record_entries(table)
    return len(doomed)
