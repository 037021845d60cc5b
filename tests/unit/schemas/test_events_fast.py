"""The shortcuts of parse_event and Event.to_json_bytes against what they stand in for.

to_json_bytes writes with pydantic_core.to_json from a key-sorted copy instead of the json
module's encoder; parse_event reuses one JSON decoder and remembers the SMS text verdicts. Each
must give the same bytes, the same rejections and the same exceptions as the plain way.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import random
import re
import uuid
import warnings
from typing import Any

import pydantic_core
import pytest

from producers.generator import generate_case_day, generate_registry
from schemas.errors import EventRejected
from schemas.events import (
    _CJK,
    _PHONE_HINT,
    LINK_PATTERN,
    Envelope,
    Event,
    _canonical_json,
    _has_phone,
    _sms_safe,
    _sorted_json_data,
    parse_event,
    sms_text_problem,
    sms_text_problem_detailed,
    spec_for,
)

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


def _reference(envelope: Envelope) -> bytes:
    """to_json_bytes as it is defined: the json module over model_dump(mode="json")."""
    data = envelope.model_dump(mode="json")
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _outcome(make: Any) -> tuple[Any, ...]:
    """What calling ``make`` gives: its result or exception, and every warning it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result: tuple[Any, ...] = ("ok", make())
        except Exception as exc:  # the exception itself is what is compared
            result = ("raised", type(exc), str(exc))
    return (*result, [str(w.message) for w in caught])


# ---- to_json_bytes ------------------------------------------------------------------------------
def test_to_json_writes_every_code_point_as_the_json_module_does() -> None:
    # Given every code point but the surrogates, as keys and inside values
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 512):
        chunk = points[start : start + 512]
        data = {ch: f"{ch}x{ch}" for ch in chunk}
        # When both write it
        fast = pydantic_core.to_json(_sorted_json_data(data))
        # Then the bytes are the same
        assert fast == _canonical_json(data), f"differs in U+{ord(chunk[0]):04X}…"


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        2**63 - 1,
        2**63,
        -(2**63) - 1,
        2**64 + 1,
        10**40,
        True,
        False,
        None,
        "",
        [],
        {},
        [[[]], {}],
        {"b": [1, "x", None, True, {"z": 1, "y": [2, {"d": 0, "c": 1}]}], "a": {}},
        '\x00\x1f\x7f\u2028\u2029"\\/</script>',
    ],
)
def test_to_json_writes_json_data_as_the_json_module_does(value: Any) -> None:
    # Given JSON data
    data = {"k": value, "a": [value], "z": {"n": value}}
    # When both write it
    # Then the bytes are the same
    assert pydantic_core.to_json(_sorted_json_data(data)) == _canonical_json(data)


def _generated() -> list[Event]:
    reg = generate_registry(200, NOW.date())
    day = generate_case_day(60, NOW - dt.timedelta(minutes=5))
    return reg.events + day.events


def test_to_json_bytes_of_parsed_events_is_the_defined_format() -> None:
    # Given events of every kind the generator makes, parsed from their JSON
    events = [parse_event(e.to_json_bytes(), now=NOW) for e in _generated()]
    assert {e.event_type for e in events} >= {"license.issued", "case.completed"}
    # When they are written
    # Then each is what the json module writes of model_dump, and parses back to itself
    for event in events:
        assert event.to_json_bytes() == _reference(event.envelope)
        assert parse_event(event.to_json_bytes()) == event


class _Level(enum.IntEnum):
    ONE = 1


class _Text(str):
    pass


def _cycle() -> dict[str, Any]:
    data: dict[str, Any] = {}
    data["self"] = data
    return data


ODD_PAYLOADS = [
    {"rate": 1.5},
    {"big": 1e16},
    {"nan": float("nan")},
    {1: "a"},
    {1: "a", "b": 2},
    {"day": dt.date(2024, 1, 2)},
    {"at": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)},
    {"id": uuid.UUID(int=7)},
    {"pair": (1, 2)},
    {"set": {1}},
    {"level": _Level.ONE},
    {"text": _Text("x")},
    {_Text("key"): 1},
    {"raw": b"x"},
    {"lone": "\ud800"},
    {"\udfff": 1},
    {"nested": {"list": [{"x": 1.0}]}},
    _cycle(),
    ["not", "an", "object"],
    None,
]


