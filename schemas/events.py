"""The versioned event contract between upstream systems and govnotify.

Every event is a JSON object: an :class:`Envelope` (id, type, schema version, time, source) around
a ``payload`` whose model is looked up in :data:`EVENT_REGISTRY` by ``(event_type,
schema_version)``. :func:`parse_event` is the single gate: it either returns a fully validated
:class:`Event` (phones normalised to E.164) or raises :class:`~schemas.errors.EventRejected` with
one of :data:`~schemas.errors.REJECT_REASONS` and a detail safe to log and send back.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticSerializationError

from schemas.categories import CATEGORY_CODES
from schemas.errors import EventRejected
from schemas.phone import MobileNumber

__all__ = [
    "DEFAULT_RATING_SOURCE",
    "EVENT_REGISTRY",
    "FAMILIES",
    "LINK_HINT",
    "LINK_PATTERN",
    "MAX_CLOCK_SKEW_S",
    "MAX_EVENT_BYTES",
    "PHONE_RUN",
    "PLAIN_RANGES",
    "SMS_PUNCTUATION",
    "UNSAFE_TEXT",
    "Applicant",
    "CallbackCompletedPayload",
    "CaseCompletedPayload",
    "CasePayload",
    "Envelope",
    "EvaluationPayload",
    "Event",
    "EventSpec",
    "GreenChannelAckPayload",
    "LicensePayload",
    "LicenseRevokedPayload",
    "ServicePoint",
    "SmsId",
    "SmsName",
    "Steward",
    "contains_link",
    "contains_phone",
    "event_types",
    "make_event",
    "parse_event",
    "register",
    "sms_text_problem",
    "sms_text_problem_detailed",
    "spec_for",
]

#: Largest accepted raw event; matches the default of ``GOVNOTIFY_MAX_EVENT_BYTES``.
MAX_EVENT_BYTES = 64 * 1024

#: How far ``occurred_at`` may be ahead of our clock before the event is refused
#: (``occurred_in_future``); the default of ``GOVNOTIFY_MAX_CLOCK_SKEW_S``. Upstream clocks drift
#: by seconds; an event dated hours or years ahead would freeze the state kept by occurred_at.
MAX_CLOCK_SKEW_S = 300

#: Kafka topic families; each event type belongs to exactly one.
FAMILIES: tuple[str, ...] = ("licenses", "cases", "evaluations")

#: ``source`` of the default ratings govnotify publishes (workers.surveys.record_default_rating);
#: the stream marks an evaluation from it as a default (streams.case_rules).
DEFAULT_RATING_SOURCE = "govnotify-default-rating"

# At most this many field errors are named in a rejection detail; the rest are counted.
_MAX_ERRORS_IN_DETAIL = 5
# Field names come from the sender too; a huge unknown key must not blow up the detail.
_MAX_LOC_PART = 64


# ---- field types ---------------------------------------------------------------------------
def _iso_only(value: object) -> object:
    # Pydantic's lax mode reads numbers as Unix timestamps; a contract for many upstream systems
    # is clearer with ISO 8601 strings only (JSON Schema says "format": "date-time" / "date").
    if isinstance(value, int | float):
        raise ValueError("must be an ISO 8601 string")
    return value


def _known_category(value: str) -> str:
    if value not in CATEGORY_CODES:
        raise ValueError("unknown license category code")
    return value


# ---- text that may reach an SMS ------------------------------------------------------------
# Upstream free text (a service item, a department, a steward's name) is rendered into SMS sent
# under the centre's signature. Whatever could make such a message lie about who sends it or
# send the citizen elsewhere is refused at ingest, not stripped: a link, a phone number, a line
# break (a second "message" under a fake 【公安局】), the signature brackets themselves, control
# and invisible characters. notifiers.templates applies the same rule again when rendering.

#: pydantic error type of a value refused by the rule; :func:`parse_event` turns it into the
#: reject reason ``unsafe_text``.
UNSAFE_TEXT = "unsafe_text"

#: Punctuation allowed besides letters and digits, after NFKC (which has already turned
#: full-width ，（）：；！？ into their ASCII forms and the ideographic space into a space). The
#: ASCII period is allowed only where it cannot start a domain label (see ``_DOMAIN_DOT``).
SMS_PUNCTUATION = frozenset(" ,.()-:;!?'\"&、。“”‘’《》〔〕·・•—–")

# The SMS signature's brackets and their look-alikes: only our own signature may use them.
_SIGNATURE_BRACKETS = frozenset("【】〖〗")
# Letters that render as nothing (Hangul fillers are category Lo): a hidden payload.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
# Dots a phone or a reader takes for a domain separator, after NFKC (．→ . and ｡ → 。).
_DOTS = ".。·・"
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Top-level domains of more than two letters that count on their own; every two-letter TLD (a
# country code: .cn, .ru, .io) counts. "Mr.Smith" or "e.g." is not a link; "evil.ru" is.
_GENERIC_TLDS = (
    "com|net|org|gov|edu|mil|int|info|biz|top|xyz|vip|site|online|app|link|shop|club|wang|ink"
    "|mobi|asia|pro|name|tel|live|store|tech|cloud|fun|icu|work|red|ltd|group|cyou|press|space"
    "|website|host|art|love|life|news|video|email|bank|law"
)
# IDN top-level domains in Chinese (例子.中国); after "." only: "。中国" is an ordinary sentence.
_CJK_TLDS = (
    "中国|中國|公司|网络|網絡|网址|网站|在线|中文网|商城|商店|商标|集团|手机|政务|公益|我爱你"
    "|信息|企业|娱乐|游戏|购物|移动|联通|广东|香港|台湾|台灣|澳门|新加坡|佛山|慈善|健康|时尚|微博"
)
_ASCII_TLD = rf"(?:[a-z]{{2}}|{_GENERIC_TLDS})(?![a-z0-9-])"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"

#: Anything a phone would make tappable or a reader would type into a browser, on NFKC text:
#: a scheme (``https://``, ``tel:``), ``www.``, a punycode label (``xn--``), an IPv4 address
#: (with any port or path), an ASCII domain with ``.``/``。``/``·`` between labels and a known
#: TLD, or an internationalised domain (``例子.中国``, ``政务。cn``). A run of Chinese characters
#: is tried from its first character only: a domain that ends a run also ends it from its start,
#: so :meth:`re.Pattern.search` finds the same, without retrying each suffix of a long sentence
#: (quadratic). The schemes are tried only where a letter is (the lookahead): not the list of
#: names at each Chinese character. A reminder's ~100 characters: 35 → 17 µs.
LINK_PATTERN = re.compile(
    rf"""
      [a-z][a-z0-9+.-]{{0,30}}:\s*//                                    # any scheme with //
    | (?=[a-z])(?<![a-z0-9])(?:https?|ftp|mailto|tel|sms|smsto|weixin|alipays?|intent|market
        |javascript|data|file)\s*:                                      # schemes without //
    | (?<![a-z0-9])www\s*[{_DOTS}]                                      # www. without a scheme
    | (?<![a-z0-9])xn--                                                 # punycode (IDN) label
    | (?<![0-9.])[0-9]{{1,3}}(?:[.。][0-9]{{1,3}}){{3}}(?![0-9])         # IPv4, port/path after
    | (?<![a-z0-9-]){_LABEL}(?:[{_DOTS}]{_LABEL})*[{_DOTS}]{_ASCII_TLD}  # evil.ru, gov-check。cn
    | (?<![{_CJK}])[{_CJK}]+(?:[.](?:{_CJK_TLDS}|{_ASCII_TLD})|[。·・]{_ASCII_TLD})  # 例子.中国
    """,
    re.IGNORECASE | re.VERBOSE,
)
# The ASCII period may end a sentence or sit in a number (12.5), never before a letter, where
# it could form a domain ("evil.anything", "长安.abc"); LINK_PATTERN catches the rest.
_DOMAIN_DOT = re.compile(r"\.(?=[A-Za-z])")

#: A run of digits, optionally after ``+`` and with single spaces or hyphens between groups
#: (``029-8888 6666``, ``+86 138 0013 8000``). A run touching an ASCII letter, or joined to one
#: by a hyphen, is part of a code (``JY16101160012345``, ``SX-SP-2023-0456``, a hex id), not
#: something to dial.
PHONE_RUN = re.compile(
    r"(?<![0-9A-Za-z])(?<![A-Za-z]-)(\+\s?)?[0-9](?:[ -]?[0-9])*(?![0-9A-Za-z])(?!-[A-Za-z])"
)


def _is_phone(plus: bool, digits: str) -> bool:
    """Whether a digit run is dialable in China (the numbering plan, not any 7 digits)."""
    n = len(digits)
    return (
        (plus and n >= 5)  # +86 …, or any international number
        or 7 <= n <= 8  # a local fixed-line number (8888 6666)
        or (digits[0] == "0" and n >= 9)  # area code + local number, or 00 international
        or (digits[0] == "1" and n == 11)  # a mobile
        or (digits[:3] in ("400", "800") and n == 10)  # a service hotline
        or (digits[:2] == "86" and 12 <= n <= 13)  # 86 + a mobile or fixed line, no "+"
    )


def contains_link(text: str) -> bool:
    """True when ``text`` (any normalisation) holds something link-shaped, see LINK_PATTERN."""
    return LINK_PATTERN.search(unicodedata.normalize("NFKC", text)) is not None


def contains_phone(text: str) -> bool:
    """True when ``text`` (any normalisation) holds a number one could dial in China."""
    return _has_phone(unicodedata.normalize("NFKC", text))


_NOT_DIGIT = re.compile(r"[^0-9]")


def _has_phone(text: str) -> bool:
    # contains_phone on text that is NFKC already.
    for m in PHONE_RUN.finditer(text):
        if _is_phone(m.group(1) is not None, _NOT_DIGIT.sub("", m.group(0))):
            return True
    return False


def _allowed_char(ch: str, previous: str) -> bool:
    if "0" <= ch <= "9" or ch in SMS_PUNCTUATION:
        return True
    category = unicodedata.category(ch)
    if category[0] == "L":
        return ch not in _INVISIBLE_LETTERS
    # Combining marks (Tibetan vowel signs, say) only on a letter.
    return category[0] == "M" and unicodedata.category(previous)[:1] in ("L", "M")


_CONTROL_PROBLEM = "contains a line break or control character"
_BRACKETS_PROBLEM = "contains 【】 brackets, reserved for the SMS signature"
_LINK_PROBLEM = "contains a link (URL or domain)"
_PHONE_PROBLEM = "contains a phone number"

#: Ranges of the characters almost every real value is made of, each one that
#: :func:`_allowed_char` allows whatever precedes it (no control character, no bracket, no
#: combining mark): ASCII letters and digits, and the CJK Unified Ideographs (with extension A).
#: tests/unit/schemas/test_safe_text_fast.py checks every one of them against the rule.
PLAIN_RANGES = (("A", "Z"), ("a", "z"), ("0", "9"), ("\u3400", "\u4dbf"), ("\u4e00", "\u9fff"))
# Text made only of those and SMS_PUNCTUATION. One C-speed match instead of three Python loops
# over the characters (unicodedata.category per character: ~10% of the relay's CPU).
_PLAIN_TEXT = re.compile(
    "["
    + "".join(f"{lo}-{hi}" for lo, hi in PLAIN_RANGES)
    + "".join(re.escape(ch) for ch in sorted(SMS_PUNCTUATION))
    + "]*"
)
# Every match of LINK_PATTERN holds a ":" (a scheme), "www", "xn--", one of _DOTS followed by a
# letter or a digit (an address's "1.2", a domain's ".ru" or "。cn") or a "." followed by an
# ideograph ("例子.中国"); so does every match of _DOMAIN_DOT and of
# notifiers.sms.text.URL_PATTERN. Text without any of them has no link to look for: the "。"
# between a Chinese SMS's sentences is no hint.
LINK_HINT = re.compile(rf":|www|xn--|[{_DOTS}][a-z0-9]|\.[{_CJK}]", re.IGNORECASE)
# Every number _is_phone calls dialable has at least 7 digits, or 5 after a "+", joined in a
# PHONE_RUN by at most one space or hyphen between two digits (and one whitespace after the
# "+"). Text without such a run has no phone number; an id with a 5 or 6 digit serial number
# (LIC-PRAC-000005) is not searched for one.
_PHONE_HINT = re.compile(r"[0-9](?:[ -]?[0-9]){6}|\+\s?[0-9](?:[ -]?[0-9]){4}")


def sms_text_problem(text: str) -> str | None:
    """Why ``text`` may not reach an SMS, or None when it may; never quotes the text.

    The rule of :data:`SmsName` and of :meth:`notifiers.templates.SmsTemplate.render`: NFKC
    first, then no line break or control character, no 【】, no link, no phone number, and
    only letters, ASCII digits and :data:`SMS_PUNCTUATION`.

    Text made only of :data:`PLAIN_RANGES` and :data:`SMS_PUNCTUATION` (the common case) cannot
    hold a control character, a bracket or a character not allowed, so only the link and phone
    checks it could fail are run, and only when a hint of one is there; anything else gets the
    character-by-character check of :func:`sms_text_problem_detailed`. Both give the same
    answer on every text (tests/unit/schemas/test_safe_text_fast.py).
    """
    return _problem(unicodedata.normalize("NFKC", text))


def _problem(text: str) -> str | None:
    # sms_text_problem on text that is NFKC already.
    if _PLAIN_TEXT.fullmatch(text) is None:
        return _detailed(text)
    # The checks of _detailed that plain text can fail, in its order.
    if LINK_HINT.search(text) and (LINK_PATTERN.search(text) or _DOMAIN_DOT.search(text)):
        return _LINK_PROBLEM
    if _PHONE_HINT.search(text) and _has_phone(text):
        return _PHONE_PROBLEM
    return None


def sms_text_problem_detailed(text: str) -> str | None:
    """:func:`sms_text_problem` without its fast path: every check, character by character."""
    return _detailed(unicodedata.normalize("NFKC", text))


def _detailed(text: str) -> str | None:
    # ``text`` is NFKC already.
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        return _CONTROL_PROBLEM
    if any(ch in _SIGNATURE_BRACKETS for ch in text):
        return _BRACKETS_PROBLEM
    if LINK_PATTERN.search(text) or _DOMAIN_DOT.search(text):
        return _LINK_PROBLEM
    if _has_phone(text):
        return _PHONE_PROBLEM
    for previous, ch in zip(" " + text, text, strict=False):
        if not _allowed_char(ch, previous):
            name = unicodedata.name(ch, "unnamed").lower()
            return f"contains a character not allowed in an SMS (U+{ord(ch):04X} {name})"
    return None


# Most SMS text repeats from event to event (departments, service items, service points), so
# the normalised form of a value that passed is remembered (lru_cache keeps no exceptions: a
# refused value is checked again each time). The check is a pure function of the string, and
# the cache is bounded: values are at most 100 characters (the length constraint runs first),
# so even a sender flooding distinct values holds it to a few MB and only evicts older entries.
@functools.lru_cache(maxsize=4096)
def _sms_safe(value: str) -> str:
    normalised = unicodedata.normalize("NFKC", value)
    problem = _problem(normalised)
    if problem is not None:
        raise PydanticCustomError(UNSAFE_TEXT, "unsafe text: {problem}", {"problem": problem})
    return normalised


def _sms_schema(max_length: int, description: str) -> dict[str, Any]:
    # JSON Schema (and upstream validators in other languages) can carry the character rule:
    # no control characters, line breaks or signature brackets. Links and phone numbers are
    # checked at ingest only; the description says so.
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029【】〖〗]+$",
        "description": description
        + " Text that may reach an SMS: letters, digits and common punctuation; no link, phone"
        " number, line break or 【】 (refused at ingest with reason unsafe_text).",
    }


Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
#: A name or title that may be rendered into an SMS (holder, department, service item, point).
SmsName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    AfterValidator(_sms_safe),
    WithJsonSchema(_sms_schema(100, "A name that may appear in an SMS.")),
]
#: An identifier that may be rendered into an SMS (the license number in a renewal reminder).
SmsId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    AfterValidator(_sms_safe),
    WithJsonSchema(_sms_schema(64, "An identifier that may appear in an SMS.")),
]
FreeText = Annotated[str, StringConstraints(max_length=1000)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_only)]
Day = Annotated[dt.date, BeforeValidator(_iso_only)]
#: One of the codes in ``schemas/data/license_categories.json``; the JSON Schema lists them.
CategoryCode = Annotated[
    str,
    AfterValidator(_known_category),
    WithJsonSchema(
        {
            "type": "string",
            "enum": list(CATEGORY_CODES),
            "description": "License category code (schemas/data/license_categories.json).",
        }
    ),
]
SpecialGroup = Literal["elderly", "disabled", "active_serviceman", "veteran", "pregnant"]
ServicePointLevel = Literal["service_centre", "street_station", "community_point", "post_station"]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


# ---- envelope ------------------------------------------------------------------------------
class Envelope(BaseModel):
    """What every event carries around its payload."""

    model_config = _FROZEN

    event_id: UUID = Field(description="Unique per event; redeliveries keep the same id.")
    event_type: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$",
        description="Dotted event type, e.g. license.issued.",
    )
    schema_version: StrictInt = Field(ge=1, description="Version of the payload schema.")
    occurred_at: Timestamp = Field(description="When it happened upstream, with a UTC offset.")
    source: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="Publishing system, e.g. case-system.",
    )
    payload: dict[str, Any]


# ---- payloads ------------------------------------------------------------------------------
class LicensePayload(BaseModel):
    """A license issued or renewed: the registry entry that renewal reminders are planned from."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "license_id": "SX-WS-2024-000123",
                    "category": "public_place_hygiene",
                    "holder_name": "西安市长安区悦来宾馆",
                    "holder_mobile": "+8613800138000",
                    "issuing_department": "长安区卫生健康局",
                    "issued_on": "2024-07-01",
                    "expires_on": "2028-06-30",
                }
            ]
        },
    )

    license_id: SmsId
    category: CategoryCode
    holder_name: SmsName
    holder_mobile: MobileNumber
    issuing_department: SmsName
    issued_on: Day
    expires_on: Day

    @model_validator(mode="after")
    def _expires_after_issue(self) -> LicensePayload:
        if self.expires_on <= self.issued_on:
            raise ValueError("expires_on must be after issued_on")
        return self


