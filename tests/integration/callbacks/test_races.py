"""A steward's completion and the job opening its task, run side by side in every order.

Both jobs leave the stream in one batch and dramatiq workers run them concurrently, each in its
own small transactions (PostgreSQL, READ COMMITTED). These tests run the actors' own code
(``actor.fn``) in two threads on a real PostgreSQL database and choose the order instead of
hoping for it: the first job is paused before its n-th database operation (a statement or a
commit) while the second runs until it has finished or waits for a lock the first holds; then
the first goes on. Sweeping n over every operation of either job covers every point at which one
can overtake the other. A job that raises is run again afterwards, as dramatiq would retry it.

Whatever the order: the task is closed once, with the steward's outcome and what only the
opening knew; its escalation is cancelled or was never scheduled; escalating it sends nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, select

from infra.db import get_engine, session
from infra.settings import Settings, load_settings
from schemas.commands import CallbackDoneJob, CaseJob
from schemas.models import CallbackTask, ScheduledJob
from tests.fakes.webhook_server import FakeWebhook
from tests.support import worker_context
from workers import callbacks as callbacks_module
from workers.context import using

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
COMPLETED_AT = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
DONE_AT = COMPLETED_AT + dt.timedelta(seconds=1)
DEPARTMENT = "市场监督管理局"
OUTCOME = "企业对办理过程满意"
#: Longest a paused job waits for the other one to finish or to wait for a lock.
DEADLINE_S = 10.0
#: How often a job that raised is run again (dramatiq's retries, without the backoff).
RETRIES = 3


# ---- the actors, in-process on this test's database and webhook fake --------------------------
@pytest.fixture
def test_settings(database_url: str, tmp_path: Path, hooks: tuple[FakeWebhook, Path]) -> Settings:
    return load_settings(
        namespace="tcallbacks",
        data_dir=tmp_path / "data",
        database_url=database_url,
        staff_directory=hooks[1],
        callback_due_after_s=3600,
    )


@dataclass
class TaskIds:
    """``workers.callbacks``' uuid: ``next`` is the id of the next row it makes (a completion
    may name the task by it); other rows get random ids."""

    next: str = ""

    def uuid4(self) -> Any:
        chosen, self.next = self.next, ""
        return SimpleNamespace(hex=chosen) if chosen else uuid.uuid4()


@pytest.fixture
def callbacks(test_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``workers.callbacks``, its actors run in a worker context of this test's settings.

    The enterprise's SMS notice is created but not sent (the delivery code is tested elsewhere
    and is no part of the race), and the test chooses the id of the next task.

    The department robots keep their pace, their slots taken in the database as in production
    (every database operation of a job is still there to pause at); only the wait for a slot
    is not slept (:func:`tests.support.worker_context`): the orders are chosen by database
    operation, never by time, and 3 s a webhook was most of this module's time.
    """
    monkeypatch.setattr(callbacks_module, "attempt", lambda row: None)
    monkeypatch.setattr(callbacks_module, "uuid", TaskIds())
    with using(worker_context(test_settings)):
        yield callbacks_module


def opening_job(case_id: str) -> dict[str, Any]:
    return CaseJob(
        case_id=case_id,
        service_item="食品经营许可证核发",
        department=DEPARTMENT,
        service_point_id="SC-CHANGAN",
        service_point_name="长安区政务服务中心",
        applicant_kind="enterprise",
        applicant_name="西安长安科技有限公司",
        applicant_mobile="+8613900000301",
        key_project=True,
        steward_id="STW-01",
        steward_name="刘管家",
        steward_department=DEPARTMENT,
        submitted_at=COMPLETED_AT - dt.timedelta(hours=1),
        completed_at=COMPLETED_AT,
    ).model_dump(mode="json")


def completion_job(case_id: str, callback_id: str) -> dict[str, Any]:
    return CallbackDoneJob(
        case_id=case_id,
        callback_id=callback_id,
        staff_id="STW-01",
        outcome=OUTCOME,
        completed_at=DONE_AT,
    ).model_dump(mode="json")


def task_id_for(case_id: str) -> str:
    """The task id the opening of ``case_id`` is given in these tests (32 hex, like ours)."""
    return case_id.encode().hex().ljust(32, "0")[:32]


