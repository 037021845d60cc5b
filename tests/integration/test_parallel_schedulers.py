"""Schedulers in parallel: any number may tick at once, and each due job is handed out once.

Two schedulers tick the same PostgreSQL table in two threads, each with its own job sender
(its own RabbitMQ connection), released at the same instant; the jobs land on the real
RabbitMQ queue, where they are counted.
"""

from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from infra.clock import Clock
from infra.db import session
from infra.jobs import JobSender
from infra.settings import Settings
from producers.rabbitmq import queue_depth
from schemas.models import ScheduledJob
from tests.support import wait_until
from workers.scheduled_jobs import schedule_many, tick

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
JOBS = 600


def test_two_schedulers_ticking_at_once_hand_out_each_due_job_once(settings: Settings) -> None:
    # Given 600 escalations due a minute ago
    with session(settings) as s:
        schedule_many(
            s,
            [
                (f"escalate:{i}", NOW - dt.timedelta(minutes=1), "escalate_green_channel_alert", i)
                for i in range(JOBS)
            ],
        )
        s.commit()
    clock = Clock(ZoneInfo("Asia/Shanghai"), start=NOW)
    senders = [JobSender(settings), JobSender(settings)]
    start = threading.Barrier(2)
    handed: list[int] = []
    errors: list[BaseException] = []

    def scheduler(sender: JobSender) -> None:
        try:
            start.wait(timeout=30)
            while (n := tick(settings, clock, sender)) > 0:
                handed.append(n)
        except BaseException as exc:
            errors.append(exc)

    # When two schedulers tick at the same instant until nothing is due
    threads = [threading.Thread(target=scheduler, args=(s,)) for s in senders]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for sender in senders:
            sender.close()

    # Then every job was handed out once: 600 on the queue, every row enqueued
    assert errors == []
    assert sum(handed) == JOBS
    queue = settings.queue("alerts")
    wait_until(lambda: queue_depth(settings, queue) >= JOBS, 30, message="jobs not queued")
    assert queue_depth(settings, queue) == JOBS
    with session(settings) as s:
        statuses = set(s.execute(select(ScheduledJob.status)).scalars())
    assert statuses == {"enqueued"}
