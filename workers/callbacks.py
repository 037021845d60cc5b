"""Follow-up callbacks (跟踪回访) owed by project stewards and departments.

A key project's completed case opens a callback task for its steward (due
``callback_due_after_s`` later) and tells the enterprise by SMS who will call and by when. A
real-name negative review opens one for the department head. ``callback.completed`` closes a
task; a task still open at its due time escalates to the department head.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import dramatiq
from sqlalchemy import func, select, update

import workers.broker  # noqa: F401  (declares the broker the actors below are bound to)
from infra.db import session
from notifiers.errors import PermanentDeliveryError
from notifiers.staff import StaffMessage
from notifiers.templates import load_templates
from schemas.commands import CallbackDoneJob, CaseJob
from schemas.models import CallbackTask, utcnow
from workers import ledger
from workers.context import current
from workers.delivery import RETRY_OPTIONS, attempt, create_from_template
from workers.jobs import parse_job
from workers.scheduled_jobs import cancel, schedule
from workers.staff import directory, notify_staff

__all__ = [
    "complete_callback_task",
    "escalate_callback_task",
    "open_callback_task",
    "open_key_project_callback",
]

log = logging.getLogger("govnotify.callbacks")

FLOW = "callback"


class CallbackTaskNotOpenYet(Exception):
    """Raised when a callback is reported done before its task was opened (retried)."""


QUEUE = current().settings.queue("callbacks")
#: Kinds of callback task; ``callback.completed`` may name a task by its kind.
KINDS = frozenset({"key_project", "negative_review"})
NOTICE = load_templates()["callback_notice"]


def _escalation_key(task_key: str) -> str:
    return f"callback-due:{task_key}"


def open_callback_task(
    *,
    case_id: str,
    kind: str,
    owner_staff_id: str,
    owner_name: str,
    department: str,
    service_item: str,
    due_at: dt.datetime,
    event_id: str | None = None,
) -> CallbackTask:
    """Open the task once per (case, kind), tell its owner, schedule the escalation.

    The owner is told through the department head's webhook until one took it
    (``notified_at``): a webhook failure raises, and the actor's retry finds the task open but
    untold, so it tells them then rather than never.

    The task's row is locked (``FOR UPDATE``) from reading its status until the escalation is
    scheduled: a completion closing it meanwhile waits, then finds the escalation to cancel; a
    completion that closed it first is seen, and nothing is scheduled (see
    :func:`complete_callback_task`). ``event_id`` is the upstream event that caused it.
    """
    settings = current().settings
    key = f"callback:{case_id}:{kind}"
    with session(settings) as s:
        ledger.insert_ignore(
            s,
            CallbackTask.__table__,
            {
                "id": uuid.uuid4().hex,
                "idempotency_key": key,
                "case_id": case_id,
                "kind": kind,
                "owner_staff_id": owner_staff_id,
                "owner_name": owner_name,
                "department": department,
                "service_item": service_item,
                "status": "open",
                "due_at": due_at,
                "created_at": utcnow(),
                "event_id": event_id,
            },
            "idempotency_key",
        )
        task = s.execute(
            select(CallbackTask).where(CallbackTask.idempotency_key == key).with_for_update()
        ).scalar_one()
        if task.status == "done":
            # The steward's completion came first and left the task done: fill in what only
            # the opening knows; nothing to escalate, nobody to remind.
            s.execute(
                update(CallbackTask)
                .where(CallbackTask.id == task.id, CallbackTask.department == "")
                .values(
                    owner_staff_id=owner_staff_id,
                    owner_name=owner_name,
                    department=department,
                    service_item=service_item,
                    due_at=due_at,
                    # What caused the task is the event that opened it, not its completion.
                    event_id=event_id or task.event_id,
                )
            )
            s.commit()
            return task
        # Commits, and so releases the row: the escalation exists before anyone can close it.
        schedule(
            s, _escalation_key(key), due_at, "escalate_callback_task", task.id, event_id=event_id
        )
        # A completion may have closed it since: then remind nobody of a call already made.
        status = s.execute(
            select(CallbackTask.status).where(CallbackTask.id == task.id)
        ).scalar_one()
        s.commit()
    if task.notified_at is None and status == "open":
        _tell_department_head(task)
    return task


def _tell_department_head(task: CallbackTask) -> None:
    settings = current().settings
    due_local = task.due_at.astimezone(settings.tz)
    try:
        head = [directory().department_head(task.department)]
    except KeyError:
        head = []
        log.error(
            "callback task %s: department %s not in the staff directory", task.id, task.department
        )
    notify_staff(
        head,
        StaffMessage(
            message_id=task.id,
            kind="callback_task",
            title="跟踪回访任务",
            text=f"{task.owner_name}：请于{due_local:%m月%d日%H:%M}前完成办件{task.case_id}"
            f"（{task.service_item}）的跟踪回访，完成后请登记回访结果。",
            data={
                "task_id": task.id,
                "case_id": task.case_id,
                "kind": task.kind,
                "due_at": task.due_at.isoformat(),
            },
        ),
        flow=FLOW,
    )
    with session(settings) as s:
        s.execute(
            update(CallbackTask)
            .where(CallbackTask.id == task.id, CallbackTask.notified_at.is_(None))
            .values(notified_at=current().clock.utcnow())
        )
        s.commit()


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def open_key_project_callback(job: dict[str, Any]) -> None:
    """A key project's case completed: a task for its steward and a notice to the enterprise."""
    settings = current().settings
    case = parse_job(CaseJob, job, "open_key_project_callback")
    if case is None or case.completed_at is None or not case.steward_id:
        return
    due_at = case.completed_at + dt.timedelta(seconds=settings.callback_due_after_s)
    open_callback_task(
        case_id=case.case_id,
        kind="key_project",
        owner_staff_id=case.steward_id,
        owner_name=case.steward_name or case.steward_id,
        department=case.steward_department or case.department,
        service_item=case.service_item,
        due_at=due_at,
        event_id=case.event_id,
    )
    params = {
        "service_item": case.service_item,
        # The template reads 项目管家{steward_name}: no name gives 项目管家将于…
        "steward_name": case.steward_name or "",
        "callback_date": f"{due_at.astimezone(settings.tz):%m月%d日}",
    }
    with session(settings) as s:
        row = create_from_template(
            s,
            NOTICE,
            params,
            key=f"callback-notice:{case.case_id}",
            flow="callback_notice",
            subject_id=case.case_id,
            recipient=case.applicant_mobile,
            category="callbacks",
            event_at=case.completed_at,
            event_id=case.event_id,
            event_source=case.event_source,
        )
    attempt(row)


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def complete_callback_task(job: dict[str, Any]) -> None:
    """Close the task ``callback_id`` names, once, and cancel its escalation.

    ``callback_id`` names a kind (the case's task of that kind, opened or not yet), our task id,
    or neither (then every open task of the case is closed). The completion and the job opening
    the task leave the stream in one batch and workers run them side by side, so nothing here
    reads whether a task exists and then acts on the answer: each step is one statement whose
    outcome says what happened (an insert that conflicted, an update that matched), and a
    miss is followed by a re-check of what may have appeared since.
    """
    settings = current().settings
    done = parse_job(CallbackDoneJob, job, "complete_callback_task")
    if done is None:
        return
    with session(settings) as s:
        if done.callback_id in KINDS:
            closed = _complete_kind(s, done)
        else:
            closed = _complete_by_id(s, done)
            if closed is None:
                closed = _complete_case(s, done)
        # In the transaction that closed the tasks (cancel commits): an opening scheduling an
        # escalation holds the task's row until it is scheduled, so it is there to cancel.
        for key in closed:
            cancel(s, _escalation_key(key))
        s.commit()


