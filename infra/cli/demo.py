"""``govnotify demo``: the whole pipeline on a generated license registry, then a summary.

It starts what it needs (the embedded Tansu broker unless one runs; RabbitMQ and PostgreSQL are
checked), runs relay, stream and worker as real processes, publishes a registry of licenses
across the 10 categories (with renewals, revocations and a handful of bad events), waits until
every reminder is settled, prints what happened, and stops everything it started, also on error.
Each run uses its own namespace, so runs never see each other's queues, topics or rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import threading
import time
import uuid
from collections import Counter

from sqlalchemy import func, select

from infra import services
from infra.cli import exits
from infra.cli.components import stop_on_signals
from infra.clock import Clock
from infra.db import session
from infra.logging import mask_mobile
from infra.metrics import sample_sum, scrape
from infra.processes import ProcessGroup, wait_until
from infra.settings import Settings, get_settings
from producers.generator import bad_events, generate_case_day, generate_registry
from producers.rabbitmq import Publisher, delete_namespace, queue_depths
from schemas.models import (
    CallbackTask,
    CallListEntry,
    DeadLetter,
    LicenseRecord,
    Notification,
    RectificationTicket,
    StaffAlert,
)
from workers.ledger import as_utc
from workers.observability import holds_jobs
from workers.renewal_rules import due_renewal_jobs

__all__ = ["alert_latencies", "cmd_demo", "demo_now", "jobs_settled", "register", "run_demo"]

#: The whole demo must finish well inside two minutes; waiting stops here.
SETTLE_TIMEOUT_S = 90.0
FINAL = (
    "sent",
    "delivered",
    "cancelled",
    "permanent-failure",
    "temporary-failure",
    "technical-failure",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a generated license registry")
    p.add_argument("--licenses", type=int, default=5000, help="licenses to generate (>= 100)")
    p.add_argument("--cases", type=int, default=1500, help="cases in the centre's day")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the pipeline up after the summary (for govnotify top), until Ctrl-C",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    keep = stop_on_signals() if args.keep_running else None
    return run_demo(get_settings(), licenses=args.licenses, cases=args.cases, keep_running=keep)


def _demo_settings(settings: Settings, run_id: str) -> Settings:
    today = settings.today or Clock.from_settings(settings).today()
    # As of 10:00 local on that day: a demo run at night would otherwise (rightly) defer every
    # SMS to 08:00 because of quiet hours.
    now = dt.datetime.combine(today, dt.time(10, 0), tzinfo=settings.tz)
    update: dict[str, object] = {
        "namespace": f"demo{run_id}",
        "today": today,
        "now": now,
        # Every process of the demo on one clock, however far apart they start.
        "now_epoch": time.time(),
        # A day's timings compressed into the demo's minute: survey invitations 30 s after
        # completion instead of 30 min, escalations after 20-30 s instead of 10 min / 3 days.
        "survey_delay_s": 30,
        # Reminders due at once wait 3 s (not a minute) for a renewal that supersedes them.
        "renewal_settle_s": 3,
        "green_escalate_after_s": 20,
        "callback_due_after_s": 30,
    }
    if not settings.database_url:
        # A fresh SQLite file per run keeps the summary about this run only.
        update["database_url"] = f"sqlite:///{(settings.data_dir / f'demo-{run_id}.db').resolve()}"
    return settings.model_copy(update=update)


def demo_now(settings: Settings) -> dt.datetime:
    """Now on the pipeline's clock: the very clock every process of the demo reads
    (``infra.clock.Clock`` for the same ``GOVNOTIFY_NOW`` + ``GOVNOTIFY_NOW_EPOCH``).

    The summary's green-channel latency subtracts an event's ``submitted_at``, stamped here,
    from the ``sent_at`` the worker stamps on its own clock: both must be this one. A reading of
    the demo's own (a monotonic origin taken when it starts the processes, or the wall clock)
    is seconds or days away from it, and once made that median negative (-0.23 s).
    """
    return Clock.from_settings(settings).now()


def alert_latencies(alerts: list[StaffAlert]) -> list[float]:
    """Seconds from each sent alert's event to its send, sorted; both stamps on one clock."""
    return sorted(
        (ledger_utc(a.sent_at) - ledger_utc(a.event_at)).total_seconds()
        for a in alerts
        if a.sent_at
    )


