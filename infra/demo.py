"""``govnotify demo``: the whole pipeline on a generated license registry, then a summary.

It starts what it needs (the embedded Tansu broker unless one runs; RabbitMQ and PostgreSQL are
checked), runs relay, stream and worker as real processes, publishes a registry of licenses
across the 10 categories (with renewals, revocations and a handful of bad events), waits until
every reminder is settled, prints what happened, and stops everything it started, also on error.
Each run uses its own namespace, so runs never see each other's queues, topics or rows.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from infra import services
from infra.clock import Clock
from infra.db import session
from infra.logging import mask_mobile
from infra.metrics import sample_sum, scrape
from infra.processes import ProcessGroup, wait_until
from producers.generator import bad_events, generate_registry
from producers.rabbitmq import Publisher, delete_namespace
from schemas.models import CallListEntry, DeadLetter, Notification
from streams.rules import due_renewal_jobs

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["run_demo"]

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


def _demo_settings(settings: Settings, run_id: str) -> Settings:
    today = settings.today or Clock.from_settings(settings).today()
    update: dict[str, object] = {"namespace": f"demo{run_id}", "today": today}
    if not settings.database_url:
        # A fresh SQLite file per run keeps the summary about this run only.
        update["database_url"] = f"sqlite:///{(settings.data_dir / f'demo-{run_id}.db').resolve()}"
    return settings.model_copy(update=update)


def _expected(registry, settings: Settings) -> Counter[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Reminders due today for the final state of every license (what a perfect run sends)."""
    expected: Counter[tuple[str, int]] = Counter()
    for license_id, (status, expires_on) in registry.final.items():
        state = {
            "license_id": license_id,
            "status": status,
            "expires_on": expires_on.isoformat(),
            "category": "",
            "holder_name": "",
            "holder_mobile": "+8613800138000",
            "issuing_department": "",
            "state_at": "2026-01-01T00:00:00+00:00",
        }
        for job in due_renewal_jobs(
            state, settings.today, settings.renewal_sms_offsets, settings.renewal_call_offsets
        ):
            expected[(job.kind, job.offset_days)] += 1
    return expected


def _settled(settings: Settings, min_rows: int) -> bool:
    with session(settings) as s:
        pending = s.execute(
            select(func.count()).select_from(Notification).where(Notification.status.not_in(FINAL))
        ).scalar_one()
        total = s.execute(select(func.count()).select_from(Notification)).scalar_one()
    return pending == 0 and total >= min_rows


def _stream_events(settings: Settings) -> float:
    try:
        return sample_sum(scrape(settings.stream_metrics_port), "govnotify_stream_events_total")
    except OSError:  # the stream is still starting
        return 0.0


def _jobs_done(settings: Settings) -> bool:
    try:
        enqueued = sample_sum(scrape(settings.stream_metrics_port), "govnotify_jobs_enqueued_total")
        processed = sample_sum(scrape(settings.worker_metrics_port), "dramatiq_messages_total")
    except OSError:
        return False
    return processed >= enqueued


def run_demo(settings: Settings, *, licenses: int = 5000, keep_running: bool = False) -> int:
    """Run the demo; returns the process exit code."""
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

        registry = generate_registry(licenses, s.today, prefix=f"LIC{run_id[:4].upper()}")
        bad = bad_events(s.today)
        t0 = time.monotonic()
        with Publisher(s.amqp_url, s.exchange, topology=(s.relay_queue, s.dead_letter_queue)) as p:
            for event in registry.events:
                p.publish(event)
            for _reason, raw in bad:
                p.publish_raw(raw, "license.issued")
        publish_s = time.monotonic() - t0
        n_events = len(registry.events)
        print(
            f"  published {n_events:,} events ({licenses:,} licenses, "
            f"{len(registry.renewed)} renewals, {len(registry.revoked)} revocations) and "
            f"{len(bad)} bad events in {publish_s:.1f}s "
            f"({n_events / publish_s:,.0f} events/s with publisher confirms)"
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
            lambda: _settled(s, expected_sms), SETTLE_TIMEOUT_S, interval=0.2, message=deadline_msg
        )
        elapsed = time.monotonic() - t0
        _summary(s, expected, registry, elapsed, n_events)
        print(f"  finished in {time.monotonic() - started_at:.1f}s; stopping everything")
        return 0
    finally:
        group.stop_all()
        delete_namespace(s)
        if up.get("kafka") == "started":
            services.services_down(s)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("GOVNOTIFY_")}


def _summary(s: Settings, expected, registry, elapsed: float, n_events: int) -> None:  # type: ignore[no-untyped-def]
    with session(s) as db:
        rows = db.execute(
            select(Notification.idempotency_key, Notification.status, Notification.subject_id)
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
        f"  Metrics while running: relay :{s.relay_metrics_port}/metrics, "
        f"stream :{s.stream_metrics_port}/metrics, worker :{s.worker_metrics_port}/metrics"
    )
