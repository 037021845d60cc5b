"""Database engine, sessions and migrations.

PostgreSQL in production and tests, SQLite as the zero-set-up default. The schema is owned by
Alembic migrations (``infra/migrations``), generated from the SQLModel tables in
``schemas.models``; ``upgrade()`` applies them and is what ``govnotify db upgrade`` and
``govnotify services up`` call.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["engine_for", "get_engine", "session", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")


def engine_for(url: str, *, pool_size: int = 10) -> Engine:
    """A new engine for ``url``; SQLite gets WAL and a busy timeout so threads can share it."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL lets readers and one writer work at once; several worker threads write.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


@functools.cache
def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``."""
    return engine_for(url)


def session(settings: Settings) -> Session:
    """A new session on the configured database (use as a context manager)."""
    return Session(get_engine(settings.resolved_database_url), expire_on_commit=False)


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings | None = None, *, url: str | None = None) -> None:
    """Apply every migration to the configured database (idempotent)."""
    from alembic import command

    if url is None:
        assert settings is not None
        url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
