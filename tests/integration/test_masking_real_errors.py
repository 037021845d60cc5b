"""Real database errors would quote personal data (psycopg's DETAIL line, SQLAlchemy's
parameters); infra.db keeps both out of the exception (hide_parameters and its handle_error
scrub), and whatever a handler is given comes out masked besides."""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from infra.db import engine_for
from infra.logging import install_masking
from schemas.models import CallListEntry, OptOut
from tests.support import _FULL_MOBILE

pytestmark = pytest.mark.integration


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose handler masks (as in every govnotify process); kept out of the root's."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(f"govnotify.test.real_errors.{id(buffer)}")
    logger.propagate = False  # these records hold numbers on purpose
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    install_masking(logger, process=False)
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)
        handler.close()


def _duplicate(database_url: str, make) -> IntegrityError:  # type: ignore[no-untyped-def]
    engine = engine_for(database_url, pool_size=1)
    try:
        with Session(engine) as s:
            s.add(make())
            s.commit()
        with Session(engine) as s:
            s.add(make())
            with pytest.raises(IntegrityError) as caught:
                s.commit()
        return caught.value
    finally:
        engine.dispose()


def _opt_out() -> OptOut:
    return OptOut(recipient="+8613800138000", category="surveys")


def _call_list_entry() -> CallListEntry:
    return CallListEntry(
        idempotency_key="renewal:call_list:LIC-1:2026-12-25:3",
        license_id="LIC-1",
        category="food_business",
        issuing_department="市场监督管理局",
        holder_name="张三丰",
        holder_mobile="+8613800138000",
        expires_on=dt.date(2026, 12, 25),
        offset_days=3,
        due_on=dt.date(2026, 12, 22),
    )


@pytest.mark.parametrize("make", [_opt_out, _call_list_entry])
def test_postgresql_integrity_errors_are_logged_masked(
    database_url: str, captured: tuple[logging.Logger, io.StringIO], make
) -> None:
    # Given a real unique violation on PostgreSQL, whose text says what was violated and
    # quotes neither the DETAIL line (the key) nor the parameters (the row)
    logger, buffer = captured
    error = _duplicate(database_url, make)
    assert "duplicate key value violates unique constraint" in str(error)
    assert "13800138000" not in str(error) and "张三丰" not in str(error)

    # When it is logged with its traceback (psycopg's error chained under SQLAlchemy's)
    try:
        raise error
    except IntegrityError:
        logger.exception("could not record %s", type(error).__name__)

    # Then
    text = buffer.getvalue()
    assert "UniqueViolation" in text and "Traceback" in text
    assert not _FULL_MOBILE.search(text), text
    assert "13800138000" not in text and "138****8000" not in text
    assert "张三丰" not in text and "张**" not in text
    assert "SQL parameters hidden" in text
