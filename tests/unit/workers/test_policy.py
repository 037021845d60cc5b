"""Send policy: quiet hours, the per-citizen daily cap and opt-out, at their exact boundaries."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from workers.policy import Decision, QuietHours, decide, local_day_bounds

SHANGHAI = ZoneInfo("Asia/Shanghai")
NIGHT = QuietHours()  # 21:00–08:00, the product default
LUNCH = QuietHours(dt.time(12, 0), dt.time(14, 0))  # a window that does not cross midnight


def at(text: str) -> dt.datetime:
    """``"2025-06-10 21:00:00"`` as an aware Shanghai datetime."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


# ---- QuietHours.contains ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("quiet", "local", "expected"),
    [
        (NIGHT, "2025-06-10 20:59:00", False),
        (NIGHT, "2025-06-10 20:59:59", False),
        (NIGHT, "2025-06-10 20:59:59.999999", False),
        (NIGHT, "2025-06-10 21:00:00", True),  # start inclusive
        (NIGHT, "2025-06-10 23:59:59", True),
        (NIGHT, "2025-06-10 00:00:00", True),
        (NIGHT, "2025-06-10 02:00:00", True),
        (NIGHT, "2025-06-10 07:59:00", True),
        (NIGHT, "2025-06-10 07:59:59", True),
        (NIGHT, "2025-06-10 08:00:00", False),  # end exclusive
        (NIGHT, "2025-06-10 12:00:00", False),
        (LUNCH, "2025-06-10 11:59:59", False),
        (LUNCH, "2025-06-10 12:00:00", True),
        (LUNCH, "2025-06-10 13:59:59", True),
        (LUNCH, "2025-06-10 14:00:00", False),
        (LUNCH, "2025-06-10 00:00:00", False),
        (LUNCH, "2025-06-10 21:00:00", False),
    ],
)
def test_contains(quiet: QuietHours, local: str, expected: bool) -> None:
    # Given a quiet-hours window
    # When asking about one local instant
    result = quiet.contains(at(local))
    # Then start is inside and end is outside
    assert result is expected


# ---- QuietHours.next_allowed -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("quiet", "local", "expected"),
    [
        (NIGHT, "2025-06-10 21:00:00", "2025-06-11 08:00:00"),  # evening → next morning
        (NIGHT, "2025-06-10 23:30:00", "2025-06-11 08:00:00"),
        (NIGHT, "2025-06-10 02:00:00", "2025-06-10 08:00:00"),  # small hours → same morning
        (NIGHT, "2025-06-10 07:59:59", "2025-06-10 08:00:00"),
        (NIGHT, "2025-12-31 23:59:00", "2026-01-01 08:00:00"),  # across the year
        (NIGHT, "2025-02-28 22:00:00", "2025-03-01 08:00:00"),  # across the month
        (NIGHT, "2025-06-10 08:00:00", "2025-06-10 08:00:00"),  # allowed: itself
        (NIGHT, "2025-06-10 20:59:59", "2025-06-10 20:59:59"),
        (LUNCH, "2025-06-10 12:30:00", "2025-06-10 14:00:00"),
        (LUNCH, "2025-06-10 12:00:00", "2025-06-10 14:00:00"),
        (LUNCH, "2025-06-10 14:00:00", "2025-06-10 14:00:00"),
        (LUNCH, "2025-06-10 23:00:00", "2025-06-10 23:00:00"),
    ],
)
def test_next_allowed(quiet: QuietHours, local: str, expected: str) -> None:
    # Given a quiet-hours window and a local instant
    # When asking for the first allowed instant
    result = quiet.next_allowed(at(local))
    # Then it is the instant itself or the window's end, in the same zone
    assert result == at(expected)
    assert result.tzinfo is SHANGHAI
    assert result.utcoffset() == dt.timedelta(hours=8)


