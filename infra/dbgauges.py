"""Gauges read from the database at scrape time: what is pending, open, overdue, unacknowledged.

Counters say what happened; these say what is waiting now, which only the database knows. A
prometheus_client custom collector runs a handful of grouped queries when Prometheus scrapes
(cached for a few seconds, so several scrapers cost one round), on a connection of its own with
bounded connect and statement time. One process exposes them: the scheduler, a singleton that
already works on the database. ``register_database_gauges(settings)`` adds them to a registry.

Labels are bounded: statuses and stages are fixed words; departments and service points come
from the staff directory and the events (a few dozen in a district). A label never carries a
phone, case or citizen id, and if an upstream system ever put one in a department field, the
value is shown as ``redacted``; beyond ``MAX_LABEL_VALUES`` values the rest are summed as
``other``.

Time bases: one clock. Every row stamp (``created_at``, ``updated_at``, ``sent_at``, ``claimed_at``)
and every deadline, due time and alert time is written by the settable clock of the process
that wrote it (``GOVNOTIFY_NOW``/``GOVNOTIFY_NOW_EPOCH``; the wall clock in production), and
these gauges read the same clock, so "oldest" and "overdue" agree with the rest of the pipeline
in the demo and the tests.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, or_, select

from infra.clock import Clock
from schemas.models import (
    CallbackTask,
    CallListEntry,
    DeadLetter,
    IngestEvent,
    Notification,
    NotificationStatus,
    RectificationTicket,
    StaffAlert,
    utcnow,
)

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry
    from sqlalchemy import Engine
    from sqlalchemy.engine import Connection

    from infra.settings import Settings

__all__ = [
    "CACHE_S",
    "DEAD_LETTER_STAGES",
    "GREEN_CHANNEL_WINDOW_S",
    "MAX_LABEL_VALUES",
    "PENDING_STATUSES",
    "DatabaseGauges",
    "reading_engine",
    "register_database_gauges",
]

log = logging.getLogger("govnotify.dbgauges")

#: A scrape within this many seconds of the last query gets the same numbers.
CACHE_S = 5.0
#: Series per label beyond this are summed into ``other``.
MAX_LABEL_VALUES = 100
#: Green-channel alerts older than one service day no longer count as "waiting".
GREEN_CHANNEL_WINDOW_S = 24 * 3600
#: Statuses of a notification not yet final (sent: accepted, waiting for the provider's word).
PENDING_STATUSES = (
    NotificationStatus.CREATED.value,
    NotificationStatus.SENDING.value,
    NotificationStatus.SENT.value,
)
#: Dead-letter stages, always shown (0 when none is open) so alert rules have a series.
DEAD_LETTER_STAGES = ("ingest", "delivery", "job", "callback", "outcome")
#: Ids and phone numbers are long digit runs; department and service point names are not.
_PERSONAL = re.compile(r"\d{7,}")

_HELP = {
    "govnotify_notifications_pending": (
        "Notifications not yet final, by status (created: not yet sent, deferred ones "
        "included; sending: claimed, provider call under way; sent: waiting for the provider's "
        "final status).",
        ["status"],
    ),
    "govnotify_notifications_oldest_pending_seconds": (
        "Age of the oldest notification in each pending status: created since it became due "
        "(deferred ones from their not_before, future ones not counted), sending since its "
        "claim, sent since the provider accepted it. 0 when there is none.",
        ["status"],
    ),
    "govnotify_rectification_tickets_open": (
        "Rectification tickets (整改) still open, by department.",
        ["department"],
    ),
    "govnotify_rectification_tickets_overdue": (
        "Open rectification tickets past their working-day deadline, by department.",
        ["department"],
    ),
    "govnotify_green_channel_alerts_unacknowledged": (
        "Green-channel alerts of the last 24 hours no staff member has acknowledged, by "
        "service point (escalated ones included).",
        ["service_point"],
    ),
    "govnotify_green_channel_oldest_unacknowledged_seconds": (
        "How long the oldest unacknowledged green-channel alert of the last 24 hours has "
        "waited since its event; 0 when none waits.",
        [],
    ),
    "govnotify_callback_tasks_overdue": (
        "Follow-up callback tasks (跟踪回访) still open past their due time, by department.",
        ["department"],
    ),
    "govnotify_call_list_entries_open": (
        "Renewal call-list entries (续证提醒电话) not called yet, by issuing department.",
        ["department"],
    ),
    "govnotify_dead_letters_open": (
        "Dead letters not replayed yet, by stage (ingest, delivery, job, callback).",
        ["stage"],
    ),
    "govnotify_ingest_unapplied_events": (
        "Events the relay accepted (journaled) that the stream has not applied yet: Kafka's "
        "backlog, and what a Kafka that lost its data would get re-driven.",
        [],
    ),
    "govnotify_ingest_oldest_unapplied_seconds": (
        "How long the oldest accepted event has waited for the stream to apply it; 0 when "
        "none waits.",
        [],
    ),
    "govnotify_database_gauges_up": (
        "1 if the last reading of the database gauges succeeded, else 0 (the others then "
        "keep their previous values).",
        [],
    ),
}


def _label(value: object) -> str:
    text = str(value) if value is not None else ""
    if not text:
        return "unknown"
    return "redacted" if _PERSONAL.search(text) else text[:100]


def _bounded(values: dict[str, float]) -> dict[str, float]:
    """At most MAX_LABEL_VALUES series: the largest kept, the rest summed as ``other``."""
    if len(values) <= MAX_LABEL_VALUES:
        return values
    ranked = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[: MAX_LABEL_VALUES - 1])
    kept["other"] = kept.get("other", 0.0) + sum(v for _, v in ranked[MAX_LABEL_VALUES - 1 :])
    return kept


def _age(now: dt.datetime, since: dt.datetime | None) -> float:
    if since is None:
        return 0.0
    if since.tzinfo is None:  # SQLite hands back naive UTC from aggregate functions
        since = since.replace(tzinfo=dt.UTC)
    return max(0.0, (now - since).total_seconds())


def _as_datetime(value: object) -> dt.datetime | None:
    """min()/max() of a timestamp: a datetime on PostgreSQL, a string on SQLite."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


