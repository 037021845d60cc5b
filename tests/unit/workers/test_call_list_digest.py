"""Pure parts of the call-list digest: which days get one, and how a long list is split."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from infra.workdays import WorkdayCalendar
from workers.call_list import MESSAGE_BYTES, DigestLine, chunk_lines, digest_days

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(day: str, hour: int = 10) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hour), tzinfo=SHANGHAI)


@pytest.mark.parametrize(
    ("now", "days"),
    [
        (at("2026-11-26"), ["2026-11-26"]),  # Thursday
        (at("2026-11-26", 7), ["2026-11-26"]),  # before 09:00: same
        (at("2026-11-28"), []),  # Saturday
        (at("2026-10-05"), []),  # a Monday of the National Day holiday
        (at("2026-10-10"), ["2026-10-10"]),  # a make-up working Saturday (调休)
    ],
)
def test_digests_go_out_on_working_days_only(now: dt.datetime, days: list[str]) -> None:
    # When
    result = digest_days(now, WorkdayCalendar())

    # Then
    assert [d.isoformat() for d in result] == days


def line(k: int) -> DigestLine:
    text = f"{k}. 食品经营许可证SX-WS-2024-{k:06d}｜王*伟 138****8000｜12月01日到期"
    return DigestLine(f"e{k}", f"SX-WS-2024-{k:06d}", text)


@pytest.mark.parametrize("n", [1, 5, 20, 57])
def test_a_long_list_is_split_in_order_within_the_budget(n: int) -> None:
    # Given n lines
    lines = [line(k) for k in range(1, n + 1)]

    # When
    chunks = chunk_lines(lines)

    # Then every line is there once, in order; each chunk fits a WeCom message, and is full:
    # the next chunk's first line would not have fitted
    def size(chunk: list[DigestLine]) -> int:
        return sum(len(x.text.encode()) + 1 for x in chunk)

    assert [x for chunk in chunks for x in chunk] == lines
    assert all(size(chunk) <= MESSAGE_BYTES for chunk in chunks)
    assert all(size(a) + size(b[:1]) > MESSAGE_BYTES for a, b in itertools.pairwise(chunks))
    assert (len(chunks) > 1) == (size(lines) > MESSAGE_BYTES)


def test_no_lines_no_chunks() -> None:
    assert chunk_lines([]) == []