@pytest.mark.parametrize(
    "call",
    [
        lambda: NIGHT.contains(dt.datetime(2025, 6, 10, 22, 0)),
        lambda: NIGHT.next_allowed(dt.datetime(2025, 6, 10, 22, 0)),
        lambda: local_day_bounds(dt.datetime(2025, 6, 10, 22, 0)),
        lambda: decide(
            now_local=dt.datetime(2025, 6, 10, 22, 0),
            critical=False,
            opted_out=False,
            sent_today=0,
            daily_cap=5,
            quiet=NIGHT,
        ),
    ],
)
def test_naive_datetimes_are_refused(call: object) -> None:
    # Given a naive datetime (which might be UTC)
    # When / Then it is refused rather than read as local time
    with pytest.raises(ValueError, match="timezone-aware"):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("start", "end"),
    [(dt.time(21, 0), dt.time(21, 0)), (dt.time(21, 0, tzinfo=dt.UTC), dt.time(8, 0))],
)
def test_ambiguous_windows_are_refused(start: dt.time, end: dt.time) -> None:
    # Given an empty-or-full window, or one tied to a zone other than the local one
    # When / Then it cannot be built
    with pytest.raises(ValueError, match="quiet hours"):
        QuietHours(start, end)


# ---- QuietHours.parse ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("21:00-08:00", NIGHT),
        (" 21:00 - 08:00 ", NIGHT),
        ("12:00-14:00", LUNCH),
        ("9:30-17:00", QuietHours(dt.time(9, 30), dt.time(17, 0))),
        ("", None),
        ("  ", None),
        ("off", None),
        ("OFF", None),
    ],
)
def test_parse(text: str, expected: QuietHours | None) -> None:
    # Given a setting's text
    # When parsing it
    result = QuietHours.parse(text)
    # Then it is a window, or None for no quiet hours
    assert result == expected


@pytest.mark.parametrize(
    "text",
    ["21-8", "21:00", "21:00-", "25:00-08:00", "21:60-08:00", "21:00-21:00", "abc", "21:00–08:00"],
)
def test_parse_errors_name_the_expected_form(text: str) -> None:
    # Given text that is not a window
    # When / Then the error says what is expected
    with pytest.raises(ValueError, match=r"must look like 'HH:MM-HH:MM'"):
        QuietHours.parse(text)


# ---- local_day_bounds ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        ("2025-06-10 15:30:00", "2025-06-10 00:00:00", "2025-06-11 00:00:00"),
        ("2025-06-10 00:00:00", "2025-06-10 00:00:00", "2025-06-11 00:00:00"),
        ("2025-12-31 23:59:59", "2025-12-31 00:00:00", "2026-01-01 00:00:00"),
    ],
)
def test_local_day_bounds(now: str, start: str, end: str) -> None:
    # Given a local instant
    # When asking for its local day
    bounds = local_day_bounds(at(now))
    # Then it is [midnight, next midnight) in the same zone
    assert bounds == (at(start), at(end))
    assert all(b.tzinfo is SHANGHAI for b in bounds)