class LicenseRevokedPayload(BaseModel):
    """A license withdrawn before expiry; pending reminders for it are cancelled."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "license_id": "SX-WS-2024-000123",
                    "reason": "经营场所已注销",
                    "revoked_on": "2025-03-15",
                }
            ]
        },
    )

    # The same type as in license.issued: the same key, normalised the same way.
    license_id: SmsId
    reason: Annotated[str, StringConstraints(max_length=500)] = ""
    revoked_on: Day


class ServicePoint(BaseModel):
    """Where a case was handled: a point of the "1+16+N" system or a post station."""

    model_config = _FROZEN

    id: Id
    name: SmsName
    level: ServicePointLevel


class Applicant(BaseModel):
    """The citizen or enterprise behind a case."""

    model_config = _FROZEN

    kind: Literal["citizen", "enterprise"]
    name: SmsName
    mobile: MobileNumber
    age: Annotated[StrictInt, Field(ge=0, le=130)] | None = None
    special_groups: tuple[SpecialGroup, ...] = Field(
        default=(),
        max_length=5,
        json_schema_extra={"uniqueItems": True},
        description="Special groups the applicant belongs to; any of them opens the green channel.",
    )

    @model_validator(mode="after")
    def _unique_groups(self) -> Applicant:
        if len(set(self.special_groups)) != len(self.special_groups):
            raise ValueError("special_groups must not repeat a group")
        return self


class Steward(BaseModel):
    """The project steward (项目管家) who owns a key project one-to-one."""

    model_config = _FROZEN

    staff_id: Id
    name: SmsName
    mobile: MobileNumber | None = None
    department: SmsName


_CASE_EXAMPLE: dict[str, Any] = {
    "case_id": "CA-20240603-0001",
    "service_item": "建筑工程施工许可证核发",
    "department": "长安区住房和城乡建设局",
    "service_point": {"id": "SP-CENTRE", "name": "长安区政务服务中心", "level": "service_centre"},
    "applicant": {
        "kind": "enterprise",
        "name": "西安某某科技有限公司",
        "mobile": "+8613800138000",
        "age": None,
        "special_groups": [],
    },
    "key_project": True,
    "project_steward": {
        "staff_id": "S-0042",
        "name": "王管家",
        "mobile": "+8613900139000",
        "department": "长安区政务服务中心",
    },
    "submitted_at": "2024-06-03T09:30:00+08:00",
    "completed_at": None,
}
# JSON Schema form of the key_project rule, so upstream validators see it too.
_STEWARD_RULE: dict[str, Any] = {
    "if": {"properties": {"key_project": {"const": True}}, "required": ["key_project"]},
    "then": {
        "required": ["project_steward"],
        "properties": {"project_steward": {"not": {"type": "null"}}},
    },
}


class CasePayload(BaseModel):
    """A case (办件) submitted or completed at a service point."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [_CASE_EXAMPLE], **_STEWARD_RULE},
    )

    case_id: Id
    service_item: SmsName
    department: SmsName
    service_point: ServicePoint
    applicant: Applicant
    key_project: StrictBool = False
    project_steward: Steward | None = Field(
        default=None, description="Required when key_project is true."
    )
    submitted_at: Timestamp
    completed_at: Timestamp | None = None

    @model_validator(mode="after")
    def _case_rules(self) -> CasePayload:
        if self.key_project and self.project_steward is None:
            raise ValueError("project_steward is required when key_project is true")
        if self.completed_at is not None and self.completed_at < self.submitted_at:
            raise ValueError("completed_at must not be before submitted_at")
        return self