@dataclass
class Case:
    """One case's two jobs, as the stream would hand them over."""

    callbacks: Any
    case_id: str
    #: ``key_project`` (a kind), ``task id`` (the id its task will have) or another id.
    names: str
    errors: dict[str, list[BaseException]] = field(default_factory=dict)
    #: Whether each job's last run raised.
    failed: dict[str, bool] = field(default_factory=dict)

    @property
    def callback_id(self) -> str:
        return task_id_for(self.case_id) if self.names == "task id" else self.names

    def open(self) -> None:
        self.callbacks.uuid.next = task_id_for(self.case_id)
        self._run("opening", self.callbacks.open_key_project_callback.fn, opening_job(self.case_id))

    def complete(self) -> None:
        self._run(
            "completion",
            self.callbacks.complete_callback_task.fn,
            completion_job(self.case_id, self.callback_id),
        )

    def _run(self, name: str, fn: Callable[[dict[str, Any]], None], job: dict[str, Any]) -> None:
        self.failed[name] = True
        try:
            fn(job)
        except Exception as exc:
            self.errors.setdefault(name, []).append(exc)
            raise
        self.failed[name] = False

    def retry_failed(self) -> None:
        """Run again, as dramatiq would, each job whose last run raised."""
        for name, run in (("opening", self.open), ("completion", self.complete)):
            for _ in range(RETRIES):
                if not self.failed.get(name):
                    break
                _quietly(run)()


# ---- choosing the order ------------------------------------------------------------------------
class Blocked:
    """Whether a backend of the test database waits for a lock (the paused job holds it)."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(
            database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        )

    def __call__(self) -> bool:
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock')"
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self.conn.close()


@dataclass
class Schedule:
    """``first`` paused before its ``step``-th database operation (0 = before any) while
    ``second`` runs; ``paused`` says whether ``first`` had that many operations."""

    step: int
    paused: bool = False


def interleave(
    engine: Engine,
    blocked: Blocked,
    first: Callable[[], None],
    second: Callable[[], None],
    step: int,
) -> Schedule:
    """Run ``first`` and ``second`` in two threads, ``second`` starting when ``first`` is about
    to make its ``step``-th database operation (or after ``first`` ended, if it makes fewer).

    While ``second`` runs, ``first`` waits until ``second`` has finished or waits for a lock
    (which only ``first`` can hold); exceptions are the jobs' own business (see :class:`Case`).
    """
    schedule = Schedule(step)
    ops = 0
    second_thread = threading.Thread(target=_quietly(second), name="second", daemon=True)

    def run_second_now() -> None:
        second_thread.start()
        deadline = time.monotonic() + DEADLINE_S
        while second_thread.is_alive() and not blocked():
            assert time.monotonic() < deadline, "the second job neither ended nor waited"
            time.sleep(0.002)

    def before_op(*_args: Any) -> None:
        nonlocal ops
        # The thread object, not its ident: an ended thread's ident is given to the next one.
        if threading.current_thread() is not first_runner:
            return
        if ops == step and not schedule.paused:
            schedule.paused = True
            run_second_now()
        ops += 1

    first_runner = threading.Thread(target=_quietly(first), name="first", daemon=True)
    event.listen(engine, "before_cursor_execute", before_op)
    event.listen(engine, "commit", before_op)
    try:
        first_runner.start()
        first_runner.join(DEADLINE_S * 2)
        assert not first_runner.is_alive(), "the first job did not end"
        if not schedule.paused:
            second_thread.start()
        second_thread.join(DEADLINE_S * 2)
        assert not second_thread.is_alive(), "the second job did not end"
    finally:
        event.remove(engine, "before_cursor_execute", before_op)
        event.remove(engine, "commit", before_op)
    return schedule


def _quietly(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` with its exceptions dropped: :class:`Case` records them for the retry and the
    report."""

    def run() -> None:
        with contextlib.suppress(Exception):
            fn()

    return run


