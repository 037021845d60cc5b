"""The operator audit: who did what to which subject, one ``operator_audit`` row per action.

Every ``govnotify`` command that changes state records its operator here (``--operator``, by
default the login name, so existing scripts keep working). :func:`add` writes the row in the
caller's transaction, next to the change; :func:`record` writes it in a transaction of its own,
for changes made by a function that commits its own session.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Mapping

from sqlalchemy.orm import Session

from infra.db import session
from infra.settings import Settings
from schemas.models import OperatorAudit

__all__ = ["UNKNOWN_OPERATOR", "add", "operator_name", "record"]

#: Recorded when no ``--operator`` is given and the process has no login name (a container).
UNKNOWN_OPERATOR = "unknown"

#: The column widths of ``operator_audit`` (schemas.models.OperatorAudit).
_OPERATOR_MAX = 64
_ACTION_MAX = 64
_SUBJECT_MAX = 200


def operator_name(given: str | None = None) -> str:
    """``given`` when set, else the operating-system user running the command."""
    if given and given.strip():
        return given.strip()[:_OPERATOR_MAX]
    try:
        return getpass.getuser()[:_OPERATOR_MAX]
    except (OSError, KeyError):  # no login name and no USER/LOGNAME variable
        return UNKNOWN_OPERATOR


def _detail(detail: str | Mapping[str, object]) -> str:
    if isinstance(detail, str):
        return detail
    return json.dumps(dict(detail), ensure_ascii=False, sort_keys=True, default=str)


def add(
    s: Session,
    operator: str,
    action: str,
    subject: str,
    detail: str | Mapping[str, object] = "",
) -> None:
    """Add one audit row to ``s`` (committed with the change it records).

    Parameters:
      operator: who acted (see :func:`operator_name`).
      action: the dotted command, e.g. ``opt-out.add``.
      subject: what it acted on; never a full phone or ID number (mask it first).
      detail: free text, or a mapping stored as JSON.
    """
    s.add(
        OperatorAudit(
            operator=operator[:_OPERATOR_MAX],
            action=action[:_ACTION_MAX],
            subject=subject[:_SUBJECT_MAX],
            detail=_detail(detail),
        )
    )


def record(
    settings: Settings,
    operator: str,
    action: str,
    subject: str,
    detail: str | Mapping[str, object] = "",
) -> None:
    """Write one audit row in a transaction of its own (see :func:`add` for the fields)."""
    with session(settings) as s:
        add(s, operator, action, subject, detail)
        s.commit()
