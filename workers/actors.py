"""Entry module for ``dramatiq workers.actors``: imports every actor module."""

from __future__ import annotations

from infra.logging import install_masking
from workers import (  # noqa: F401  (each module declares its actors)
    call_list,
    callbacks,
    delivery,
    green_channel,
    rectification,
    reminders,
    surveys,
)
from workers.broker import broker

__all__ = ["broker"]

# dramatiq configured its log handlers before importing us; mask personal data on all of them.
install_masking()
