"""Staff alerts: the message, and the providers that carry it to staff.

Staff (on-duty window staff, hall supervisors, project stewards, department heads) are reached
through what they already watch, one provider module each, every one a
:class:`notifiers.base.Notifier` of :class:`StaffMessage`: :mod:`notifiers.staff.webhook` (our
JSON to a staff portal, or a WeCom / DingTalk group robot), :mod:`notifiers.staff.email` (one
address over SMTP) and :mod:`notifiers.staff.sandbox` (a file, the embedded default).
:func:`notifiers.registry.staff_notifier` picks one for an entry of the staff directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.pii import mask_numbers

__all__ = ["STAFF_MESSAGE_KINDS", "StaffMessage"]

#: Every kind of staff message the workers send; an unknown kind is a bug in the caller.
STAFF_MESSAGE_KINDS: frozenset[str] = frozenset(
    {
        "green_channel_alert",
        "green_channel_escalation",
        "callback_task",
        "callback_escalation",
        "rectification_ticket",
        "rectification_reminder",
        "rectification_overdue",
        "call_list",
    }
)


@dataclass(frozen=True)
class StaffMessage:
    """One alert, task or ticket for staff.

    Raises:
      ValueError: when ``kind`` is not one of :data:`STAFF_MESSAGE_KINDS`.
    """

    #: Our notification/alert id; sent as ``X-Govnotify-Id`` so the receiver can deduplicate.
    message_id: str
    #: One of :data:`STAFF_MESSAGE_KINDS`.
    kind: str
    #: Short Chinese title.
    title: str
    #: Chinese body; what looks like a mobile or ID number in it is masked when it is sent
    #: (:meth:`shown`: group chats are wide).
    text: str
    #: Structured fields (ids, service point, deadline ISO …); JSON-serialisable.
    data: Mapping[str, Any]
    #: E.164 mainland mobiles of staff to @-mention in a robot message.
    mention_mobiles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in STAFF_MESSAGE_KINDS:
            raise ValueError(
                f"unknown staff message kind {self.kind!r}; expected one of "
                f"{sorted(STAFF_MESSAGE_KINDS)}"
            )

    def shown(self) -> tuple[str, str]:
        """Title and text as every staff channel shows them (robot, e-mail, sandbox file):
        mobile- and ID-shaped numbers masked. ``data`` is not: its ids are for lookups."""
        return mask_numbers(self.title), mask_numbers(self.text)
