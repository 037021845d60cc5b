"""Moves the wall clock of every Python process of a benchmark run, to check that no decision
reads it (``make bench`` must give the same answers at any hour).

Put this folder on ``PYTHONPATH`` and set ``BENCH_WALL_OFFSET_S`` (seconds, may be negative):
``time.time()``, ``time.time_ns()``, ``datetime.datetime.now()/utcnow()/today()`` and
``datetime.date.today()`` then read that much later in this process and in every process it
starts (the variable and ``PYTHONPATH`` are inherited; ``benchmarks.common.child_env`` drops
only ``GOVNOTIFY_*``). ``time.monotonic()`` is left alone, so sleeps and deadlines are real.
``python -m benchmarks.at_hour`` sets both for a given local hour. (libfaketime cannot do this
here: Python 3.11's ``time.sleep`` fails or hangs under it.)
"""

from __future__ import annotations

import os

_OFFSET = float(os.environ.get("BENCH_WALL_OFFSET_S") or 0)

if _OFFSET:
    import datetime as _dt
    import time as _time
    import warnings

    # Cython modules imported later compare the size of datetime's types with their own
    # headers and warn about the subclasses below; they only read values, which stay plain.
    warnings.filterwarnings("ignore", r"datetime\.(date|datetime) size changed")

    _real_time, _real_time_ns = _time.time, _time.time_ns
    _BaseDateTime, _BaseDate = _dt.datetime, _dt.date

    def _time_shifted() -> float:
        return _real_time() + _OFFSET

    def _time_ns_shifted() -> int:
        return _real_time_ns() + int(_OFFSET * 1_000_000_000)

    class _Meta(type):
        # Values made by C code (pydantic, psycopg) are plain datetimes: still "datetimes".
        def __instancecheck__(cls, obj: object) -> bool:
            return isinstance(obj, cls.__mro__[1])

        def __subclasscheck__(cls, sub: type) -> bool:
            return issubclass(sub, cls.__mro__[1])

    class _Date(_BaseDate, metaclass=_Meta):
        @classmethod
        def today(cls):  # type: ignore[no-untyped-def, override]
            return _BaseDate.fromtimestamp(_time_shifted())

    class _DateTime(_BaseDateTime, metaclass=_Meta):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return _BaseDateTime.fromtimestamp(_time_shifted(), tz)

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def, override]
            return _BaseDateTime.fromtimestamp(_time_shifted(), _dt.UTC).replace(tzinfo=None)

        @classmethod
        def today(cls):  # type: ignore[no-untyped-def, override]
            return _BaseDateTime.fromtimestamp(_time_shifted())

    _time.time = _time_shifted
    _time.time_ns = _time_ns_shifted
    _dt.datetime = _DateTime  # type: ignore[misc]
    _dt.date = _Date  # type: ignore[misc]