def _close(s: Any, done: CallbackDoneJob, *where: Any) -> list[str]:
    """Close the open tasks matching ``where`` (one UPDATE); their idempotency keys.

    READ COMMITTED: a task being opened (its row locked) is waited for, then closed.
    """
    return list(
        s.execute(
            update(CallbackTask)
            .where(*where, CallbackTask.status == "open")
            .values(status="done", completed_at=done.completed_at, outcome=done.outcome)
            .returning(CallbackTask.idempotency_key)
            .execution_options(synchronize_session=False)
        ).scalars()
    )


def _complete_kind(s: Any, done: CallbackDoneJob) -> list[str]:
    """The case's task of the kind ``callback_id`` names, by the key the opening uses.

    Inserted done if it does not exist yet: the completion overtook the job opening it (both
    come from one stream batch), and the opening will find it done, fill in the rest and
    schedule nothing. If it exists, closed if it is still open; a row that exists and is not
    open is done already (status only moves forward), and a redelivery closes nothing.
    """
    key = f"callback:{done.case_id}:{done.callback_id}"
    created = ledger.insert_ignore(
        s,
        CallbackTask.__table__,
        {
            "id": uuid.uuid4().hex,
            "idempotency_key": key,
            "case_id": done.case_id,
            "kind": done.callback_id,
            "owner_staff_id": done.staff_id,
            "owner_name": "",
            "department": "",
            "service_item": "",
            "status": "done",
            "due_at": done.completed_at,
            "created_at": utcnow(),
            "completed_at": done.completed_at,
            "outcome": done.outcome,
            "event_id": done.event_id,
        },
        "idempotency_key",
    )
    if created:
        log.info("callback for case %s completed before its task was opened", done.case_id)
        return []
    return _close(s, done, CallbackTask.idempotency_key == key)


