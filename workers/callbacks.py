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
from sqlalchemy import select, update

from infra.db import session
from notifiers.errors import PermanentDeliveryError
from notifiers.templates import load_templates
from notifiers.webhook import StaffMessage
from schemas.commands import CallbackDoneJob, CaseJob
from schemas.models import CallbackTask, utcnow
from workers import ledger
from workers.broker import settings
from workers.delivery import CLOCK, RETRY_OPTIONS, attempt, create_from_template
from workers.jobs import parse_job
from workers.scheduler import cancel, schedule
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


QUEUE = settings.queue("callbacks")
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
) -> CallbackTask:
    """Open the task once per (case, kind), tell its owner, schedule the escalation.

    The owner is told through the department head's webhook until one took it
    (``notified_at``): a webhook failure raises, and the actor's retry finds the task open but
    untold, so it tells them then rather than never.
    """
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
            },
            "idempotency_key",
        )
        task = s.execute(
            select(CallbackTask).where(CallbackTask.idempotency_key == key)
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
                )
            )
            s.commit()
            return task
        schedule(s, _escalation_key(key), due_at, "escalate_callback_task", task.id)
    if task.notified_at is None:
        _tell_department_head(task)
    return task


def _tell_department_head(task: CallbackTask) -> None:
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
            .values(notified_at=CLOCK.utcnow())
        )
        s.commit()


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def open_key_project_callback(job: dict[str, Any]) -> None:
    """A key project's case completed: a task for its steward and a notice to the enterprise."""
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
        )
    attempt(row)


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def complete_callback_task(job: dict[str, Any]) -> None:
    """Close the task named by ``callback_id`` (our task id); unknown ids close the case's tasks."""
    done = parse_job(CallbackDoneJob, job, "complete_callback_task")
    if done is None:
        return
    with session(settings) as s:
        tasks = _open_tasks(s, done.case_id)
        if not tasks:
            done_already = s.execute(
                select(CallbackTask.id).where(CallbackTask.case_id == done.case_id)
            ).first()
            if done_already is None:
                if done.callback_id not in KINDS:
                    # Named by a task id we have not written yet: retry until it exists; out
                    # of retries, it is a dead letter.
                    raise CallbackTaskNotOpenYet(f"no callback task for case {done.case_id} yet")
                # The completion overtook the job that opens the task (both come from one
                # stream batch, and workers run jobs side by side): record the task done now,
                # under the key the opening uses, so it finds it done instead of escalating a
                # call that was made.
                if _record_early_completion(s, done):
                    return
                # The opening inserted its task meanwhile: close that one, as below.
                tasks = _open_tasks(s, done.case_id)
        named = [t for t in tasks if done.callback_id in (t.id, t.kind)]
        for task in named or tasks:
            s.execute(
                update(CallbackTask)
                .where(CallbackTask.id == task.id, CallbackTask.status == "open")
                .values(status="done", completed_at=done.completed_at, outcome=done.outcome)
            )
            cancel(s, _escalation_key(task.idempotency_key))
        s.commit()


def _open_tasks(s: Any, case_id: str) -> list[CallbackTask]:
    return list(
        s.execute(
            select(CallbackTask).where(
                CallbackTask.case_id == case_id, CallbackTask.status == "open"
            )
        ).scalars()
    )


def _record_early_completion(s: Any, done: CallbackDoneJob) -> bool:
    """A done task keyed like the one ``open_callback_task`` will open (it fills in the rest);
    False if that task was inserted meanwhile."""
    created = ledger.insert_ignore(
        s,
        CallbackTask.__table__,
        {
            "id": uuid.uuid4().hex,
            "idempotency_key": f"callback:{done.case_id}:{done.callback_id}",
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
        },
        "idempotency_key",
    )
    if created:
        log.info("callback for case %s completed before its task was opened", done.case_id)
    return created


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def escalate_callback_task(task_id: str) -> None:
    """Still open at its due time: tell the owner's department head."""
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
            .values(escalated_at=CLOCK.utcnow())
        )
        s.commit()
