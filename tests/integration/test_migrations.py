"""The Alembic migrations build exactly the SQLModel tables, on PostgreSQL and on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlmodel import SQLModel

import schemas.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from infra.db import upgrade

pytestmark = pytest.mark.integration

#: Every table the models define: the migrations must create exactly these.
TABLES = set(SQLModel.metadata.tables)


def _head() -> str:
    from alembic.script import ScriptDirectory

    from infra.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


@pytest.fixture
def pg_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def test_migrated_postgres_matches_the_models(pg_engine: Engine) -> None:
    # Given a database built only by the migrations (the fixture ran `upgrade`)
    # When autogenerate compares it with the SQLModel tables
    diff = _diff(pg_engine)

    # Then there is nothing to migrate
    assert diff == []
    assert TABLES <= set(inspect(pg_engine).get_table_names())


def test_comparison_would_notice_a_missing_column(pg_engine: Engine) -> None:
    # Given the migrated database with one column dropped behind Alembic's back
    with pg_engine.begin() as conn:
        conn.execute(text("ALTER TABLE notification DROP COLUMN segments"))

    # When compared with the models
    diff = _diff(pg_engine)

    # Then the comparison reports it (so the test above can fail)
    assert any("segments" in repr(change) for change in diff), diff


def test_upgrade_is_idempotent(database_url: str, pg_engine: Engine) -> None:
    # Given a migrated database holding a row
    with pg_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO license_record (license_id, status, category, issuing_department,"
                " expires_on, last_event_at, updated_at) VALUES ('LIC-1', 'live', 'food_business',"
                " '长安区市场监督管理局', '2026-12-25', now(), now())"
            )
        )

    # When upgrade runs again, twice
    upgrade(url=database_url)
    upgrade(url=database_url)

    # Then it is still at head, with the row kept and nothing to migrate
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            _head()
        ]
        assert conn.execute(text("SELECT count(*) FROM license_record")).scalar_one() == 1
    assert _diff(pg_engine) == []


def test_upgrade_on_a_sqlite_file_creates_the_tables(tmp_path: Path) -> None:
    # Given a SQLite file path whose folder does not exist yet
    db_file = tmp_path / "new" / f"{uuid.uuid4().hex}.db"
    url = f"sqlite:///{db_file}"

    # When the migrations are applied (twice: idempotent here too)
    upgrade(url=url)
    upgrade(url=url)

    # Then the file has the four tables, and matches the models
    engine = create_engine(url)
    try:
        assert db_file.is_file()
        assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
        assert _diff(engine) == []
    finally:
        engine.dispose()
