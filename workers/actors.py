"""Entry module for ``dramatiq workers.actors``: imports every actor module."""

from __future__ import annotations

from infra.logging import install_masking
from workers import reminders  # noqa: F401  (declares the renewal actors)
from workers.broker import broker

__all__ = ["broker"]

# dramatiq configured its log handlers before importing us; mask personal data on all of them.
install_masking()