class CaseCompletedPayload(CasePayload):
    """A case completed (办结): as a submitted case, with ``completed_at`` required."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [{**_CASE_EXAMPLE, "completed_at": "2024-06-05T16:00:00+08:00"}],
            **_STEWARD_RULE,
        },
    )

    completed_at: Timestamp  # type: ignore[assignment]  # narrowed: required here


class EvaluationPayload(BaseModel):
    """A citizen's evaluation (好差评) of a case; rating 1-2 is a negative review."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "evaluation_id": "EV-20240606-0007",
                    "case_id": "CA-20240603-0001",
                    "rating": 2,
                    "real_name": True,
                    "citizen_mobile": "+8613800138000",
                    "comment": "等待时间较长",
                    "department": "长安区住房和城乡建设局",
                    "service_point_id": "SP-CENTRE",
                    "evaluated_at": "2024-06-06T10:12:00+08:00",
                }
            ],
            "if": {"properties": {"real_name": {"const": True}}, "required": ["real_name"]},
            "then": {
                "required": ["citizen_mobile"],
                "properties": {"citizen_mobile": {"not": {"type": "null"}}},
            },
        },
    )

    evaluation_id: Id
    case_id: Id
    rating: Annotated[StrictInt, Field(ge=1, le=5)] = Field(
        description="5 非常满意, 4 满意, 3 基本满意, 2 不满意, 1 非常不满意."
    )
    real_name: StrictBool
    citizen_mobile: MobileNumber | None = Field(
        default=None, description="Required when real_name is true."
    )
    comment: FreeText = ""
    department: SmsName
    service_point_id: Id
    evaluated_at: Timestamp

    @model_validator(mode="after")
    def _real_name_has_mobile(self) -> EvaluationPayload:
        if self.real_name and self.citizen_mobile is None:
            raise ValueError("citizen_mobile is required when real_name is true")
        return self