def _expected(registry, settings: Settings) -> Counter[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Reminders due today for the final state of every license (what a perfect run sends)."""
    expected: Counter[tuple[str, int]] = Counter()
    for license_id, (status, expires_on) in registry.final.items():
        state = LicenseRecord(
            license_id=license_id,
            status=status,
            expires_on=expires_on,
            category="",
            holder_name="",
            holder_mobile="+8613800138000",
            issuing_department="",
            last_event_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        )
        for job in due_renewal_jobs(
            state, settings.today, settings.renewal_sms_offsets, settings.renewal_call_offsets
        ):
            expected[(job.kind, job.offset_days)] += 1
    return expected


def _settled(settings: Settings, min_rows: int, *flows: str) -> bool:
    """At least ``min_rows`` notifications of ``flows`` exist and none is still pending."""
    with session(settings) as s:
        rows = (
            s.execute(select(Notification.status).where(Notification.flow.in_(flows)))
            .scalars()
            .all()
        )
    return len(rows) >= min_rows and all(status in FINAL for status in rows)


def _day_settled(settings: Settings, expected: Counter[str]) -> bool:
    """Every message the generated day should produce has been produced."""
    with session(settings) as s:
        escalated_alerts = s.execute(
            select(func.count()).select_from(StaffAlert).where(StaffAlert.escalated_at.is_not(None))
        ).scalar_one()
        escalated_tasks = s.execute(
            select(func.count())
            .select_from(CallbackTask)
            .where(CallbackTask.escalated_at.is_not(None))
        ).scalar_one()
    return (
        escalated_alerts >= expected["green_escalations"]
        and escalated_tasks >= expected["callback_escalations"]
        and _settled(
            settings,
            expected["surveys"] + expected["callback_notices"],
            "survey",
            "callback_notice",
        )
    )


def _stream_events(settings: Settings) -> float:
    try:
        return sample_sum(scrape(settings.stream_metrics_port), "govnotify_stream_events_total")
    except OSError:  # the stream is still starting
        return 0.0


def jobs_settled(stream: dict[str, float], worker: dict[str, float]) -> bool:
    """From the stream's and the worker's /metrics: every job the stream handed over was
    processed, and the worker holds none, running or waiting for a retry's time (a failed job
    counts as processed, and its retry goes back through the ``.DQ``)."""
    enqueued = sample_sum(stream, "govnotify_jobs_enqueued_total")
    if sample_sum(worker, "dramatiq_messages_total") < enqueued:
        return False
    return not holds_jobs(worker)


def _jobs_done(settings: Settings) -> bool:
    """:func:`jobs_settled`, and no job ready on a work queue or waiting on its ``.DQ``."""
    try:
        stream = scrape(settings.stream_metrics_port)
        worker = scrape(settings.worker_metrics_port)
    except OSError:
        return False
    if not jobs_settled(stream, worker):
        return False
    waiting = [q for q in settings.work_queues if not q.endswith(".XQ")]
    return sum(queue_depths(settings, waiting).values()) == 0


def _jobs_summary(settings: Settings) -> int:
    """Print what the worker did with its jobs; the number it gave up on (dead-lettered on
    their queue's ``.XQ``, for `govnotify dead-letters`)."""
    try:
        worker = scrape(settings.worker_metrics_port)
    except OSError:
        worker = {}
    dead_queues = [q for q in settings.work_queues if q.endswith(".XQ")]
    dead = sum(queue_depths(settings, dead_queues).values())
    print(
        f"  Worker jobs: {sample_sum(worker, 'dramatiq_messages_total'):,.0f} processed, "
        f"{sample_sum(worker, 'dramatiq_message_errors_total'):,.0f} attempts failed and "
        f"retried, {dead} given up (dead letters on the .XQ queues)"
    )
    return dead


def run_demo(
    settings: Settings,
    *,
    licenses: int = 5000,
    cases: int = 1500,
    keep_running: threading.Event | None = None,
) -> int:
    """Run the demo; returns the process exit code.

    With ``keep_running``, the pipeline stays up after the summary until that event is set (the
    CLI sets it on Ctrl-C or SIGTERM), for ``govnotify top`` and a Prometheus to look at.
    """
    if licenses < 100:
        raise ValueError("--licenses must be at least 100")
    run_id = uuid.uuid4().hex[:8]
    s = _demo_settings(settings, run_id)
    started_at = time.monotonic()
    print(f"govnotify demo: as of {s.today} ({s.timezone}), namespace {s.namespace}")
    up = services.services_up(s)
    print("  services: " + ", ".join(f"{k} {v}" for k, v in up.items()))
    group = ProcessGroup(env={**_base_env(), **s.env()}, log_dir=s.data_dir / "demo-logs" / run_id)
    try:
        group.start("relay", "relay")
        group.start("stream", "stream")
        group.start("worker", "worker")
        group.start("scheduler", "scheduler")
        group.start("api", "api")

        registry = generate_registry(licenses, s.today, prefix=f"LIC{run_id[:4].upper()}")
        bad = bad_events(s.today)
        t0 = time.monotonic()
        with Publisher.from_settings(s) as p:
            for event in registry.events:
                p.publish(event)
            for _reason, raw in bad:
                p.publish_raw(raw, "license.issued")
            # The centre's day happens "now" on the pipeline's own clock (demo_now), so alert
            # latencies are measured on the one clock every process reads, never negative.
            day = generate_case_day(cases, demo_now(s), prefix=f"C{run_id[:4].upper()}")
            for event in day.events:
                p.publish(event)
        publish_s = time.monotonic() - t0
        n_events = len(registry.events) + len(day.events)
        print(
            f"  published {n_events:,} events in {publish_s:.1f}s "
            f"({n_events / publish_s:,.0f} events/s with publisher confirms): "
            f"{licenses:,} licenses ({len(registry.renewed)} renewed, {len(registry.revoked)} "
            f"revoked), {cases:,} cases with their evaluations, and {len(bad)} bad events"
        )

        expected = _expected(registry, s)
        expected_sms = sum(v for (kind, _o), v in expected.items() if kind == "sms")
        deadline_msg = "the pipeline did not settle in time; logs in " + str(group.log_dir)
        wait_until(
            lambda: _stream_events(s) >= n_events,
            SETTLE_TIMEOUT_S,
            interval=0.2,
            message=deadline_msg,
        )
        # Every job the stream handed over has been processed by the worker, and no row is
        # left in created/sending.
        wait_until(lambda: _jobs_done(s), SETTLE_TIMEOUT_S, interval=0.2, message=deadline_msg)
        wait_until(
            lambda: _settled(s, expected_sms, "renewal"),
            SETTLE_TIMEOUT_S,
            interval=0.2,
            message=deadline_msg,
        )
        elapsed = time.monotonic() - t0
        wait_until(
            lambda: _day_settled(s, day.expected),
            SETTLE_TIMEOUT_S,
            interval=0.5,
            message=deadline_msg,
        )
        _summary(s, expected, registry, elapsed, len(registry.events))
        _case_summary(s, day)
        given_up = _jobs_summary(s)
        if keep_running is not None:
            print(
                f"  finished in {time.monotonic() - started_at:.1f}s; the pipeline keeps running "
                "(Ctrl-C stops it). In another terminal:\n"
                f"    GOVNOTIFY_NAMESPACE={s.namespace} "
                f"GOVNOTIFY_DATABASE_URL={s.resolved_database_url} .venv/bin/govnotify top\n"
                "    prometheus --config.file=infra/prometheus/prometheus.yml "
                "--storage.tsdb.path=/tmp/govnotify-tsdb   # then http://127.0.0.1:9090/alerts",
                flush=True,
            )
            keep_running.wait()
        print(f"  finished in {time.monotonic() - started_at:.1f}s; stopping everything")
        if given_up:
            print(
                f"govnotify: {given_up} job(s) failed every retry; see the worker's log in "
                f"{group.log_dir}",
                file=sys.stderr,
            )
            return exits.PARTIAL
        return 0
    finally:
        group.stop_all()
        delete_namespace(s)
        if up.get("kafka") == "started":
            services.services_down(s)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GOVNOTIFY_")}


def _summary(s: Settings, expected, registry, elapsed: float, n_events: int) -> None:  # type: ignore[no-untyped-def]
    with session(s) as db:
        rows = db.execute(
            select(
                Notification.idempotency_key, Notification.status, Notification.subject_id
            ).where(Notification.flow == "renewal")
        ).all()
        calls = db.execute(select(CallListEntry.offset_days, CallListEntry.status)).all()
        letters = db.execute(select(DeadLetter.reason, DeadLetter.count)).all()
        sample = db.execute(
            select(Notification.recipient, Notification.body, Notification.segments)
            .where(Notification.status.in_(("sent", "delivered")))
            .limit(1)
        ).first()
    by_offset: dict[int, Counter[str]] = {}
    changed = registry.renewed | registry.revoked
    sent_then_changed: Counter[int] = Counter()
    for key, status, subject in rows:
        offset = int(key.rsplit(":", 1)[1])
        by_offset.setdefault(offset, Counter())[status] += 1
        if status in ("sent", "delivered") and subject in changed:
            sent_then_changed[offset] += 1
    print()
    print(f"  Renewal reminders as of {s.today}     due   sent  cancelled  failed")
    for offset in s.renewal_sms_offsets:
        c = by_offset.get(offset, Counter())
        sent = c["sent"] + c["delivered"]
        failed = sum(v for k, v in c.items() if k.endswith("failure"))
        print(
            f"    SMS {offset:>2} days before expiry      {expected[('sms', offset)]:>5}  "
            f"{sent:>5}  {c['cancelled']:>9}  {failed:>6}"
        )
    for offset in s.renewal_call_offsets:
        open_calls = sum(1 for o, st in calls if o == offset and st == "open")
        print(
            f"    call list {offset:>2} days before      {expected[('call_list', offset)]:>5}  "
            f"{open_calls:>5}  (entries for the issuing departments' staff)"
        )
    if sent_then_changed:
        print(
            f"    ({sum(sent_then_changed.values())} went out before a later renewal or "
            "revocation of the same license arrived, so sent exceeds due by that much;\n"
            "     a renewal that arrives first cancels the pending reminder at send time)"
        )
    reasons = Counter()
    for reason, count in letters:
        reasons[reason] += count
    print(
        "  Rejected events (dead letters): "
        + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
    )
    print(
        f"  End to end: {n_events:,} events in {elapsed:.1f}s = {n_events / elapsed:,.0f} events/s"
        " (publish → relay → Kafka → stream → RabbitMQ → worker → SMS)"
    )
    if sample:
        to, body, segments = sample
        print(f"  A sent SMS ({segments} segment(s), to {mask_mobile(to or '')}): {body}")
    print(
        f"  Sandbox outbox: {s.data_dir / 'sandbox-outbox.jsonl'}; database: "
        f"{s.resolved_database_url.split('@')[-1]}"
    )
    print(
        f"  Metrics (and /healthz, /readyz) while running: relay :{s.relay_metrics_port}, "
        f"stream :{s.stream_metrics_port}, worker :{s.worker_metrics_port}, "
        f"scheduler :{s.scheduler_metrics_port}, api :{s.api_metrics_port}; "
        "`govnotify demo --keep-running` leaves them up for `govnotify top`"
    )


def _case_summary(s: Settings, day) -> None:  # type: ignore[no-untyped-def]
    """The three case flows: what the generated day should produce, and what was produced."""
    exp = day.expected
    with session(s) as db:
        alerts = db.execute(select(StaffAlert)).scalars().all()
        tasks = db.execute(select(CallbackTask)).scalars().all()
        tickets = db.execute(select(RectificationTicket)).scalars().all()
        flows = Counter(
            db.execute(
                select(Notification.flow).where(Notification.status.in_(("sent", "delivered")))
            ).scalars()
        )
    latencies = alert_latencies(alerts)
    p50 = latencies[len(latencies) // 2] if latencies else 0.0
    early = sum(1 for x in latencies if x < 0)
    print()
    print("  Green channel (绿色通道)           expected  actual")
    print(
        f"    alerts to on-duty staff              {exp['green_alerts']:>5}  {len(alerts):>6}"
        f"   (median {p50:.2f}s from the event to the staff webhook)"
    )
    if early:
        # Impossible on one clock: say so rather than print a median nobody should believe.
        print(
            f"    !! {early} alert(s) stamped sent before their event: the event and the "
            "worker were not on one clock; the median above is wrong"
        )
    print(
        f"    acknowledged in time                 "
        f"{exp['green_alerts'] - exp['green_escalations']:>5}  "
        f"{sum(a.acknowledged_at is not None for a in alerts):>6}"
    )
    print(
        f"    escalated to the hall supervisor     {exp['green_escalations']:>5}  "
        f"{sum(a.escalated_at is not None for a in alerts):>6}"
    )
    print("  Follow-up callbacks (跟踪回访)")
    print(
        f"    tasks (key projects + real-name negative reviews) "
        f"{exp['callback_tasks']:>4}  {len(tasks):>6}"
    )
    print(
        f"    SMS telling the enterprise who calls {exp['callback_notices']:>5}  "
        f"{flows['callback_notice']:>6}"
    )
    print(
        f"    escalated past their due time        {exp['callback_escalations']:>5}  "
        f"{sum(t.escalated_at is not None for t in tasks):>6}"
    )
    print("  Satisfaction (好差评)")
    print(f"    survey invitations (unrated cases)   {exp['surveys']:>5}  {flows['survey']:>6}")
    print(
        f"    rectification tickets (ratings 1-2)  {exp['rectification_tickets']:>5}  "
        f"{len(tickets):>6}   (due in {s.rectification_workdays} Chinese working days)"
    )
    rates = sorted(
        ((sat / total, dept, total) for dept, (sat, total) in day.ratings.items()), reverse=True
    )
    shown = ", ".join(f"{dept} {rate:.1%} of {total}" for rate, dept, total in rates[:4])
    print(f"    satisfied today: {shown} … (live: govnotify satisfaction)")
    print(f"  Staff messages (sandbox webhooks): {s.data_dir / 'sandbox-webhooks.jsonl'}")


def ledger_utc(value: dt.datetime | None) -> dt.datetime:
    result = as_utc(value)
    assert result is not None
    return result
