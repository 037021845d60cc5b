"""The DeadLetters middleware on dramatiq's StubBroker (a real broker for tests) and SQLite:
which failed jobs become dead letters, and what a letter keeps of the job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from dramatiq.middleware import AgeLimit, Retries
from sqlalchemy import select

from infra.db import session, upgrade
from infra.settings import Settings, load_settings
from notifiers.errors import InvalidRecipientError
from schemas.models import DeadLetter
from workers.middleware import DeadLetters

QUEUE = "tunit.jobs"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(namespace="tunit", data_dir=tmp_path / "data", database_url="")
    upgrade(s)
    return s


@pytest.fixture
def broker(settings: Settings) -> Iterator[StubBroker]:
    stub = StubBroker(
        middleware=[AgeLimit(), Retries(max_retries=1, min_backoff=10, max_backoff=20)]
    )
    # before=Retries: dramatiq calls after_* hooks in reverse, so ours reads Retries' verdict
    stub.add_middleware(DeadLetters(settings), before=Retries)
    stub.emit_after("process_boot")
    yield stub
    stub.flush_all()
    stub.close()


def run(broker: StubBroker, *messages: Message) -> None:
    """Enqueue ``messages`` and work until every one is done, retries included."""
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        for message in messages:
            broker.enqueue(message)
        broker.join(QUEUE, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def stored(settings: Settings) -> list[DeadLetter]:
    with session(settings) as s:
        return list(s.execute(select(DeadLetter).order_by(DeadLetter.reason)).scalars())


def test_jobs_out_of_retries_are_recorded_permanent_outcomes_are_not(
    settings: Settings, broker: StubBroker
) -> None:
    # Given: one actor that always breaks, one whose declared permanent outcome it records
    # itself (a delivery), one whose permanent failure is recorded nowhere else (a staff
    # alert), one fine
    calls: dict[str, int] = {"broken": 0, "permanent": 0, "staff": 0, "fine": 0}

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="broken")
    def broken(job: dict) -> None:
        calls["broken"] += 1
        raise KeyError(f"no staff for {job['mobile']}")

    @dramatiq.actor(
        broker=broker,
        queue_name=QUEUE,
        actor_name="permanent",
        throws=(InvalidRecipientError,),
        records_own_failures=True,
    )
    def permanent(job: dict) -> None:
        calls["permanent"] += 1
        raise InvalidRecipientError("landline", provider="twilio")

    @dramatiq.actor(
        broker=broker, queue_name=QUEUE, actor_name="staff", throws=(InvalidRecipientError,)
    )
    def staff(job: dict) -> None:
        calls["staff"] += 1
        raise InvalidRecipientError("robot refused", provider="webhook")

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="fine")
    def fine(job: dict) -> None:
        calls["fine"] += 1

    # When
    job = {"mobile": "+8613800138000", "holder_name": "张三"}
    run(broker, broken.message(job), permanent.message(job), staff.message(job), fine.message(job))

    # Then: tried twice, then one letter; the permanent ones tried once, and only the one that
    # records nothing itself is a letter
    assert calls == {"broken": 2, "permanent": 1, "staff": 1, "fine": 1}
    thrown, letter = stored(settings)  # by reason
    assert (thrown.reason, thrown.event_type) == ("InvalidRecipientError", "staff")
    assert "staff on tunit.jobs failed for good: InvalidRecipientError" in thrown.detail
    assert (letter.stage, letter.reason, letter.event_type, letter.count) == (
        "job",
        "KeyError",
        "broken",
        1,
    )
    assert "broken on tunit.jobs gave up after 2 attempt(s): KeyError" in letter.detail
    assert "13800138000" not in letter.detail and "138****8000" in letter.detail
    # … the letter is the job as first enqueued: on its queue, retries and traceback dropped
    original = Message.decode(letter.raw)
    assert (original.queue_name, original.actor_name, original.args) == (QUEUE, "broken", (job,))
    assert original.options == {}


def test_the_same_job_failing_again_is_the_same_letter(
    settings: Settings, broker: StubBroker
) -> None:
    # Given a job that failed its retries once
    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="broken")
    def broken(n: int) -> None:
        raise RuntimeError("down")

    message = broken.message(1)
    run(broker, message)
    [letter] = stored(settings)

    # When it is replayed as `dead-letters replay` does (the recorded message, enqueued again)
    run(broker, Message.decode(letter.raw))

    # Then: one row, seen twice
    [again] = stored(settings)
    assert (again.id, again.count, again.status) == (letter.id, 2, "open")


def test_a_job_skipped_for_its_age_is_recorded(settings: Settings, broker: StubBroker) -> None:
    # Given a job older than its actor's age limit
    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="stale", max_age=1000)
    def stale(n: int) -> None:
        raise AssertionError("never runs")

    message = stale.message(1)
    old = Message(
        queue_name=message.queue_name,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=message.options,
        message_id=message.message_id,
        message_timestamp=message.message_timestamp - 60_000,
    )

    # When
    run(broker, old)

    # Then
    [letter] = stored(settings)
    assert (letter.stage, letter.reason, letter.event_type) == ("job", "skipped", "stale")
