"""The ten license categories of the proactive-renewal registry, kept as data.

The list lives in ``schemas/data/license_categories.json`` so a region can change names,
departments or validity without touching code; the event schema's ``category`` enum is read
from it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

__all__ = ["CATEGORY_CODES", "LicenseCategory", "load_categories"]


@dataclass(frozen=True)
class LicenseCategory:
    """One license category: its code in events, its names, issuer and usual validity."""

    code: str
    name_zh: str
    name_en: str
    issuing_department: str
    validity_years: int


@functools.cache
def _load() -> tuple[LicenseCategory, ...]:
    text = resources.files("schemas").joinpath("data/license_categories.json").read_text("utf-8")
    rows = json.loads(text)
    categories = tuple(LicenseCategory(**row) for row in rows)
    codes = [c.code for c in categories]
    # A duplicate code would silently shadow a category in the dict below; fail at import instead.
    if len(set(codes)) != len(codes):
        raise ValueError("license_categories.json has duplicate codes")
    return categories


def load_categories() -> dict[str, LicenseCategory]:
    """Code → category, in file order. A fresh dict each call; the file is read once."""
    return {c.code: c for c in _load()}


#: The category codes, in file order; the ``category`` enum of license events.
CATEGORY_CODES: tuple[str, ...] = tuple(c.code for c in _load())
