"""The api's request guards: bounded reads and parsers, and log-safe text."""

from __future__ import annotations

import io
import json

import pytest

from producers.http_guards import (
    Refusal,
    content_type,
    parse_form,
    printable,
    read_body,
    split_json_events,
)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("SM0123", "SM0123"),
        ("a\nb", "a\\nb"),
        ("a\r\n2026-01-01 INFO forged", "a\\r\\n2026-01-01 INFO forged"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("line\u2028sep\u2029para", "line\\u2028sep\\u2029para"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("\x00\x7f\x85", "\\x00\\x7f\\x85"),
        ("长安政务", "长安政务"),
        ("x" * 200, "x" * 120 + "…"),
        (ValueError("bad\nvalue"), "bad\\nvalue"),
    ],
)
def test_printable_escapes_what_could_forge_a_log_line(value: object, shown: str) -> None:
    # When / Then
    assert printable(value) == shown
    assert printable(value).isprintable()


def environ(body: bytes, length: str | None = None, kind: str = "") -> dict[str, object]:
    return {
        "CONTENT_LENGTH": str(len(body)) if length is None else length,
        "CONTENT_TYPE": kind,
        "wsgi.input": io.BytesIO(body),
    }


@pytest.mark.parametrize(
    ("body", "length", "status"),
    [
        (b"x" * 10, "abc", 400),
        (b"x" * 10, "-5", 400),
        (b"x" * 10, " 1e3", 400),
        (b"x" * 10, "1" * 13, 400),
        (b"x" * 101, None, 413),
        (b"x" * 5, "10", 400),
    ],
)
def test_read_body_refuses_bad_or_oversize_lengths(
    body: bytes, length: str | None, status: int
) -> None:
    # When / Then
    with pytest.raises(Refusal) as refused:
        read_body(environ(body, length), 100)
    assert refused.value.status == status


def test_read_body_reads_exactly_the_body() -> None:
    assert read_body(environ(b"a=1"), 100) == b"a=1"
    assert read_body(environ(b"", "0"), 100) == b""
    assert read_body({"wsgi.input": io.BytesIO(b"")}, 100) == b""


def test_content_type_drops_parameters_and_case() -> None:
    assert content_type({"CONTENT_TYPE": "Application/JSON; charset=utf-8"}) == "application/json"
    assert content_type({}) == ""


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"\xff=1", "not UTF-8"),
        (b"a", "not form-encoded"),
        (b"a=1&&b", "not form-encoded"),
        (b"&".join(b"f%d=1" % i for i in range(11)), "more than 10 form fields"),
        (b"a=&" * 1000, "more than 10 form fields"),
        (b"MessageSid=SM1&MessageSid=SM2", "repeated"),
    ],
)
def test_parse_form_refuses_what_no_provider_sends(raw: bytes, detail: str) -> None:
    # When / Then
    with pytest.raises(Refusal) as refused:
        parse_form(raw, 10)
    assert (refused.value.status, refused.value.outcome) == (400, "malformed")
    assert detail in refused.value.detail


def test_parse_form_reads_a_callback() -> None:
    assert parse_form(b"MessageSid=SM1&MessageStatus=sent&ErrorCode=", 10) == {
        "MessageSid": "SM1",
        "MessageStatus": "sent",
        "ErrorCode": "",
    }
    assert parse_form(b"", 10) == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a": 1}', ([b'{"a": 1}'], False)),
        (b' \n{"a": [1, {"b": 2}]}\n', ([b' \n{"a": [1, {"b": 2}]}\n'], False)),
        (b'[{"a": 1}]', ([b'{"a": 1}'], True)),
        (b'[ {"a": 1} ,\n{"b": "]"} , 42 ]', ([b'{"a": 1}', b'{"b": "]"}', b"42"], True)),
        ('[{"名": "长安"}]'.encode(), (['{"名": "长安"}'.encode()], True)),
        # repeated keys and NaN pass through untouched: parse_event judges each event's bytes
        (b'[{"a": 1, "a": 2}, NaN]', ([b'{"a": 1, "a": 2}', b"NaN"], True)),
    ],
)
def test_split_json_events_keeps_each_events_own_bytes(
    raw: bytes, expected: tuple[list[bytes], bool]
) -> None:
    assert split_json_events(raw, max_events=10) == expected


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", 400),
        (b"not json", 400),
        (b'"a string"', 400),
        (b"42", 400),
        (b"null", 400),
        (b"[]", 400),
        (b" [ ] ", 400),
        (b"\xff[]", 400),
        (b'{"a": 1} x', 400),
        (b'{"a": 1}{"b": 2}', 400),
        (b'[{"a": 1}] []', 400),
        (b'[{"a": 1}', 400),
        (b'[{"a": 1},]', 400),
        (b'[{"a": 1} {"b": 2}]', 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
        (json.dumps([{}] * 11).encode(), 413),
    ],
)
def test_split_json_events_refuses_what_is_not_an_event_or_a_batch(raw: bytes, status: int) -> None:
    # When / Then
    with pytest.raises(Refusal) as refused:
        split_json_events(raw, max_events=10)
    assert refused.value.status == status
    assert len(refused.value.detail) < 120