class GreenChannelAckPayload(BaseModel):
    """On-duty staff acknowledged a green-channel alert; stops its escalation."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "case_id": "CA-20240603-0002",
                    "service_point_id": "SP-ST-05",
                    "staff_id": "S-0107",
                    "acknowledged_at": "2024-06-03T09:34:00+08:00",
                }
            ]
        },
    )

    case_id: Id
    service_point_id: Id
    staff_id: Id
    acknowledged_at: Timestamp


class CallbackCompletedPayload(BaseModel):
    """A follow-up callback (跟踪回访) was done; stops its escalation."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "case_id": "CA-20240603-0001",
                    "callback_id": "CB-20240608-0003",
                    "staff_id": "S-0042",
                    "outcome": "企业对办理结果满意，无其他诉求",
                    "completed_at": "2024-06-08T15:20:00+08:00",
                }
            ]
        },
    )

    case_id: Id
    callback_id: Id
    staff_id: Id
    outcome: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    completed_at: Timestamp


# ---- registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventSpec:
    """How one (event_type, version) is validated and routed."""

    event_type: str
    version: int
    payload_model: type[BaseModel]
    #: Kafka topic family: ``licenses``, ``cases`` or ``evaluations``.
    family: str
    #: Payload field whose value is the Kafka key (co-partitions everything about one entity).
    key_field: str