# ---- what must hold, whatever the order ---------------------------------------------------------
def problems(settings: Settings, callbacks: Any, webhooks: FakeWebhook, case: Case) -> list[str]:
    """Everything wrong with ``case`` after both jobs (and their retries) ran; [] if nothing."""
    found = []
    unexpected = [
        f"{name}: {exc!r}"
        for name, excs in case.errors.items()
        for exc in excs
        if not isinstance(exc, callbacks.CallbackTaskNotOpenYet)
    ]
    if unexpected:
        found.append(f"unexpected errors {unexpected}")
    with session(settings) as s:
        tasks = list(
            s.execute(select(CallbackTask).where(CallbackTask.case_id == case.case_id)).scalars()
        )
    if len(tasks) != 1:
        return [*found, f"{len(tasks)} tasks"]
    (task,) = tasks
    want = {
        "status": "done",
        "completed_at": DONE_AT,
        "outcome": OUTCOME,
        "owner_staff_id": "STW-01",
        "owner_name": "刘管家",
        "department": DEPARTMENT,
        "service_item": "食品经营许可证核发",
        "due_at": COMPLETED_AT + dt.timedelta(seconds=3600),
        "escalated_at": None,
    }
    got = {name: getattr(task, name) for name in want}
    if got != want:
        found.append(f"task {got} != {want}")
    escalation = escalation_job(settings, case.case_id)
    if escalation is not None and escalation.status != "cancelled":
        found.append(f"escalation job {escalation.status}")
    # The escalation, had it been handed over anyway, sends nothing and marks nothing.
    callbacks.escalate_callback_task.fn(task.id)
    sent = [r.header("X-Govnotify-Id") for r in webhooks.requests]
    if f"{task.id}-escalation" in sent:
        found.append("escalated")
    with session(settings) as s:
        after = s.get(CallbackTask, task.id)
    assert after is not None
    if after.escalated_at is not None:
        found.append("escalated_at set")
    # The department head was told of the task exactly when the row says so.
    if (after.notified_at is not None) != (task.id in sent):
        found.append(f"notified_at {after.notified_at} but told: {task.id in sent}")
    # A redelivered completion closes nothing again, and is no error (no retries, no letter).
    try:
        callbacks.complete_callback_task.fn(completion_job(case.case_id, case.callback_id))
    except Exception as exc:
        found.append(f"redelivered completion: {exc!r}")
    return found


def escalation_job(settings: Settings, case_id: str) -> ScheduledJob | None:
    with session(settings) as s:
        return s.execute(
            select(ScheduledJob).where(
                ScheduledJob.key == f"callback-due:callback:{case_id}:key_project"
            )
        ).scalar_one_or_none()


def assert_closed_once(
    settings: Settings, callbacks: Any, webhooks: FakeWebhook, case: Case
) -> None:
    found = problems(settings, callbacks, webhooks, case)
    assert not found, f"{case.case_id}: {found}"


# ---- the tests ---------------------------------------------------------------------------------
@pytest.fixture
def engine(test_settings: Settings) -> Engine:
    """The engine the actors use (one per database URL and process)."""
    return get_engine(test_settings.resolved_database_url)


@pytest.fixture
def blocked(database_url: str) -> Iterator[Blocked]:
    probe = Blocked(database_url)
    yield probe
    probe.close()


def told(webhooks: FakeWebhook) -> list[str | None]:
    return [r.header("X-Govnotify-Id") for r in webhooks.requests]


def only_task(settings: Settings, case_id: str) -> CallbackTask:
    with session(settings) as s:
        return s.execute(select(CallbackTask).where(CallbackTask.case_id == case_id)).scalar_one()


def test_a_completion_before_the_opening_leaves_the_task_done_and_nobody_told(
    test_settings: Settings, callbacks: Any, hooks: tuple[FakeWebhook, Path]
) -> None:
    # Given
    webhooks, _ = hooks
    case = Case(callbacks, "K-1", "key_project")

    # When the steward's completion is applied entirely before the job opening its task
    case.complete()
    case.open()

    # Then the task is done with what only the opening knew; nothing scheduled, nobody told
    assert_closed_once(test_settings, callbacks, webhooks, case)
    assert escalation_job(test_settings, "K-1") is None
    assert told(webhooks) == []


