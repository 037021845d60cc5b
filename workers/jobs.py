"""Validating job payloads: a malformed job becomes a dead letter with its reason, not a crash."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

import workers.broker  # noqa: F401  (declares the broker the actors below are bound to)
from infra.db import session
from infra.deadletters import record_dead_letter
from workers.context import current

__all__ = ["dead_letter_job", "parse_job"]

log = logging.getLogger("govnotify.jobs")

M = TypeVar("M", bound=BaseModel)


def parse_job(model: type[M], job: Any, actor: str) -> M | None:
    """``model`` from ``job``, or None after recording a dead letter."""
    try:
        return model.model_validate(job)
    except ValidationError as exc:
        dead_letter_job(job, actor, "invalid_job", f"{actor}: {exc.errors(include_input=False)}")
        return None


def dead_letter_job(job: Any, actor: str, reason: str, detail: str) -> None:
    """Record one job (of a batch, maybe) that can never be done as a dead letter of stage
    ``job``, with its reason; the caller goes on with the others."""
    with session(current().settings) as s:
        record_dead_letter(
            s,
            stage="job",
            reason=reason,
            event_type=actor,
            detail=detail,
            raw=json.dumps(job, default=str, ensure_ascii=False).encode(),
        )
    log.error("%s job dead-lettered: %s", actor, reason)
