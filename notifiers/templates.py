"""SMS templates, one per flow, checked when they are loaded rather than when a citizen waits.

A template is plain text with ``{name}`` placeholders (``str.format`` syntax, named fields only).
Loading rejects bad syntax, positional or attribute fields, links, and placeholders that differ
from what the flow provides; rendering adds the sender's signature and the opt-out hint and
refuses missing values. Every value is checked again with the ingest rule for text that may
reach an SMS (:func:`schemas.events.sms_text_problem`): a value may come from the database or a
job, not only from a validated event, and one with a link, a phone number, a line break or 【】
is refused for good (:class:`UnsafeValueError`), naming the parameter, never quoting the value.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from notifiers.errors import UnsafeTextError
from notifiers.sms.text import contains_url
from schemas.events import sms_text_problem

__all__ = [
    "REQUIRED_PLACEHOLDERS",
    "SmsTemplate",
    "TemplateError",
    "UnsafeValueError",
    "load_templates",
]

#: Placeholders each shipped template must use, exactly: the flow that renders it provides
#: these values and no others. A template file not listed here is loaded without this check.
REQUIRED_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "renewal_reminder": frozenset(
        {"category_name", "license_id", "expires_on", "days_left", "issuing_department"}
    ),
    "survey_invitation": frozenset({"service_item", "service_point_name", "completed_on"}),
    # service_item: the key project's name (the completed case's service item).
    "callback_notice": frozenset({"service_item", "steward_name", "callback_date"}),
    # outcome: at most 60 characters, truncated by the caller.
    "rectification_closed": frozenset({"service_item", "department", "outcome"}),
}

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """Raised when a template is malformed or rendered with missing values."""


class UnsafeValueError(TemplateError, UnsafeTextError):
    """Raised when a value (or the rendered text) is not safe for an SMS; permanent.

    Both a :class:`TemplateError` (what rendering raises) and an
    :class:`~notifiers.errors.UnsafeTextError` (a permanent delivery error: the same value can
    never be sent, so retrying cannot help).
    """

    def __init__(self, message: str = "", *, field: str | None = None, **kwargs: object) -> None:
        # ValueError comes first in the MRO but takes no keywords: initialise the delivery side.
        UnsafeTextError.__init__(self, message, field=field, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SmsTemplate:
    """One flow's message text with its named placeholders."""

    name: str
    text: str
    placeholders: frozenset[str]

    @classmethod
    def parse(cls, name: str, text: str, *, required: set[str] | None = None) -> SmsTemplate:
        """Validate ``text`` and return the template.

        Parameters:
          name: the template's name, used in error messages.
          text: the body, without signature or opt-out hint.
          required: when given, the exact set of placeholders the text must use.

        Raises:
          TemplateError: on bad ``{}`` syntax, a positional/attribute/index field, a nested
            field in a format spec, a URL in the text, or placeholders that differ from
            ``required``.
        """
        if not text.strip():
            raise TemplateError(f"template {name!r} is empty")
        try:
            fields = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise TemplateError(f"template {name!r}: bad placeholder syntax: {exc}") from None

        placeholders: set[str] = set()
        for _literal, field, spec, _conversion in fields:
            if field is None:
                continue
            if not field.isidentifier():
                # "", "0", "a.b", "a[0]": positional or attribute access would let a template
                # reach into objects, and positional values have no name to check against.
                raise TemplateError(
                    f"template {name!r}: placeholder {{{field}}} must be a plain name"
                )
            if spec and "{" in spec:
                raise TemplateError(f"template {name!r}: nested placeholder in {{{field}:{spec}}}")
            placeholders.add(field)

        # Literal text only, each piece on its own (joining them across a placeholder makes
        # neighbours that no rendering has): a link built with a value is caught at render time.
        if any(contains_url(literal) for literal, *_ in fields):
            raise TemplateError(
                f"template {name!r} contains a URL; links are refused in SMS to mainland China"
            )

        if required is not None:
            missing = set(required) - placeholders
            extra = placeholders - set(required)
            problems = []
            if missing:
                problems.append(f"missing placeholders {sorted(missing)}")
            if extra:
                problems.append(f"unknown placeholders {sorted(extra)}")
            if problems:
                raise TemplateError(f"template {name!r}: {'; '.join(problems)}")

        return cls(name=name, text=text, placeholders=frozenset(placeholders))

    def render(
        self, values: Mapping[str, object], *, signature: str, opt_out_hint: str = ""
    ) -> str:
        """``signature`` + the filled-in text + ``opt_out_hint``.

        Values are NFKC-normalised, as at ingest, before they are checked and filled in.

        Raises:
          TemplateError: when the signature is blank or a placeholder has no value.
          UnsafeValueError: when a value breaks the SMS text rule (a link, a phone number, a
            line break, 【】, a character not allowed), or the finished text contains a URL.
        """
        if not signature.strip():
            # Every citizen message carries the sender's signature (【长安政务】): carriers in
            # China reject unsigned SMS, and citizens must see who writes to them.
            raise TemplateError(f"template {self.name!r}: a signature is required")
        missing = sorted(self.placeholders - values.keys())
        if missing:
            raise TemplateError(f"template {self.name!r}: no value for {', '.join(missing)}")
        used: dict[str, object] = {}
        for key in sorted(self.placeholders):
            value = values[key]
            # Text is sent in the form it was checked in; numbers and dates keep their type
            # for format specs ({days:02d}) and are checked as they will read.
            if isinstance(value, str):
                value = unicodedata.normalize("NFKC", value)
            problem = sms_text_problem(str(value))
            if problem is not None:
                raise UnsafeValueError(
                    f"template {self.name!r}: value of {key} {problem}", field=key
                )
            used[key] = value
        try:
            body = self.text.format_map(used)
        except (ValueError, TypeError) as exc:
            raise TemplateError(f"template {self.name!r}: cannot format: {exc}") from None
        text = f"{signature}{body}{opt_out_hint}"
        if contains_url(text):
            # A value next to literal text can still form a domain ("{host}/x").
            raise UnsafeValueError(f"template {self.name!r}: rendered text contains a URL")
        return text


def load_templates() -> dict[str, SmsTemplate]:
    """Every ``notifiers/templates/*.txt``, parsed; the file name without ``.txt`` is the name.

    Raises:
      TemplateError: when any template is invalid, so a bad file stops the service at start.
    """
    folder = resources.files("notifiers").joinpath("templates")
    templates: dict[str, SmsTemplate] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.is_file() or not entry.name.endswith(".txt"):
            continue
        name = entry.name.removesuffix(".txt")
        # Editors add a final newline; it is not part of the message.
        text = entry.read_text(encoding="utf-8").rstrip("\r\n")
        required = REQUIRED_PLACEHOLDERS.get(name)
        templates[name] = SmsTemplate.parse(
            name, text, required=set(required) if required is not None else None
        )
    missing = REQUIRED_PLACEHOLDERS.keys() - templates.keys()
    if missing:
        raise TemplateError(f"template files missing: {sorted(missing)}")
    return templates
