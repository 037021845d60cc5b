"""Mainland China mobile numbers: accepted input forms, normalised to E.164.

Upstream systems write numbers every way people do (``138 0013 8000``, ``+86-138…``,
``0086…``); everything downstream (dedup keys, opt-out lookups, Twilio) needs one form, so the
number is normalised once, at the edge, to ``+86`` followed by 11 digits.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

__all__ = ["MOBILE_PATTERN", "MobileNumber", "normalize_mobile"]

#: The accepted input forms, as an ECMA/Python regex for the JSON Schema: an optional ``+86``,
#: ``86`` or ``0086`` prefix, then 11 digits starting 1[3-9], with single spaces or hyphens
#: allowed after the prefix and in the 3-4-4 grouping.
MOBILE_PATTERN = r"^(?:(?:\+|00)?86[ -]?)?1[3-9][0-9][ -]?[0-9]{4}[ -]?[0-9]{4}$"

_MOBILE_RE = re.compile(MOBILE_PATTERN, re.ASCII)
# Longest accepted form is "+86 138 0013 8000" (17) / "0086 138-0013-8000" (18); 20 leaves room
# for nothing else, so oversize input is refused before the regex runs.
_MAX_INPUT = 20
_ERROR = "not a mainland mobile number"
# What normalize_mobile drops from a number _MOBILE_RE accepted: all that is not a digit.
_SEPARATORS = str.maketrans("", "", "+ -")


def normalize_mobile(value: str) -> str:
    """``"138 0013 8000"`` → ``"+8613800138000"``; raise ValueError if not a mainland mobile.

    The message never contains the number: it ends up in logs and dead-letter records.
    """
    if not isinstance(value, str):
        raise ValueError(_ERROR)
    text = value.strip()
    if len(text) > _MAX_INPUT or not _MOBILE_RE.fullmatch(text):
        raise ValueError(_ERROR)
    # The regex pins the shape, so the national number is always the last 11 digits; and the
    # only characters besides ASCII digits it lets through are "+", " " and "-", which one C
    # call drops (a generator over the characters cost more than the regex).
    digits = text.translate(_SEPARATORS)
    return "+86" + digits[-11:]


#: A mainland mobile number, validated and stored as E.164 (``+8613800138000``).
MobileNumber = Annotated[
    str,
    AfterValidator(normalize_mobile),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": MOBILE_PATTERN,
            "maxLength": _MAX_INPUT,
            "description": (
                "Mainland China mobile number (11 digits starting 13-19), optionally prefixed "
                "+86, 86 or 0086, with optional spaces or hyphens; stored as E.164 +86…"
            ),
        }
    ),
]
