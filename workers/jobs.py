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

__all__ = ["parse_job"]

log = logging.getLogger("govnotify.jobs")

M = TypeVar("M", bound=BaseModel)


def parse_job(model: type[M], job: Any, actor: str) -> M | None:
    """``model`` from ``job``, or None after recording a dead letter."""
    settings = current().settings
    try:
        return model.model_validate(job)
    except ValidationError as exc:
        with session(settings) as s:
            record_dead_letter(
                s,
                stage="job",
                reason="invalid_job",
                event_type=actor,
                detail=f"{actor}: {exc.errors(include_input=False)}",
                raw=json.dumps(job, default=str, ensure_ascii=False).encode(),
            )
        log.error("invalid %s job dead-lettered", actor)
        return None
