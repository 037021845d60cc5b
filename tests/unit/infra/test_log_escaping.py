"""One log record, one line: control characters in ids and messages become visible escapes.

An id arriving from an upstream (a case id, a license id) is logged as given. Without escaping,
``"C1\n2026-01-01 INFO forged"`` writes a second, forged line and ``"\x1b[31m"`` repaints the
operator's terminal.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator

import pytest

from infra.logging import MaskingFilter, MaskingFormatter, escape_controls

FORGED = "C1\n2026-01-01 INFO forged"
ANSI = "\x1b[31m"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through our formatter and filter to a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(MaskingFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskingFilter())
    # Letters only: a hex uuid can hold 18 digits in a row, which the ID-number mask would star.
    unique = uuid.uuid4().hex.translate(str.maketrans("0123456789", "ghijklmnop"))
    logger = logging.getLogger(f"test.escaping.{unique}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, out
    logger.removeHandler(handler)


def test_a_forged_line_and_a_colour_code_in_an_id_stay_in_one_visible_line(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    # Given a logger and an id carrying a newline, a fake log line and an ANSI colour
    logger, out = logged

    # When it is logged as an argument
    logger.info("case %s completed%s", FORGED, ANSI)

    # Then one line is written, with the controls visible as escapes
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "\x1b" not in text
    assert r"case C1\n2026-01-01 INFO forged completed\x1b[31m" in text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", r"a\nb"),
        ("a\rb", r"a\rb"),
        ("a\r\nb", r"a\r\nb"),
        ("a\tb", r"a\tb"),
        ("a\x1b[2Jb", r"a\x1b[2Jb"),
        ("a\x00b\x07c\x7fd", r"a\x00b\x07c\x7fd"),
        ("a\x85b\x9bc", r"a\x85b\x9bc"),  # C1: NEL and the 8-bit CSI
        ("a\u2028b\u2029c", r"a\u2028b\u2029c"),
        ("a\x0bb\x0cc", r"a\x0bb\x0cc"),  # vertical tab and form feed split lines too
        ("张三 plain text \\n stays", "张三 plain text \\n stays"),
    ],
)
def test_every_control_character_and_line_separator_is_escaped(raw: str, shown: str) -> None:
    # Given / When / Then
    assert escape_controls(raw) == shown
    assert escape_controls(shown) == shown  # idempotent: a second pass changes nothing
    assert len(escape_controls(raw).splitlines()) == 1


def test_masking_comes_before_escaping(logged: tuple[logging.Logger, io.StringIO]) -> None:
    # Given a number next to a forged line
    logger, out = logged

    # When it is logged
    logger.info("to %s", "13800138000\nINFO forged 13900139000")

    # Then both numbers are masked and the line is one
    assert out.getvalue() == (f"INFO {logger.name}: to 138****8000\\nINFO forged 139****9000\n")


def test_a_traceback_keeps_its_lines_but_an_exception_message_cannot_forge_one(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    # Given an exception whose message (and its cause's) carries newlines and a colour code
    logger, out = logged
    try:
        try:
            raise KeyError(f"unknown license {FORGED}")
        except KeyError as cause:
            raise ValueError(f"bad event {ANSI}\r\nINFO forged too") from cause
    except ValueError:
        # When it is logged with its traceback
        logger.exception("event %s rejected", FORGED)

    # Then the message is one line, the traceback keeps its frames on their own lines, and no
    # line of it starts with the forged text
    lines = out.getvalue().splitlines()
    assert lines[0] == f"ERROR {logger.name}: event C1\\n2026-01-01 INFO forged rejected"
    assert lines[1] == "Traceback (most recent call last):"
    assert any(line.startswith("  File ") for line in lines)
    assert r"ValueError: bad event \x1b[31m\r\nINFO forged too" in lines
    assert any(r"KeyError: 'unknown license C1\n2026-01-01 INFO forged'" in x for x in lines)
    assert not any(line.startswith(("2026-01-01", "INFO forged")) for line in lines)
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_a_foreign_formatter_behind_our_filter_also_gets_one_line() -> None:
    # Given a handler with a plain logging.Formatter (as dramatiq's) and our filter
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger(f"test.escaping.foreign.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False

    # When an id with a forged line is logged
    logger.warning("license %s expired", FORGED)

    # Then the line is one, escaped
    assert out.getvalue() == "WARNING license C1\\n2026-01-01 INFO forged expired\n"