def _complete_by_id(s: Any, done: CallbackDoneJob) -> list[str] | None:
    """The case's task whose id is ``callback_id``; None if the case has no such task."""
    by_id = (CallbackTask.id == done.callback_id, CallbackTask.case_id == done.case_id)
    while True:
        closed = _close(s, done, *by_id)
        if closed:
            return closed
        status = s.execute(select(CallbackTask.status).where(*by_id)).scalar_one_or_none()
        if status is None:
            return None
        if status != "open":
            return []  # done already: a redelivery
        # Opened between the two statements: the next update closes it (or finds it done).


def _complete_case(s: Any, done: CallbackDoneJob) -> list[str]:
    """Every open task of the case (``callback_id`` names none of them).

    Raises CallbackTaskNotOpenYet while the case has no task at all: the job opening it has
    not run yet, or ``callback_id`` is our id of a task not written yet. Retried until it
    exists; out of retries, it is a dead letter.
    """
    while True:
        closed = _close(s, done, CallbackTask.case_id == done.case_id)
        if closed:
            return closed
        tasks, still_open = s.execute(
            select(
                func.count(),
                func.count().filter(CallbackTask.status == "open"),
            ).where(CallbackTask.case_id == done.case_id)
        ).one()
        if not tasks:
            raise CallbackTaskNotOpenYet(f"no callback task for case {done.case_id} yet")
        if not still_open:
            return []  # every task of the case is done already: a redelivery
        # Opened between the two statements: the next update closes it.


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def escalate_callback_task(task_id: str) -> None:
    """Still open at its due time: tell the owner's department head."""
    settings = current().settings
    with session(settings) as s:
        task = s.get(CallbackTask, task_id)
    if task is None or task.status != "open" or task.escalated_at is not None:
        return
    try:
        head = [directory().department_head(task.department)]
    except KeyError:
        head = [directory().service_points[0].hall_supervisor]
    notify_staff(
        head,
        StaffMessage(
            message_id=f"{task.id}-escalation",
            kind="callback_escalation",
            title="跟踪回访逾期",
            text=f"{task.owner_name}负责的办件{task.case_id}（{task.service_item}）跟踪回访已逾期未完成，请督办。",
            data={"task_id": task.id, "case_id": task.case_id, "kind": task.kind},
        ),
        flow=FLOW,
    )
    with session(settings) as s:
        s.execute(
            update(CallbackTask)
            .where(
                CallbackTask.id == task.id,
                CallbackTask.status == "open",
                CallbackTask.escalated_at.is_(None),
            )
            .values(escalated_at=current().clock.utcnow())
        )
        s.commit()