#: (event_type, schema_version) → payload model.
EVENT_REGISTRY: dict[tuple[str, int], type[BaseModel]] = {}
_SPECS: dict[tuple[str, int], EventSpec] = {}
# The event types of _SPECS, kept by register: parse_event asks on every event.
_KNOWN_TYPES: set[str] = set()


def register(
    event_type: str,
    version: int,
    payload_model: type[BaseModel],
    *,
    family: str,
    key_field: str,
) -> None:
    """Add one (event_type, version) to the contract; a duplicate is a programming error."""
    key = (event_type, version)
    if key in EVENT_REGISTRY:
        raise ValueError(f"{event_type} v{version} is already registered")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    if key_field not in payload_model.model_fields:
        raise ValueError(f"{payload_model.__name__} has no key field {key_field!r}")
    if version < 1:
        raise ValueError("version must be >= 1")
    EVENT_REGISTRY[key] = payload_model
    _SPECS[key] = EventSpec(event_type, version, payload_model, family, key_field)
    _KNOWN_TYPES.add(event_type)


def spec_for(event_type: str, version: int) -> EventSpec:
    """The spec of a registered event; EventRejected ``unknown_type``/``unknown_version``."""
    spec = _SPECS.get((event_type, version))
    if spec is not None:
        return spec
    if event_type not in _KNOWN_TYPES:
        raise EventRejected(
            "unknown_type",
            f"event_type is not registered; known: {', '.join(event_types())}",
            event_type=event_type,
        )
    known = sorted(v for t, v in _SPECS if t == event_type)
    raise EventRejected(
        "unknown_version",
        f"schema_version {version} is not registered for this event_type; known: {known}",
        event_type=event_type,
    )