def test_a_completion_after_the_opening_closes_the_task_and_cancels_its_escalation(
    test_settings: Settings, callbacks: Any, hooks: tuple[FakeWebhook, Path]
) -> None:
    # Given
    webhooks, _ = hooks
    case = Case(callbacks, "K-2", "key_project")

    # When the opening runs entirely before the completion
    case.open()
    case.complete()

    # Then
    assert_closed_once(test_settings, callbacks, webhooks, case)
    escalation = escalation_job(test_settings, "K-2")
    assert escalation is not None and escalation.status == "cancelled"
    assert told(webhooks) == [only_task(test_settings, "K-2").id]


def test_a_task_opened_between_the_completions_first_statement_and_its_next_is_closed(
    test_settings: Settings,
    callbacks: Any,
    hooks: tuple[FakeWebhook, Path],
    engine: Engine,
    blocked: Blocked,
) -> None:
    # Given the completion's first statement finds no task (the lost completion of the
    # key-project test: the opening then committed its task before the completion's next read)
    webhooks, _ = hooks
    case = Case(callbacks, "K-3", "key_project")

    # When the opening runs in between (before the completion's second database operation)
    schedule = interleave(engine, blocked, case.complete, case.open, step=1)
    case.retry_failed()

    # Then
    assert schedule.paused
    assert_closed_once(test_settings, callbacks, webhooks, case)


def test_a_completion_naming_a_task_not_opened_yet_is_retried_until_it_closes_it(
    test_settings: Settings, callbacks: Any, hooks: tuple[FakeWebhook, Path]
) -> None:
    # Given a completion naming the task by its id, applied before the task exists
    webhooks, _ = hooks
    case = Case(callbacks, "K-4", "task id")
    with pytest.raises(callbacks.CallbackTaskNotOpenYet):
        case.complete()
    with pytest.raises(callbacks.CallbackTaskNotOpenYet):
        case.complete()

    # When the task is opened, and the completion is retried
    case.open()
    case.complete()

    # Then (dramatiq retries what the actor does not declare it throws)
    assert not issubclass(
        callbacks.CallbackTaskNotOpenYet, callbacks.complete_callback_task.options["throws"]
    )
    assert only_task(test_settings, "K-4").id == case.callback_id
    assert_closed_once(test_settings, callbacks, webhooks, case)
    escalation = escalation_job(test_settings, "K-4")
    assert escalation is not None and escalation.status == "cancelled"


def test_an_open_task_escalates_once(
    test_settings: Settings, callbacks: Any, hooks: tuple[FakeWebhook, Path]
) -> None:
    # Given an opened task nobody called back (the other tests' "sends nothing" means something)
    webhooks, _ = hooks
    Case(callbacks, "K-5", "key_project").open()
    task = only_task(test_settings, "K-5")

    # When its escalation runs, twice (a redelivery)
    callbacks.escalate_callback_task.fn(task.id)
    callbacks.escalate_callback_task.fn(task.id)

    # Then
    assert told(webhooks) == [task.id, f"{task.id}-escalation"]
    assert only_task(test_settings, "K-5").escalated_at is not None


@pytest.mark.parametrize("names", ["key_project", "task id", "CB-20261126-0003"])
@pytest.mark.parametrize("first", ["completion", "opening"])
def test_wherever_one_job_overtakes_the_other_the_task_closes_once(
    test_settings: Settings,
    callbacks: Any,
    hooks: tuple[FakeWebhook, Path],
    engine: Engine,
    blocked: Blocked,
    first: str,
    names: str,
) -> None:
    # Given: for every n, a case whose `first` job is paused before its n-th database operation
    # while the other runs; `names` is what the completion's callback_id names
    webhooks, _ = hooks
    failures: dict[int, list[str]] = {}
    step = 0
    while True:
        case = Case(callbacks, f"K-{first[0]}{step}", names)
        jobs = (case.complete, case.open) if first == "completion" else (case.open, case.complete)

        # When
        schedule = interleave(engine, blocked, *jobs, step=step)
        case.retry_failed()

        # Then
        found = problems(test_settings, callbacks, webhooks, case)
        if found:
            failures[step] = found
        if not schedule.paused:
            break
        step += 1
    assert not failures, f"{len(failures)} of {step + 1} orders went wrong: {failures}"
