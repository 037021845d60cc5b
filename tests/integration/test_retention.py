"""The retention purge on PostgreSQL: personal data past the cut-off is scrubbed, recent rows and
the anonymous statistics are untouched, a second run does nothing, a dry run changes nothing."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlmodel import SQLModel

from infra.db import session
from infra.retention import DETAIL_MARKER, PAYLOAD_MARKER, TABLES, purge
from infra.settings import Settings
from schemas.models import (
    CallbackTask,
    CallListEntry,
    DeadLetter,
    IngestEvent,
    LicenseRecord,
    Notification,
    NotificationStatus,
    OptOut,
    RectificationTicket,
    ScheduledJob,
    SendPace,
    Suppression,
    utcnow,
)
from tests.support import env_for

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def _id() -> str:
    return uuid.uuid4().hex


def _notification(status: str, flow: str, at: dt.datetime, n: int) -> Notification:
    return Notification(
        id=_id(),
        idempotency_key=f"{flow}:{status}:{at:%Y%m%d}:{n}",
        flow=flow,
        channel="sms",
        subject_id=f"LIC-{n}",
        recipient=f"+86139001390{n:02d}",
        body="【长安政务】王伟您好，您的食品经营许可证将于30天后到期。",
        segments=2,
        status=status,
        provider="twilio",
        provider_ref=f"SM{n:032d}",
        error_code="30005" if status == NotificationStatus.PERMANENT_FAILURE else None,
        template="renewal_30",
        template_params='{"holder_name": "王伟"}',
        category="reminders",
        created_at=at,
        updated_at=at,
        sent_at=at if status in (NotificationStatus.SENT, NotificationStatus.DELIVERED) else None,
    )


def seed(settings: Settings, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Old (40 days) and recent (5 days) rows of every table that holds personal data, and the
    standing ones; returns (old, recent)."""
    old, recent = now - dt.timedelta(days=40), now - dt.timedelta(days=5)
    rows: list[SQLModel] = []
    n = 0
    for at in (old, recent):
        for flow, status in [
            ("renewal", NotificationStatus.SENT),
            ("renewal", NotificationStatus.DELIVERED),
            ("survey", NotificationStatus.DELIVERED),
            ("survey", NotificationStatus.PERMANENT_FAILURE),
            ("callback", NotificationStatus.TEMPORARY_FAILURE),
            # deferred for the quiet hours, still to be sent: keeps its recipient and body
            ("survey", NotificationStatus.CREATED),
        ]:
            n += 1
            rows.append(_notification(status, flow, at, n))
        rows.append(
            CallListEntry(
                id=_id(),
                idempotency_key=f"renewal:call_list:{at:%Y%m%d}",
                license_id="LIC-9",
                category="food_business",
                issuing_department="市场监督管理局",
                holder_name="张三",
                holder_mobile="+8613900139999",
                expires_on=at.date() + dt.timedelta(days=3),
                offset_days=3,
                due_on=at.date(),
                status="done",
                created_at=at,
            )
        )
        for status in ("closed", "open"):
            rows.append(
                RectificationTicket(
                    id=_id(),
                    idempotency_key=f"rect:{status}:{at:%Y%m%d}",
                    evaluation_id=_id(),
                    case_id="C-1",
                    department="税务局",
                    service_item="发票申领",
                    service_point_id="SC-CHANGAN",
                    rating=1,
                    comment="等待时间太长，工作人员王五态度差",
                    citizen_mobile="+8613900139888",
                    status=status,
                    opened_at=at - dt.timedelta(days=7),
                    deadline_at=at,
                    closed_at=at if status == "closed" else None,
                    outcome="已整改" if status == "closed" else None,
                )
            )
        rows.append(
            CallbackTask(
                id=_id(),
                idempotency_key=f"cb:{at:%Y%m%d}",
                case_id="C-2",
                kind="key_project",
                owner_staff_id="STW-01",
                owner_name="刘管家",
                department="市场监督管理局",
                service_item="食品经营许可证核发",
                status="done",
                due_at=at,
                completed_at=at,
                outcome="已回访，企业联系人李四（13900139777）表示满意",
            )
        )
        for status in ("enqueued", "pending"):
            rows.append(
                ScheduledJob(
                    id=_id(),
                    key=f"job:{status}:{at:%Y%m%d}",
                    run_at=at,
                    actor_name="send_survey",
                    payload='{"applicant_mobile": "+8613900139666", "applicant_name": "赵六"}',
                    status=status,
                    created_at=at - dt.timedelta(minutes=30),
                    enqueued_at=at if status == "enqueued" else None,
                )
            )
        rows.append(
            DeadLetter(
                id=_id(),
                fingerprint=_id() + _id(),
                stage="ingest",
                reason="schema_violation",
                detail="holder_mobile: not a mainland mobile number",
                raw=b'{"holder_mobile": "13900139555"}',
                first_seen=at,
                last_seen=at,
            )
        )
        for status, expires_on in (("live", at.date()), ("revoked", now.date() + dt.timedelta(60))):
            # expired (or revoked) at ``at``: its holder is needed no more once that is old
            rows.append(
                LicenseRecord(
                    license_id=f"LIC-{status}-{at:%Y%m%d}",
                    status=status,
                    category="food_business",
                    issuing_department="市场监督管理局",
                    holder_name="周七",
                    holder_mobile="+8613900139222",
                    expires_on=expires_on,
                    last_event_at=at,
                )
            )
        for applied in (True, False):
            # an event journaled at ``at``, applied by the stream then (or still waiting)
            rows.append(
                IngestEvent(
                    event_id=f"E-{applied}-{at:%Y%m%d}",
                    event_type="license.issued",
                    family="licenses",
                    entity_key="LIC-9",
                    occurred_at=at,
                    body=b'{"holder_mobile": "+8613900139111"}',
                    fingerprint="0" * 64,
                    received_at=at,
                    relayed_at=at,
                    applied_at=at if applied else None,
                )
            )
    rows += [
        # a license that lives on keeps its holder, however old its last event
        LicenseRecord(
            license_id="LIC-LIVE",
            status="live",
            category="food_business",
            issuing_department="市场监督管理局",
            holder_name="吴八",
            holder_mobile="+8613900139000",
            expires_on=now.date() + dt.timedelta(days=400),
            last_event_at=old,
        ),
        OptOut(recipient="+8613900139444", category="surveys", created_at=old),
        # release spreads (quiet hours ended at these instants) and a provider's pace
        *(
            SendPace(key=f"release:gateway:{at.isoformat()}", next_at=at.timestamp() + 10)
            for at in (now - dt.timedelta(days=2), now - dt.timedelta(hours=20))
        ),
        SendPace(key="sms:gateway", next_at=old.timestamp()),
        Suppression(
            recipient="+8613900139333", category="reminders", reason="unsubscribed", created_at=old
        ),
    ]
    with session(settings) as s:
        s.add_all(rows)
        s.commit()
    return old, recent


