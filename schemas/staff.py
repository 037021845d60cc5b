"""The staff directory: who is alerted at each service point and department, and how.

Green-channel alerts go to a service point's on-duty staff and escalate to its hall supervisor;
rectification tickets and renewal call-lists go to a department's head. Who those people are is
data, kept in a JSON file and validated in full at load, so a typo in a mobile number or a robot
name stops a worker at start instead of losing an alert at 10 a.m.

The bundled ``schemas/data/staff_directory.json`` is a sample of the Chang'an district ("1+16+N"
plus four post stations) with fake mobiles (``1380013xxxx``) and webhook URLs on loopback
placeholders (``127.0.0.1:8099``, where the sandbox listens); it must never reach real staff.
A department head who reads e-mail rather than a robot gets a webhook entry
``{"url": "mailto:market-head@changan.gov.cn", "format": "email"}`` (sent through
``GOVNOTIFY_SMTP_URL``, or to the sandbox file while it is empty).

Production replaces the whole file: set ``GOVNOTIFY_STAFF_DIRECTORY`` to the path of the real
one (same shape; robot keys and signing secrets live only there) and pass it to
:func:`load_staff_directory`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from schemas.addresses import parse_address
from schemas.events import ServicePointLevel
from schemas.phone import MobileNumber

__all__ = [
    "DepartmentEntry",
    "ServicePointEntry",
    "Staff",
    "StaffDirectory",
    "StaffDirectoryError",
    "Webhook",
    "load_staff_directory",
]

#: The bundled sample, inside the ``schemas`` package.
BUNDLED_DIRECTORY = "data/staff_directory.json"

_FROZEN = ConfigDict(extra="forbid", frozen=True)

_Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
_Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class StaffDirectoryError(ValueError):
    """Raised when the staff directory file is invalid; names the path and the field."""


def _hook_url(value: str) -> str:
    if value.startswith("mailto:"):
        _mailto_address(value)  # which format goes with it: Webhook._format_matches_url
        return value
    parts = urlsplit(value)
    if parts.scheme == "sandbox" and parts.hostname:
        # sandbox://<name>: recorded to a local file instead of posted (demo, development).
        return value
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The URL is not echoed: a robot URL carries its key.
        raise ValueError(
            "must be an http(s) URL with a host (or sandbox://name, or mailto:address with "
            '"format": "email")'
        )
    return value


def _mailto_address(url: str) -> str:
    """The one address of ``mailto:market-head@changan.gov.cn`` (percent-decoded).

    Raises:
      ValueError: for ``?subject=…`` and the like, several addresses, a display name, or an
        address :func:`schemas.addresses.parse_address` refuses; the value is not echoed.
    """
    target = url.removeprefix("mailto:")
    if "?" in target or "#" in target:
        raise ValueError("mailto: URL takes no ?query or #fragment, only one address")
    try:
        return parse_address(unquote(target), display_name=False).addr_spec
    except ValueError as exc:
        raise ValueError(f"mailto: address {exc}") from None


class Staff(BaseModel):
    """One staff member who can be alerted."""

    model_config = _FROZEN

    staff_id: _Id
    name: _Name
    #: E.164 (``+8613800130001``); the robots @-mention by it, SMS falls back on it.
    mobile: MobileNumber
    #: A key of :attr:`StaffDirectory.webhooks`; ``None`` when this person has no robot.
    webhook: _Id | None = None


class Webhook(BaseModel):
    """Where and how to reach staff: the arguments of ``notifiers.staff.webhook.WebhookNotifier``,
    or with ``"format": "email"`` the address of ``notifiers.staff.email.EmailNotifier``
    (``"url": "mailto:market-head@changan.gov.cn"``; the server is ``GOVNOTIFY_SMTP_URL``)."""

    model_config = _FROZEN

    url: Annotated[str, AfterValidator(_hook_url)]
    format: Literal["json", "wecom", "dingtalk", "email"] = "json"
    #: HMAC key ("json") or 加签 secret ("dingtalk"). Never logged or shown in ``repr``.
    secret: str | None = Field(default=None, min_length=1, repr=False)

    @model_validator(mode="after")
    def _format_matches_url(self) -> Webhook:
        mailto = self.url.startswith("mailto:")
        if self.format == "email" and not mailto:
            raise ValueError('url: "format": "email" needs a mailto: URL with one address')
        if mailto and self.format != "email":
            raise ValueError('format: a mailto: URL needs "format": "email"')
        if self.secret is not None and self.format == "wecom":
            # The notifier refuses it too; saying so here points at the file, not a worker.
            raise ValueError("secret: WeCom robots have no signing; remove the secret")
        if self.secret is not None and self.format == "email":
            raise ValueError(
                "secret: e-mail has no signing; the server's credentials are in GOVNOTIFY_SMTP_URL"
            )
        return self

    @property
    def email_address(self) -> str | None:
        """The address of a ``mailto:`` entry (``market-head@changan.gov.cn``), else ``None``."""
        return _mailto_address(self.url) if self.format == "email" else None


class ServicePointEntry(BaseModel):
    """A service point with the staff alerted there."""

    model_config = _FROZEN

    id: _Id
    name: _Name
    level: ServicePointLevel
    #: Alerted at once (green channel); at least one, or an alert would reach nobody.
    on_duty: tuple[Staff, ...] = Field(min_length=1)
    #: Gets the escalation when nobody on duty acknowledges in time.
    hall_supervisor: Staff


class DepartmentEntry(BaseModel):
    """A department in the hall and its head (rectification tickets, renewal call-lists)."""

    model_config = _FROZEN

    name: _Name
    head: Staff


class StaffDirectory(BaseModel):
    """Every service point and department with its staff, and the webhooks they are reached by."""

    model_config = _FROZEN

    service_points: tuple[ServicePointEntry, ...] = Field(min_length=1)
    departments: tuple[DepartmentEntry, ...] = Field(min_length=1)
    webhooks: dict[_Id, Webhook] = Field(default_factory=dict)

    _points_by_id: dict[str, ServicePointEntry] = PrivateAttr(default_factory=dict)
    _departments_by_name: dict[str, DepartmentEntry] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> StaffDirectory:
        problems: list[str] = []
        problems += _duplicates("service_points", "id", [p.id for p in self.service_points])
        problems += _duplicates("service_points", "name", [p.name for p in self.service_points])
        problems += _duplicates("departments", "name", [d.name for d in self.departments])

        seen: dict[str, tuple[str, Staff]] = {}
        for where, staff in self._staff_with_fields():
            if staff.webhook is not None and staff.webhook not in self.webhooks:
                problems.append(
                    f"{where}.webhook: unknown webhook {staff.webhook!r}; "
                    f"defined: {sorted(self.webhooks)}"
                )
            first = seen.setdefault(staff.staff_id, (where, staff))
            if first[1] != staff:
                # One person may serve at several points, but always as the same record:
                # otherwise which mobile gets the alert would depend on the lookup path.
                problems.append(
                    f"{where}.staff_id: {staff.staff_id!r} differs from the one at {first[0]}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._points_by_id = {p.id: p for p in self.service_points}
        self._departments_by_name = {d.name: d for d in self.departments}

    def _staff_with_fields(self) -> Iterable[tuple[str, Staff]]:
        for i, point in enumerate(self.service_points):
            for j, staff in enumerate(point.on_duty):
                yield f"service_points[{i}].on_duty[{j}]", staff
            yield f"service_points[{i}].hall_supervisor", point.hall_supervisor
        for i, department in enumerate(self.departments):
            yield f"departments[{i}].head", department.head

    def service_point(self, sp_id: str) -> ServicePointEntry:
        """The service point with id ``sp_id``.

        Raises:
          KeyError: when the directory has no such point.
        """
        try:
            return self._points_by_id[sp_id]
        except KeyError:
            raise KeyError(
                f"service point {sp_id!r} is not in the staff directory "
                f"({len(self._points_by_id)} points)"
            ) from None

    def department_head(self, name: str) -> Staff:
        """The head of the department called ``name`` (as in license categories and events).

        Raises:
          KeyError: when the directory has no such department; the message lists those it has.
        """
        try:
            return self._departments_by_name[name].head
        except KeyError:
            raise KeyError(
                f"department {name!r} is not in the staff directory; "
                f"known: {sorted(self._departments_by_name)}"
            ) from None

    def webhook_for(self, staff: Staff) -> Webhook | None:
        """The webhook ``staff`` is reached by, or ``None`` when they have none."""
        if staff.webhook is None:
            return None
        return self.webhooks[staff.webhook]  # every key was checked at load


def _duplicates(collection: str, key: str, values: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    problems = []
    for index, value in enumerate(values):
        if value in seen:
            problems.append(f"{collection}[{index}].{key}: duplicate {value!r}")
        seen.add(value)
    return problems


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``("service_points", 3, "on_duty", 0, "mobile")`` → ``service_points[3].on_duty[0].mobile``.

    Names of validator steps (``function-after[…]``) are left out: they are not fields.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "literal[")):
            continue
        else:
            path += f".{part}" if path else part
    return path


def _describe(error: ValidationError) -> str:
    items = error.errors(include_url=False, include_input=False)
    locs = [tuple(item["loc"]) for item in items]
    lines = []
    for item in items:
        loc = tuple(item["loc"])
        if item["type"] == "too_short" and any(
            len(other) > len(loc) and other[: len(loc)] == loc for other in locs
        ):
            # pydantic counts only the items that validated, so one bad service point also
            # reports "service_points: should have at least 1 item": noise, not a second fault.
            continue
        where = _field_path(tuple(item["loc"]))
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def load_staff_directory(path: Path | None = None) -> StaffDirectory:
    """Read and validate the staff directory.

    Parameters:
      path: the JSON file; ``None`` for the bundled sample (loopback webhooks, fake numbers).

    Raises:
      StaffDirectoryError: when the file cannot be read, is not JSON, or fails validation; the
        message names the file and every offending field (``service_points[3].on_duty[0].mobile``)
        but never a value, which may be a phone number or a robot key.
    """
    if path is None:
        source = resources.files("schemas").joinpath(BUNDLED_DIRECTORY)
        label = f"bundled {BUNDLED_DIRECTORY}"
    else:
        source = Path(path)
        label = str(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StaffDirectoryError(f"staff directory {label}: cannot read: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StaffDirectoryError(
            f"staff directory {label}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    try:
        return StaffDirectory.model_validate(raw)
    except ValidationError as exc:
        raise StaffDirectoryError(f"staff directory {label}: {_describe(exc)}") from None