@functools.cache
def reading_engine(url: str) -> Engine:
    """An engine for short reads (gauges, ``top``): no pool, bounded connect and query time."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # A scrape must not hang on a stuck database: bounded connect and statement time.
        connect_args = {"connect_timeout": 3, "options": "-c statement_timeout=5000"}
    elif url.startswith("sqlite"):
        connect_args = {"timeout": 5}
    # NullPool: one short connection per reading, nothing held between scrapes.
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


class DatabaseGauges(Collector):
    """A custom collector: the gauges above, read from the database, cached ``cache_s``."""

    def __init__(
        self, settings: Settings, *, cache_s: float = CACHE_S, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.cache_s = cache_s
        self.clock = clock or Clock.from_settings(settings)
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._values: dict[str, dict[tuple[str, ...], float]] = {}
        self._up = 0.0
        # Label values seen before stay at 0 when their rows are gone, so a series ends at 0
        # instead of vanishing (an alert on it resolves rather than going stale).
        self._seen: dict[str, set[tuple[str, ...]]] = {name: set() for name in _HELP}

    # ---- prometheus_client protocol ------------------------------------------------------
    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The families without values: registering must not query the database."""
        return [self._family(name) for name in _HELP]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.refresh()
        for name in _HELP:
            family = self._family(name)
            if name == "govnotify_database_gauges_up":
                family.add_metric([], self._up)
            else:
                for labels, value in sorted(self._values.get(name, {}).items()):
                    family.add_metric(list(labels), value)
            yield family

    # ---- reading -------------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> None:
        """Query the database unless the last reading is younger than ``cache_s``."""
        with self._lock:
            if not force and time.monotonic() - self._read_at < self.cache_s:
                return
            try:
                with reading_engine(self.settings.resolved_database_url).connect() as conn:
                    values = self.read(conn)
            except Exception as exc:
                # A scrape with the database down still answers: the other metrics of the
                # scheduler matter more then, and _up says these are stale.
                log.warning("reading the database gauges failed: %s", type(exc).__name__)
                self._up = 0.0
            else:
                self._values = self._with_seen(values)
                self._up = 1.0
            self._read_at = time.monotonic()

    def read(self, conn: Connection) -> dict[str, dict[tuple[str, ...], float]]:
        """Every gauge's values from one connection: {metric: {label values: value}}."""
        real_now = utcnow()
        now = self.clock.utcnow()
        out: dict[str, dict[tuple[str, ...], float]] = {}

        # Notifications not yet final.
        n = Notification
        counts = dict(
            conn.execute(
                select(n.status, func.count())
                .where(n.status.in_(PENDING_STATUSES))
                .group_by(n.status)
            ).all()
        )
        out["govnotify_notifications_pending"] = {
            (status,): float(counts.get(status, 0)) for status in PENDING_STATUSES
        }
        first_created = conn.execute(
            select(func.min(n.created_at)).where(
                n.status == NotificationStatus.CREATED.value, n.not_before.is_(None)
            )
        ).scalar_one()
        # Deferred rows (quiet hours, the cap) wait on purpose: they count from their
        # not_before (the clock's time, as the policy set it), and not before it passed.
        first_due = conn.execute(
            select(func.min(n.not_before)).where(
                n.status == NotificationStatus.CREATED.value, n.not_before <= now
            )
        ).scalar_one()
        oldest = {
            NotificationStatus.CREATED.value: max(
                _age(real_now, _as_datetime(first_created)), _age(now, _as_datetime(first_due))
            ),
            NotificationStatus.SENDING.value: _age(
                real_now,
                _as_datetime(
                    conn.execute(
                        select(func.min(n.updated_at)).where(
                            n.status == NotificationStatus.SENDING.value
                        )
                    ).scalar_one()
                ),
            ),
            NotificationStatus.SENT.value: _age(
                real_now,
                _as_datetime(
                    conn.execute(
                        select(func.min(func.coalesce(n.sent_at, n.updated_at))).where(
                            n.status == NotificationStatus.SENT.value
                        )
                    ).scalar_one()
                ),
            ),
        }
        out["govnotify_notifications_oldest_pending_seconds"] = {
            (status,): age for status, age in oldest.items()
        }

        # Rectification tickets.
        t = RectificationTicket
        overdue = or_(t.overdue_at.is_not(None), t.deadline_at < now)
        open_by, overdue_by = {}, {}
        for department, total, late in conn.execute(
            select(t.department, func.count(), func.count().filter(overdue))
            .where(t.status == "open")
            .group_by(t.department)
        ):
            open_by[_label(department)] = open_by.get(_label(department), 0.0) + total
            overdue_by[_label(department)] = overdue_by.get(_label(department), 0.0) + late
        out["govnotify_rectification_tickets_open"] = _keyed(_bounded(open_by))
        out["govnotify_rectification_tickets_overdue"] = _keyed(_bounded(overdue_by))

        # Green-channel alerts waiting for an acknowledgement.
        a = StaffAlert
        waiting = and_(
            a.acknowledged_at.is_(None),
            a.event_at >= now - dt.timedelta(seconds=GREEN_CHANNEL_WINDOW_S),
        )
        by_point: dict[str, float] = {}
        for point, total in conn.execute(
            select(a.service_point_id, func.count()).where(waiting).group_by(a.service_point_id)
        ):
            by_point[_label(point)] = by_point.get(_label(point), 0.0) + total
        out["govnotify_green_channel_alerts_unacknowledged"] = _keyed(_bounded(by_point))
        first = conn.execute(select(func.min(a.event_at)).where(waiting)).scalar_one()
        out["govnotify_green_channel_oldest_unacknowledged_seconds"] = {
            (): _age(now, _as_datetime(first))
        }

        # Follow-up callbacks past their due time.
        c = CallbackTask
        late_calls: dict[str, float] = {}
        for department, total in conn.execute(
            select(c.department, func.count())
            .where(c.status == "open", c.due_at < now)
            .group_by(c.department)
        ):
            late_calls[_label(department)] = late_calls.get(_label(department), 0.0) + total
        out["govnotify_callback_tasks_overdue"] = _keyed(_bounded(late_calls))

        # Renewal calls staff still owe.
        cl = CallListEntry
        calls: dict[str, float] = {}
        for department, total in conn.execute(
            select(cl.issuing_department, func.count())
            .where(cl.status == "open")
            .group_by(cl.issuing_department)
        ):
            calls[_label(department)] = calls.get(_label(department), 0.0) + total
        out["govnotify_call_list_entries_open"] = _keyed(_bounded(calls))

        # Dead letters nobody replayed yet.
        d = DeadLetter
        letters: dict[str, float] = dict.fromkeys(DEAD_LETTER_STAGES, 0.0)
        for stage, total in conn.execute(
            select(d.stage, func.count()).where(d.status == "open").group_by(d.stage)
        ):
            letters[_label(stage)] = letters.get(_label(stage), 0.0) + total
        out["govnotify_dead_letters_open"] = _keyed(_bounded(letters))

        # Events accepted but not applied by the stream yet (the ingest journal).
        i = IngestEvent
        waiting_events, first_received = conn.execute(
            select(func.count(), func.min(i.received_at)).where(i.applied_at.is_(None))
        ).one()
        out["govnotify_ingest_unapplied_events"] = {(): float(waiting_events)}
        out["govnotify_ingest_oldest_unapplied_seconds"] = {
            (): _age(real_now, _as_datetime(first_received))
        }
        return out

    # ---- helpers -------------------------------------------------------------------------
    def _with_seen(
        self, values: dict[str, dict[tuple[str, ...], float]]
    ) -> dict[str, dict[tuple[str, ...], float]]:
        for name, series in values.items():
            seen = self._seen.setdefault(name, set())
            if len(seen) < MAX_LABEL_VALUES:
                seen.update(list(series)[: MAX_LABEL_VALUES - len(seen)])
            for labels in seen:
                series.setdefault(labels, 0.0)
        return values

    @staticmethod
    def _family(name: str) -> GaugeMetricFamily:
        doc, labels = _HELP[name]
        return GaugeMetricFamily(name, doc, labels=labels)


def _keyed(values: dict[str, float]) -> dict[tuple[str, ...], float]:
    return {(key,): float(value) for key, value in values.items()}


def register_database_gauges(
    settings: Settings, registry: CollectorRegistry = REGISTRY, *, cache_s: float = CACHE_S
) -> DatabaseGauges:
    """Add the database gauges to ``registry`` (the scheduler's default registry)."""
    collector = DatabaseGauges(settings, cache_s=cache_s)
    registry.register(collector)
    return collector