def snapshot(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, as plain values, in a stable order."""
    out = {}
    with session(settings) as s:
        for table in SQLModel.metadata.sorted_tables:
            result = s.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [dict(row._mapping) for row in result]
    return out


def statistics(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """The anonymous figures reports are made of."""
    with session(settings) as s:
        return {
            "by flow and status": sorted(
                s.execute(
                    select(
                        Notification.flow,
                        Notification.status,
                        func.count(),
                        func.sum(Notification.segments),
                    ).group_by(Notification.flow, Notification.status)
                ).all()
            ),
            "errors": sorted(
                s.execute(
                    select(Notification.provider, Notification.error_code, func.count()).group_by(
                        Notification.provider, Notification.error_code
                    )
                ).all(),
                key=str,
            ),
            "tickets": sorted(
                s.execute(
                    select(
                        RectificationTicket.department, RectificationTicket.rating, func.count()
                    ).group_by(RectificationTicket.department, RectificationTicket.rating)
                ).all()
            ),
        }


def purged_total(table: str) -> float:
    return REGISTRY.get_sample_value("govnotify_retention_purged_total", {"table": table}) or 0.0


EXPECTED = {
    # sent, delivered ×2, permanent and temporary failure; not the deferred one
    "notification": 5,
    "call_list_entry": 1,
    # the closed ticket; the open one still has to tell the citizen
    "rectification_ticket": 1,
    "callback_task": 1,
    # the enqueued job; the pending one still runs
    "scheduled_job": 1,
    "dead_letter": 1,
    # the license expired 40 days ago and the one revoked then; not those of 5 days ago
    "license_record": 2,
    # the event applied 40 days ago; not the recent one, never an unapplied one
    "ingest_event": 1,
    # the spread of a release whose last slot is two days past; not yesterday's nor a
    # provider's own pace
    "send_pace": 1,
}


def test_purge_scrubs_old_personal_data_and_keeps_statistics(settings: Settings) -> None:
    # Given
    old, recent = seed(settings, NOW)
    before = snapshot(settings)
    stats = statistics(settings)
    metric_before = {t: purged_total(t) for t in TABLES}

    # When: a dry run, the purge (in batches of two), and the purge again
    dry = purge(settings, days=30, now=NOW, dry_run=True)
    after_dry = snapshot(settings)
    counts = purge(settings, days=30, now=NOW, batch_size=2)
    again = purge(settings, days=30, now=NOW)

    # Then: the dry run counted exactly what the purge did and changed nothing
    assert dry == counts == EXPECTED
    assert after_dry == before
    assert again == dict.fromkeys(TABLES, 0)
    assert {t: purged_total(t) - metric_before[t] for t in TABLES} == EXPECTED
    # … the statistics are the same
    assert statistics(settings) == stats
    after = snapshot(settings)

    def rows(table: str, **match: Any) -> list[dict[str, Any]]:
        return [r for r in after[table] if all(r[k] == v for k, v in match.items())]

    # … old notifications past sending lost recipient, body and parameters, kept the rest
    for row in rows("notification", created_at=old):
        if row["status"] == NotificationStatus.CREATED:
            assert row["recipient"] and row["body"] and row["template_params"]
            continue
        assert (row["recipient"], row["body"], row["template_params"]) == (None, None, None)
        # every other column (flow, status, timestamps, segments, provider, error code) as it was
        personal = {"recipient", "body", "template_params"}
        [was] = [r for r in before["notification"] if r["id"] == row["id"]]
        assert {k: v for k, v in row.items() if k not in personal} == {
            k: v for k, v in was.items() if k not in personal
        }
    assert all(r["recipient"] and r["body"] for r in rows("notification", created_at=recent))
    # … call list, tickets, callback notes, jobs, dead letters
    [old_entry] = rows("call_list_entry", created_at=old)
    assert (old_entry["holder_name"], old_entry["holder_mobile"]) == (None, None)
    assert rows("call_list_entry", created_at=recent)[0]["holder_mobile"] == "+8613900139999"
    [closed] = rows("rectification_ticket", closed_at=old)
    assert (closed["citizen_mobile"], closed["comment"], closed["outcome"]) == (None, "", "已整改")
    for ticket in rows("rectification_ticket", status="open") + rows(
        "rectification_ticket", closed_at=recent
    ):
        assert ticket["citizen_mobile"] == "+8613900139888" and ticket["comment"]
    assert rows("callback_task", completed_at=old)[0]["outcome"] is None
    assert rows("callback_task", completed_at=old)[0]["owner_name"] == "刘管家"
    assert rows("callback_task", completed_at=recent)[0]["outcome"]
    assert [r["payload"] for r in rows("scheduled_job", enqueued_at=old)] == [PAYLOAD_MARKER]
    for job in rows("scheduled_job", status="pending") + rows("scheduled_job", enqueued_at=recent):
        assert "applicant_mobile" in job["payload"]
    [old_letter] = rows("dead_letter", last_seen=old)
    assert (bytes(old_letter["raw"]), old_letter["detail"]) == (b"", DETAIL_MARKER)
    assert bytes(rows("dead_letter", last_seen=recent)[0]["raw"]).startswith(b'{"holder')
    # … holders of licenses long over, and old applied events of the journal
    for license_id, holder in (
        (f"LIC-live-{old:%Y%m%d}", ""),
        (f"LIC-revoked-{old:%Y%m%d}", ""),
        (f"LIC-live-{recent:%Y%m%d}", "+8613900139222"),
        ("LIC-LIVE", "+8613900139000"),
    ):
        [license_row] = rows("license_record", license_id=license_id)
        assert license_row["holder_mobile"] == holder, license_id
    assert sorted(r["event_id"] for r in after["ingest_event"]) == sorted(
        [f"E-False-{old:%Y%m%d}", f"E-True-{recent:%Y%m%d}", f"E-False-{recent:%Y%m%d}"]
    )
    # … and the citizen's standing instructions are kept, whatever their age
    assert after["opt_out"] == before["opt_out"] and after["suppression"] == before["suppression"]
    assert after["opt_out"] and after["suppression"]


def test_retention_cli_dry_run_then_purge(settings: Settings) -> None:
    # Given: the rows above, old and recent as of the real clock the command runs by
    seed(settings, utcnow())
    before = snapshot(settings)
    env = env_for(settings)

    def govnotify(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infra.cli", "retention", "purge", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    # When
    dry = govnotify("--dry-run")
    after_dry = snapshot(settings)
    real = govnotify("--days", "30")
    again = govnotify()
    bad = govnotify("--days", "0")

    # Then: the dry run counted and changed nothing; the purge did what it counted, once
    total = sum(EXPECTED.values())
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines()[-1] == (
        f"{total} rows would be purged (dry run: nothing changed)"
    )
    assert after_dry == before
    assert real.returncode == 0, real.stderr
    assert real.stdout.strip().splitlines()[-1] == f"{total} rows purged"
    for table, n in EXPECTED.items():
        assert re.search(rf"{table}\s+{n}\b", real.stdout), real.stdout
    assert again.stdout.strip().splitlines()[-1] == "0 rows purged"
    assert bad.returncode == 2 and "at least 1" in bad.stderr
    with session(settings) as s:
        scrubbed = s.execute(
            select(func.count()).select_from(Notification).where(Notification.recipient.is_(None))
        ).scalar_one()
    assert scrubbed == EXPECTED["notification"]