@pytest.mark.parametrize("payload", ODD_PAYLOADS, ids=range(len(ODD_PAYLOADS)))
@pytest.mark.parametrize(
    "fields",
    [{}, {"event_id": "not-a-uuid"}, {"occurred_at": "2024"}, {"schema_version": 1.5}],
    ids=["validated-fields", "str-id", "str-time", "float-version"],
)
def test_to_json_bytes_of_anything_else_is_what_model_dump_and_json_give(
    payload: Any, fields: dict[str, Any]
) -> None:
    # Given an envelope nobody validated, holding what JSON data cannot (model_construct)
    envelope = Envelope.model_construct(
        event_id=uuid.UUID("5f0c1e1a-8a3b-4d6e-9f00-1c2d3e4f5a6b"),
        event_type="license.issued",
        schema_version=1,
        occurred_at=dt.datetime(2024, 6, 3, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        source="x",
        payload=payload,
    )
    event = Event(envelope, None, spec_for("license.issued", 1))  # type: ignore[arg-type]
    envelope.__dict__.update(fields)
    # When it is written
    # Then the bytes, or the exception, and the warnings are those of the defined format
    assert _outcome(event.to_json_bytes) == _outcome(lambda: _reference(envelope))


# ---- parse_event's JSON reading -----------------------------------------------------------------
def _loads_detail(raw: bytes) -> str:
    """The detail parse_event gave when it called json.loads with its hooks on every event."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                raise ValueError("duplicate object key")
            obj[key] = value
        return obj

    def constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except ValueError as exc:
        return f"not JSON: {exc}"
    raise AssertionError("valid JSON")


@pytest.mark.parametrize(
    "raw",
    [
        b'\xef\xbb\xbf{"a": 1}',
        b"\xef\xbb\xbf",
        b"",
        b" ",
        b'{"a": 1} {}',
        b'{"a": 1,}',
        b'{"a": {"b": 1, "b": 2}}',
        b'[{"x": 1}, {"y": 1, "y": 1}]',
        b'{"a": 1, "b": {"c": 1}, "a": 2}',
        b'{"a": NaN}',
        b'{"a": [Infinity]}',
        b'{"a": -Infinity}',
        b'{"a": "\x01"}',
        b'{\n  "a":\n  tru}',
    ],
)
def test_malformed_json_gets_the_detail_json_loads_gave(raw: bytes) -> None:
    # Given malformed JSON
    # When it is parsed
    with pytest.raises(EventRejected) as caught:
        parse_event(raw)
    # Then it is refused with what json.loads with the same hooks said of it
    assert caught.value.reason == "malformed_json"
    assert caught.value.detail == _loads_detail(raw)


# ---- SMS text -----------------------------------------------------------------------------------
def test_sms_verdicts_are_remembered_only_for_text_that_passes_and_boundedly() -> None:
    # Given the remembered verdicts
    info = _sms_safe.cache_info()  # type: ignore[attr-defined]
    assert info.maxsize is not None and info.maxsize <= 10_000
    # When a refused value is checked twice
    before = _sms_safe.cache_info().currsize  # type: ignore[attr-defined]
    for _ in range(2):
        with pytest.raises(pydantic_core.PydanticCustomError, match="link"):
            _sms_safe("evil.ru")
    # Then it is refused each time and not kept; a value that passes is kept, normalised
    assert _sms_safe.cache_info().currsize == before  # type: ignore[attr-defined]
    assert _sms_safe("ＡＢＣ局") == "ABC局"
    assert _sms_safe("ＡＢＣ局") == "ABC局"


def test_phone_hint_misses_no_phone_number() -> None:
    # Given digit-heavy strings: runs of every length, separators, "+" prefixes, letters
    rng = random.Random(11)
    alphabet = [*"0123456789", "+", " ", "-", "\u3000", "\t", "A", "z", "长", ".", "86", "400"]
    texts = ["LIC-PRAC-000005", "SX-WS-2024-000123", "+86 13800", "+ 12345", "1380013800"]
    texts += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(20_000)
    ]
    for text in texts:
        # Then every text with a phone number shows the hint, and both checks agree
        if _has_phone(text):
            assert _PHONE_HINT.search(text), text
        assert sms_text_problem(text) == sms_text_problem_detailed(text), text


def test_link_pattern_guards_find_what_the_unguarded_pattern_finds() -> None:
    # Given LINK_PATTERN without its two guards (the scheme list tried at every position, a
    # Chinese run tried from every character: the slow way), and link-rich random text: Chinese
    # runs, TLDs, every kind of dot, schemes, letters, digits, spaces
    guards = ["(?=[a-z])", f"(?<![{_CJK}])"]
    assert [LINK_PATTERN.pattern.count(guard) for guard in guards] == [1, 1]
    unguarded = re.compile(
        LINK_PATTERN.pattern.replace(guards[0], "").replace(guards[1], ""), LINK_PATTERN.flags
    )
    rng = random.Random(12)
    alphabet = [
        *"长安区政务中国公司网络", "中国", "中文网", "政务", ".", "。", "·", "・", ":", "/", " ",
        "cn", "com", "ru", "www", "xn--", "http", "tel", "sms", "Tel", "a", "z", "-", "1", "10",
        "，", "（", "LIC-", "2026", "@",
    ]  # fmt: skip
    texts = ["例子.中国", "政务。cn", "长安区政务服务中心。请登录政务服务网办理", "tel:12345"]
    texts += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(30_000)
    ]
    found = 0
    for text in texts:
        # Then the guarded pattern finds a link exactly where the unguarded one does, at the
        # same place
        fast, slow = LINK_PATTERN.search(text), unguarded.search(text)
        assert (fast and fast.span()) == (slow and slow.span()), text
        found += slow is not None
    assert 1_000 < found < len(texts) - 1_000  # the corpus has both kinds, plenty of each
