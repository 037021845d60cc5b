"""Retention: personal data is removed once its purpose is served; the statistics stay.

``govnotify retention purge [--days N] [--dry-run]`` (default ``GOVNOTIFY_RETENTION_DAYS``, 30)
scrubs, in rows older than the cut-off, every column that holds a person's data, and keeps what
the anonymous statistics need (flow, status, timestamps, segments, provider, error code,
department, rating). Rows are updated, never deleted: counts per flow and status are the same
before and after. Each table is done in batches (one short transaction each), and a second run
finds nothing left to do.

The scheduler runs it every night at ``GOVNOTIFY_RETENTION_PURGE_AT`` (02:30 local), once per
local day with a checkpoint (``workers.scheduler.purge_if_due``): a restart does not repeat a
night, a missed night is caught up when the scheduler is back. The same retention reaches the
brokers: ``govnotify services up`` gives the Kafka event topics ``retention.ms`` and the
RabbitMQ dead-letter queues a ``message-ttl`` of ``GOVNOTIFY_RETENTION_DAYS``
(``infra.services``), so raw rejected events do not outlive the rows scrubbed here.

What is scrubbed, table by table (every table of ``schemas.models`` was checked):

==================== ========================================== ===============================
table                columns                                    which rows
==================== ========================================== ===============================
notification         recipient, body, template_params → NULL   created before the cut-off, no
                                                                longer waiting to be sent
call_list_entry      holder_name, holder_mobile, outcome → NULL created before the cut-off
rectification_ticket citizen_mobile → NULL, comment → ''        closed before the cut-off (an
                                                                open ticket still has to tell
                                                                the citizen its outcome)
callback_task        outcome → NULL (notes of the call)         completed before the cut-off
scheduled_job        payload (the job, with the applicant's)    handed over or cancelled before
                     → a marker                                 the cut-off (pending jobs run)
dead_letter          raw → b'', detail → marker                 last seen before the cut-off
license_record       holder_name, holder_mobile → ''            expired (or revoked) before the
                                                                cut-off: no reminder is left
ingest_event         the whole row is deleted                   applied before now minus
                                                                ``journal_keep_days``
send_pace            the whole row is deleted (no personal      a release spread
                     data: the spread of one release)           (``release:…``) whose last slot
                                                                is a day past
==================== ========================================== ===============================

The journal (``ingest_event``) is the one table whose rows go: each row is a whole upstream
event, kept only as long as it can still be needed to re-drive Kafka, to recognise an
upstream's repeat, or to rebuild a case's stream state.

Kept on purpose:

* ``opt_out`` and ``suppression`` are the citizen's own standing instructions (a refusal, a
  number that must not be texted): deleting them would make us text people who said no. They
  end when the citizen lifts them, not by age.
* ``license_record`` keeps its holder while the license lives: the reminders need them.
* ``evaluation_record``, ``staff_alert``, ``notification_status_event`` hold no personal data
  (license and case ids, departments, ratings, provider references); nor does
  ``outcome_report`` (event and notification ids, flow, status, a reason code).
* ``callback_task.owner_name`` is the staff member's name as the owner of a work item, a
  business record of the centre, not a citizen's data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update

from infra.db import session
from infra.journal import purge_applied
from infra.metrics import RETENTION_PURGED
from schemas.models import (
    CallbackTask,
    CallListEntry,
    DeadLetter,
    IngestEvent,
    LicenseRecord,
    Notification,
    NotificationStatus,
    RectificationTicket,
    ScheduledJob,
    SendPace,
    utcnow,
)

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["BATCH_SIZE", "DETAIL_MARKER", "PAYLOAD_MARKER", "TABLES", "purge"]

#: A release spread's pace row is deleted this long after its last slot (a message deferred
#: to that instant again, after a retry, would only start a new spread).
RELEASE_SPREAD_KEEP = dt.timedelta(days=1)
#: Rows per transaction: short locks on a busy ledger, bounded memory for the id list.
BATCH_SIZE = 1000
#: What a purged dead letter's detail and a purged job's payload say instead.
DETAIL_MARKER = "[purged by retention]"
PAYLOAD_MARKER = '"[purged by retention]"'

#: Notifications still waiting to go out keep their recipient and body.
_NOT_YET_SENT = (NotificationStatus.CREATED, NotificationStatus.SENDING)


@dataclass(frozen=True)
class _Rule:
    """One table's purge: which rows (older than ``cutoff``, still holding data) and how."""

    table: str
    model: Any
    key: Any
    due: Callable[[dt.datetime], ColumnElement[bool]]
    scrub: dict[str, Any]