# ---- decide ----------------------------------------------------------------------------------
def _decide(
    now: str,
    *,
    critical: bool = False,
    opted_out: bool = False,
    sent_today: int = 0,
    daily_cap: int | None = 5,
    quiet: QuietHours | None = NIGHT,
) -> Decision:
    return decide(
        now_local=at(now),
        critical=critical,
        opted_out=opted_out,
        sent_today=sent_today,
        daily_cap=daily_cap,
        quiet=quiet,
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # The 5th and 6th SMS of the day with a cap of 5.
        (dict(now="2025-06-10 10:00:00", sent_today=4), Decision("send")),
        (
            dict(now="2025-06-10 10:00:00", sent_today=5),
            Decision("defer", at("2025-06-11 08:00:00"), "daily cap"),
        ),
        (
            dict(now="2025-06-10 10:00:00", sent_today=9),
            Decision("defer", at("2025-06-11 08:00:00"), "daily cap"),
        ),
        (dict(now="2025-06-10 10:00:00", sent_today=100, daily_cap=None), Decision("send")),
        (
            dict(now="2025-06-10 10:00:00", daily_cap=0),
            Decision("defer", at("2025-06-11 08:00:00"), "daily cap"),
        ),
        # Quiet hours at their edges.
        (dict(now="2025-06-10 20:59:59"), Decision("send")),
        (
            dict(now="2025-06-10 21:00:00"),
            Decision("defer", at("2025-06-11 08:00:00"), "quiet hours"),
        ),
        (
            dict(now="2025-06-10 02:00:00"),
            Decision("defer", at("2025-06-10 08:00:00"), "quiet hours"),
        ),
        (
            dict(now="2025-06-10 07:59:59"),
            Decision("defer", at("2025-06-10 08:00:00"), "quiet hours"),
        ),
        (dict(now="2025-06-10 08:00:00"), Decision("send")),
        (dict(now="2025-06-10 23:00:00", quiet=None), Decision("send")),
        # Cap and quiet hours together: the later instant wins.
        (
            dict(now="2025-06-10 22:00:00", sent_today=5),
            Decision("defer", at("2025-06-11 08:00:00"), "daily cap"),
        ),
        (
            # At 02:00 the quiet window ends at 08:00 today, but today's cap is spent.
            dict(now="2025-06-10 02:00:00", sent_today=5),
            Decision("defer", at("2025-06-11 08:00:00"), "daily cap"),
        ),
        (
            dict(now="2025-12-31 23:59:00", sent_today=5),
            Decision("defer", at("2026-01-01 08:00:00"), "daily cap"),
        ),
        # Cap without quiet hours, or with a window that leaves midnight open.
        (
            dict(now="2025-06-10 23:00:00", sent_today=5, quiet=None),
            Decision("defer", at("2025-06-11 00:00:00"), "daily cap"),
        ),
        (
            dict(now="2025-06-10 15:00:00", sent_today=5, quiet=LUNCH),
            Decision("defer", at("2025-06-11 00:00:00"), "daily cap"),
        ),
        (
            dict(now="2025-06-10 12:30:00", quiet=LUNCH),
            Decision("defer", at("2025-06-10 14:00:00"), "quiet hours"),
        ),
        # Critical bypasses quiet hours and the cap.
        (dict(now="2025-06-10 22:00:00", critical=True), Decision("send", reason="critical")),
        (
            dict(now="2025-06-10 03:00:00", critical=True, sent_today=50),
            Decision("send", reason="critical"),
        ),
        # Opt-out suppresses, whatever else holds.
        (dict(now="2025-06-10 10:00:00", opted_out=True), Decision("suppress", reason="opted out")),
        (
            dict(now="2025-06-10 22:00:00", opted_out=True, sent_today=5),
            Decision("suppress", reason="opted out"),
        ),
        (
            dict(now="2025-06-10 10:00:00", opted_out=True, critical=True),
            Decision("suppress", reason="opted out"),
        ),
    ],
)
def test_decide(kwargs: dict[str, object], expected: Decision) -> None:
    # Given the local time, what was sent today and the citizen's state
    # When deciding on one more message
    result = _decide(**kwargs)  # type: ignore[arg-type]
    # Then it is sent, deferred to the right instant, or suppressed
    assert result == expected
    if result.not_before is not None:
        assert result.not_before.tzinfo is SHANGHAI


@pytest.mark.parametrize(
    "kwargs",
    [dict(sent_today=-1), dict(daily_cap=-1)],
)
def test_decide_refuses_negative_counts(kwargs: dict[str, int]) -> None:
    # Given a negative count or cap
    # When / Then it is a caller bug, not a decision
    with pytest.raises(ValueError, match="negative"):
        _decide("2025-06-10 10:00:00", **kwargs)  # type: ignore[arg-type]


def test_a_deferral_needs_an_instant() -> None:
    # Given a deferral without not_before
    # When / Then it cannot be built
    with pytest.raises(ValueError, match="not_before"):
        Decision("defer")