def event_types() -> list[str]:
    """Every registered event type, sorted."""
    return sorted(_KNOWN_TYPES)


register("license.issued", 1, LicensePayload, family="licenses", key_field="license_id")
register("license.renewed", 1, LicensePayload, family="licenses", key_field="license_id")
register("license.revoked", 1, LicenseRevokedPayload, family="licenses", key_field="license_id")
register("case.submitted", 1, CasePayload, family="cases", key_field="case_id")
register("case.completed", 1, CaseCompletedPayload, family="cases", key_field="case_id")
register(
    "greenchannel.acknowledged", 1, GreenChannelAckPayload, family="cases", key_field="case_id"
)
register("callback.completed", 1, CallbackCompletedPayload, family="cases", key_field="case_id")
# Keyed by case_id, not evaluation_id: a case's evaluation lands on the case's partition, so the
# survey and rectification agents see both in order.
register("evaluation.submitted", 1, EvaluationPayload, family="evaluations", key_field="case_id")


# ---- parsed events -------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """A validated event: its envelope (payload normalised), payload model and spec."""

    envelope: Envelope
    payload: BaseModel
    spec: EventSpec

    @property
    def event_type(self) -> str:
        return self.envelope.event_type

    @property
    def event_id(self) -> str:
        return str(self.envelope.event_id)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def key(self) -> str:
        """The Kafka key: the value of the spec's key field."""
        return str(getattr(self.payload, self.spec.key_field))

    def to_json_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, compact, UTF-8) of the envelope, payload normalised.

        The format is ``json.dumps(envelope.model_dump(mode="json"), sort_keys=True,
        separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` in UTF-8, see
        :func:`_canonical_json`. Written here by pydantic_core.to_json (several times faster
        than the json module's encoder) from a copy of the data with sorted keys; that gives
        the same bytes for JSON data of strings, integers, booleans, null, lists and objects
        with string keys, which is what parse_event stores. Anything else goes the long way.
        """
        envelope = self.envelope
        if _as_validated(envelope):
            # The envelope's own fields as model_dump(mode="json") has them; the payload is JSON
            # data already (parse_event stored it in JSON mode), not serialised a second time.
            data = envelope.__pydantic_serializer__.to_python(
                envelope, mode="json", exclude=_PAYLOAD_FIELD
            )
            data["payload"] = envelope.payload
            try:
                return pydantic_core.to_json(_sorted_json_data(data))
            except (_NotJsonData, TypeError, RecursionError, PydanticSerializationError):
                pass  # not plain JSON data (or a lone surrogate): the json module decides
        return _canonical_json(envelope.model_dump(mode="json"))


def _as_validated(envelope: Envelope) -> bool:
    """Whether ``envelope`` holds the types validation gives its fields.

    Then serialising its fields apart from the payload warns of nothing, as model_dump would
    not; an Envelope made by ``model_construct`` may hold anything, and is left to model_dump.
    """
    return (
        type(envelope) is Envelope
        and type(envelope.payload) is dict
        and type(envelope.event_id) is UUID
        and type(envelope.occurred_at) is dt.datetime
        and type(envelope.event_type) is str
        and type(envelope.source) is str
        and type(envelope.schema_version) is int
    )


_PAYLOAD_FIELD = {"payload": True}


def _canonical_json(data: Any) -> bytes:
    return _CANONICAL_JSON.encode(data).encode("utf-8")


# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# uses, made once: json.dumps with options builds a new encoder on every call.
_CANONICAL_JSON = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


class _NotJsonData(Exception):
    """A value to_json would not write as _CANONICAL_JSON does (a float, a non-string key, …)."""


_SCALARS = frozenset({str, int, bool, type(None)})


def _sorted_json_data(value: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``value`` with the keys of every object sorted, or :class:`_NotJsonData`.

    Only exact str, int, bool, None, list and dict (with str keys) pass: for those,
    pydantic_core.to_json and the json module write the same text (the same escapes, the same
    integers, checked for every code point by tests/unit/schemas/test_events_fast.py).
    """
    out = {}
    for key in sorted(value):
        if type(key) is not str:
            raise _NotJsonData
        item = value[key]
        kind = type(item)
        if kind in _SCALARS:
            out[key] = item
        elif kind is dict:
            out[key] = _sorted_json_data(item)
        elif kind is list:
            out[key] = _json_list(item)
        else:
            raise _NotJsonData
    return out


def _json_list(value: list[Any]) -> list[Any]:
    out = []
    for item in value:
        kind = type(item)
        if kind in _SCALARS:
            out.append(item)
        elif kind is dict:
            out.append(_sorted_json_data(item))
        elif kind is list:
            out.append(_json_list(item))
        else:
            raise _NotJsonData
    return out


def _loc_text(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            text = part if len(part) <= _MAX_LOC_PART else part[:_MAX_LOC_PART] + "…"
            parts.append(("." if parts else "") + text)
    return "".join(parts)


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """Field paths and messages only: pydantic's ``input`` would echo phone numbers back."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    lines = []
    for err in errors[:_MAX_ERRORS_IN_DETAIL]:
        loc = _loc_text(((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > _MAX_ERRORS_IN_DETAIL:
        lines.append(f"and {len(errors) - _MAX_ERRORS_IN_DETAIL} more errors")
    return "; ".join(lines)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicate keys; two systems could then read different events.
    # dict() builds the object in C; it is shorter than the pairs exactly when a key repeats.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate object key")
    return obj


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# json.loads with options builds a decoder (and its scanner) on every call; this one is made
# once. It keeps no state between calls but a memo of key strings, which it clears after each
# call and which only ever maps a key to an equal string, so threads may share it (json.loads
# without options shares its own default decoder the same way).
_JSON_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


def _readable_type(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("event_type")
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    return None


def _readable_id(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("event_id")
    if isinstance(value, str) and len(value) <= 64:
        try:
            return str(UUID(value))
        except ValueError:
            return None
    return None


def _reason(exc: ValidationError) -> str:
    """``unsafe_text`` when any field broke the SMS text rule, else ``schema_violation``."""
    if any(err["type"] == UNSAFE_TEXT for err in exc.errors(include_url=False)):
        return UNSAFE_TEXT
    return "schema_violation"


def parse_event(
    raw: bytes,
    *,
    max_bytes: int = MAX_EVENT_BYTES,
    now: dt.datetime | None = None,
    max_skew: dt.timedelta | float = MAX_CLOCK_SKEW_S,
) -> Event:
    """Validate raw event bytes into an :class:`Event`, or raise :class:`EventRejected`.

    Parameters:
      raw: the event as received.
      max_bytes: the largest accepted event (``oversize`` beyond).
      now: the receiver's clock (``infra.clock``), timezone-aware. When given, an event whose
        ``occurred_at`` is more than ``max_skew`` ahead of it is refused (``occurred_in_future``):
        state kept by occurred_at (the license registry) would otherwise ignore every genuine
        event until that date. Without it (tests, ``make_event``) the time is not checked.
      max_skew: seconds (or a timedelta) an upstream clock may run ahead of ours.
    """
    if len(raw) > max_bytes:
        raise EventRejected("oversize", f"event is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected("malformed_json", f"not UTF-8 (byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):
            # What json.loads says before it decodes anything; _JSON_DECODER does not check.
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _JSON_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        detail = f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise EventRejected("malformed_json", detail) from None
    except ValueError as exc:
        raise EventRejected("malformed_json", f"not JSON: {exc}") from None
    except RecursionError:
        raise EventRejected("malformed_json", "not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
            type(obj), "number"
        )
        raise EventRejected("malformed_json", f"top level must be a JSON object, not {kind}")

    # The event id a rejection names is read from obj only when there is one to raise.
    event_type = _readable_type(obj)
    # Type and version are checked before the rest of the envelope: an unknown type is a
    # routing problem for the sender, not a field error.
    version = obj.get("schema_version")
    if event_type is not None and (
        event_type not in _KNOWN_TYPES
        or (isinstance(version, int) and not isinstance(version, bool) and version >= 1)
    ):
        try:
            spec_for(event_type, version if isinstance(version, int) else 0)
        except EventRejected as exc:
            raise EventRejected(
                exc.reason, exc.detail, event_type=event_type, event_id=_readable_id(obj)
            ) from None
    # model_validate and model_dump below are called as what they wrap, the model's validator
    # and serializer: the wrappers' keyword passing is a measurable share of an event.
    try:
        envelope = Envelope.__pydantic_validator__.validate_python(obj)
    except ValidationError as exc:
        raise EventRejected(
            "schema_violation", _describe(exc), event_type=event_type, event_id=_readable_id(obj)
        ) from None
    if now is not None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (infra.clock's utcnow)")
        if isinstance(max_skew, dt.timedelta):
            skew = max_skew
        elif type(max_skew) is int:
            skew = _whole_seconds(max_skew)
        else:
            skew = dt.timedelta(seconds=max_skew)
        ahead = envelope.occurred_at - now
        if ahead > skew:
            raise EventRejected(
                "occurred_in_future",
                f"occurred_at is {int(ahead.total_seconds())} s ahead of the receiver's clock; "
                f"at most {int(skew.total_seconds())} s is allowed",
                event_type=event_type,
                event_id=_readable_id(obj),
            )
    spec = spec_for(envelope.event_type, envelope.schema_version)
    try:
        payload = spec.payload_model.__pydantic_validator__.validate_python(envelope.payload)
    except ValidationError as exc:
        raise EventRejected(
            _reason(exc),
            _describe(exc, "payload"),
            event_type=event_type,
            event_id=_readable_id(obj),
        ) from None
    # Keep the normalised payload in the envelope too, so to_json_bytes re-parses to an equal
    # Event and everything downstream sees only E.164 numbers. The envelope was made above and
    # nothing else holds it yet, so its payload is replaced in place: what model_copy(update=)
    # does to the copy it first makes of the whole model.
    envelope.__dict__["payload"] = payload.__pydantic_serializer__.to_python(payload, mode="json")
    return Event(envelope, payload, spec)


# Callers pass the same setting (an int) with every event; making the timedelta again each time
# cost more than looking it up.
@functools.lru_cache(maxsize=16)
def _whole_seconds(seconds: int) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


def _json_default(value: object) -> object:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def make_event(
    event_type: str,
    payload: Mapping[str, Any],
    *,
    source: str,
    occurred_at: dt.datetime | None = None,
    event_id: UUID | None = None,
    version: int = 1,
) -> Event:
    """Build an event for producers and tests; validated by the same path as received events.

    ``payload`` may hold dates, datetimes and UUIDs; they are written as ISO strings.
    """
    envelope = {
        "event_id": str(event_id or uuid.uuid4()),
        "event_type": event_type,
        "schema_version": version,
        "occurred_at": (occurred_at or dt.datetime.now(dt.UTC)).isoformat(),
        "source": source,
        "payload": dict(payload),
    }
    raw = json.dumps(envelope, default=_json_default, ensure_ascii=False).encode("utf-8")
    return parse_event(raw)