def _rules() -> list[_Rule]:
    return [
        _Rule(
            "notification",
            Notification,
            Notification.id,
            lambda cutoff: and_(
                Notification.created_at < cutoff,
                Notification.status.not_in(list(_NOT_YET_SENT)),
                or_(
                    Notification.recipient.is_not(None),
                    Notification.body.is_not(None),
                    Notification.template_params.is_not(None),
                ),
            ),
            {"recipient": None, "body": None, "template_params": None},
        ),
        _Rule(
            "call_list_entry",
            CallListEntry,
            CallListEntry.id,
            lambda cutoff: and_(
                CallListEntry.created_at < cutoff,
                or_(
                    CallListEntry.holder_name.is_not(None),
                    CallListEntry.holder_mobile.is_not(None),
                    CallListEntry.outcome.is_not(None),
                ),
            ),
            {"holder_name": None, "holder_mobile": None, "outcome": None},
        ),
        _Rule(
            "rectification_ticket",
            RectificationTicket,
            RectificationTicket.id,
            lambda cutoff: and_(
                RectificationTicket.closed_at < cutoff,
                or_(
                    RectificationTicket.citizen_mobile.is_not(None),
                    RectificationTicket.comment != "",
                ),
            ),
            {"citizen_mobile": None, "comment": ""},
        ),
        _Rule(
            "callback_task",
            CallbackTask,
            CallbackTask.id,
            lambda cutoff: and_(
                CallbackTask.completed_at < cutoff, CallbackTask.outcome.is_not(None)
            ),
            {"outcome": None},
        ),
        _Rule(
            "scheduled_job",
            ScheduledJob,
            ScheduledJob.id,
            lambda cutoff: and_(
                ScheduledJob.status != "pending",
                func.coalesce(ScheduledJob.enqueued_at, ScheduledJob.created_at) < cutoff,
                ScheduledJob.payload != PAYLOAD_MARKER,
            ),
            {"payload": PAYLOAD_MARKER},
        ),
        _Rule(
            "dead_letter",
            DeadLetter,
            DeadLetter.id,
            lambda cutoff: and_(
                DeadLetter.last_seen < cutoff,
                or_(func.length(DeadLetter.raw) > 0, DeadLetter.detail != DETAIL_MARKER),
            ),
            {"raw": b"", "detail": DETAIL_MARKER},
        ),
        _Rule(
            "license_record",
            LicenseRecord,
            LicenseRecord.license_id,
            lambda cutoff: and_(
                or_(
                    LicenseRecord.expires_on < cutoff.date(),
                    and_(LicenseRecord.status == "revoked", LicenseRecord.last_event_at < cutoff),
                ),
                or_(LicenseRecord.holder_name != "", LicenseRecord.holder_mobile != ""),
            ),
            {"holder_name": "", "holder_mobile": ""},
        ),
    ]


#: The tables the purge touches, in the order it does them.
TABLES = (*(rule.table for rule in _rules()), "ingest_event", "send_pace")


def purge(
    settings: Settings,
    *,
    days: int | None = None,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
) -> dict[str, int]:
    """Scrub personal data from rows older than ``days`` (default ``settings.retention_days``).

    Returns the rows scrubbed per table (with ``dry_run``: the rows that would be, and nothing
    is changed). Running it again returns zeros.
    """
    days = settings.retention_days if days is None else days
    if days < 1:
        raise ValueError("retention must be at least one day")
    cutoff = (now or utcnow()) - dt.timedelta(days=days)
    counts: dict[str, int] = {}
    with session(settings) as s:
        for rule in _rules():
            due = rule.due(cutoff)
            if dry_run:
                counts[rule.table] = int(
                    s.execute(select(func.count()).select_from(rule.model).where(due)).scalar_one()
                )
                continue
            done = 0
            while True:
                ids = list(s.execute(select(rule.key).where(due).limit(batch_size)).scalars())
                if not ids:
                    break
                s.execute(update(rule.model).where(rule.key.in_(ids), due).values(**rule.scrub))
                s.commit()
                done += len(ids)
                RETENTION_PURGED.labels(table=rule.table).inc(len(ids))
                if len(ids) < batch_size:
                    break
            counts[rule.table] = done
        counts["ingest_event"] = _purge_journal(
            s, (now or utcnow()) - dt.timedelta(days=settings.journal_keep_days), dry_run
        )
        counts["send_pace"] = _purge_release_spreads(
            s, (now or utcnow()) - RELEASE_SPREAD_KEEP, dry_run
        )
    return counts


def _purge_release_spreads(s: Any, before: dt.datetime, dry_run: bool) -> int:
    """Delete the pace rows of releases (``release:<provider>:<instant>``, one per provider and
    instant messages were held until) whose last slot is before ``before``: nothing will take
    a slot of that release again. A provider's or robot's own pace row stays (one per sender)."""
    due = and_(SendPace.key.startswith("release:"), SendPace.next_at < before.timestamp())
    if dry_run:
        return int(s.execute(select(func.count()).select_from(SendPace).where(due)).scalar_one())
    done = int(s.execute(delete(SendPace).where(due)).rowcount or 0)
    s.commit()
    if done:
        RETENTION_PURGED.labels(table="send_pace").inc(done)
    return done


def _purge_journal(s: Any, applied_before: dt.datetime, dry_run: bool) -> int:
    """Delete journaled events applied before ``applied_before`` (never unapplied ones)."""
    if dry_run:
        return int(
            s.execute(
                select(func.count())
                .select_from(IngestEvent)
                .where(IngestEvent.applied_at < applied_before)
            ).scalar_one()
        )
    done = purge_applied(s, applied_before)
    if done:
        RETENTION_PURGED.labels(table="ingest_event").inc(done)
    return done
