"""A database error never carries the values of the statement that failed.

On a real PostgreSQL: SQLAlchemy puts bound parameters in its exception messages unless the
engine hides them, and PostgreSQL's own message quotes keys, whole rows and bad input. Neither
may reach a log: the message, the driver's exception, the chained traceback and a log line
through our formatter are all checked, unmasked (a name has no pattern masking could catch).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import traceback
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import DataError, IntegrityError, StatementError

from infra.db import engine_for
from infra.logging import MaskingFormatter
from schemas.models import LicenseRecord, Suppression

pytestmark = pytest.mark.integration

NAME = "欧阳娜娜"
MOBILE = "13800138000"


def _license(license_id: str, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "license_id": license_id,
        "status": "live",
        "category": "food_business",
        "issuing_department": "市场监督管理局",
        "holder_name": NAME,
        "holder_mobile": MOBILE,
        "expires_on": dt.date(2026, 12, 31),
        "last_event_at": dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC),
    }
    values.update(overrides)
    return values


def _insert_license(values: dict[str, object]) -> Callable[[object], None]:
    return lambda conn: conn.execute(insert(LicenseRecord).values(**values))  # type: ignore[attr-defined]


def _duplicate_suppression(conn: object) -> None:
    statement = insert(Suppression).values(
        recipient=MOBILE,
        category="renewal",
        reason=f"{NAME} asked",
        status="active",
        created_at=dt.datetime.now(dt.UTC),
    )
    conn.execute(statement)  # type: ignore[attr-defined]
    conn.execute(statement)  # type: ignore[attr-defined]


def _bad_number(conn: object) -> None:
    # A name where PostgreSQL expects a number: its message quotes the bad input.
    conn.execute(text("SELECT CAST(:n AS integer)"), {"n": f"{NAME}{MOBILE}"})  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("act", "error", "kept"),
    [
        (_duplicate_suppression, IntegrityError, 'unique constraint "suppression_pkey"'),
        (
            _insert_license(_license("LIC-1", holder_mobile=MOBILE * 3)),
            DataError,
            "value too long for type character varying(20)",
        ),
        (
            _insert_license(_license("LIC-2", status=None)),
            IntegrityError,
            'null value in column "status"',
        ),
        (_bad_number, DataError, "invalid input syntax for type integer"),
    ],
    ids=["duplicate-key", "too-long", "not-null-row", "bad-input"],
)
def test_a_failed_statement_shows_what_failed_and_no_value(
    database_url: str,
    act: Callable[[object], None],
    error: type[StatementError],
    kept: str,
) -> None:
    # Given an engine on a real, migrated PostgreSQL database
    engine = engine_for(database_url)
    try:
        # When a statement carrying a name and a mobile number fails
        with pytest.raises(error) as caught, engine.begin() as conn:
            act(conn)
    finally:
        engine.dispose()

    # Then the error still says what went wrong, with the same type as before
    exc = caught.value
    assert kept in str(exc)
    # … and no display of it, the driver's exception and the chained traceback included,
    # holds a value of the statement
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(MaskingFormatter("%(message)s"))
    logger = logging.getLogger(f"test.db_errors.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise exc
    except StatementError:
        logger.exception("insert failed: %s", exc)
    shown = [
        str(exc),
        repr(exc),
        str(exc.orig),
        "".join(traceback.format_exception(exc)),
        out.getvalue(),
    ]
    for text_ in shown:
        assert NAME not in text_ and MOBILE not in text_, text_
    assert "hide_parameters=True" in str(exc)
