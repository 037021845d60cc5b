"""Database engine, sessions and migrations.

PostgreSQL in production and tests, SQLite as the zero-set-up default. The schema is owned by
Alembic migrations (``infra/migrations``), generated from the SQLModel tables in
``schemas.models``; ``upgrade()`` applies them and is what ``govnotify db upgrade`` and
``govnotify services up`` call.

Every engine is made with ``hide_parameters=True``: SQLAlchemy otherwise puts a failed
statement's bound values (a name, a mobile number) into the exception's message, and from there
into logs and tracebacks. PostgreSQL's own message can quote a value too (``DETAIL:  Key
(id)=(13800138000) already exists``, ``Failing row contains (…)``, ``invalid input syntax for
type integer: "张三"``): a ``handle_error`` hook rewrites the message of the driver's exception
and of SQLAlchemy's wrapper (same types, so every ``except IntegrityError`` still works) to keep
the error's kind, constraint, table and column names and drop the values.

The SQLite file holds the same personal data as PostgreSQL does, so it is created readable by
its owner only (0600, its folder 0700 when we create it), and so are its ``-wal`` and ``-shm``
files.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import Engine, Table, TextClause, all_, any_, bindparam, cast, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.types import NullType
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "HIDDEN",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "BinaryArray",
    "binary_array",
    "bound_array",
    "conflict_insert",
    "connected_session",
    "engine_for",
    "get_engine",
    "on_postgresql",
    "scrub_db_message",
    "session",
    "skip_locked",
    "unnest_insert",
    "unnest_params",
    "upgrade",
]

MIGRATIONS = Path(__file__).with_name("migrations")
#: Files holding personal data: owner read/write only.
PRIVATE_FILE_MODE = 0o600
#: Folders we create for them: owner only.
PRIVATE_DIR_MODE = 0o700
#: SQLite's companions of a database file in WAL mode.
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL; None for an in-memory database."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _private_sqlite_file(path: Path) -> None:
    """Create ``path`` (and its folder) owner-only before SQLite opens it; tighten an old one.

    SQLite creates a missing file with 0644 (less the umask), and its -wal and -shm files with
    the database file's mode, so creating the file 0600 first covers all three.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        # A file made before this rule (or under a loose umask) is tightened as well.
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    for suffix in _SQLITE_SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(path.name + suffix), PRIVATE_FILE_MODE)


#: Lines of a PostgreSQL error after the primary message (DETAIL, CONTEXT, HINT, …): DETAIL and
#: CONTEXT quote keys, rows and parameters, so none is kept.
_PG_EXTRA_LINE = re.compile(r"\n(?:DETAIL|CONTEXT|HINT|QUERY|LINE \d+|WHERE):.*", re.DOTALL)
#: A quoted string in a primary message, with the word before it: matched left to right, so
#: the text between two quoted names is never taken for a quoted string itself.
_PG_QUOTED = re.compile(r'(?:(\w+) )?"[^"]*"')
#: Words that introduce an identifier, which stays (``constraint "t_pkey"``, ``relation "t"``).
_PG_IDENTIFIER_WORDS = frozenset(
    "constraint relation column table index type schema sequence database role function enum "
    "operator trigger view".split()
)
#: Marks a removed value.
HIDDEN = "[hidden]"


def scrub_db_message(message: str) -> str:
    """A database error message without the values it quotes (keys, rows, bad input).

    PostgreSQL's DETAIL/CONTEXT/HINT lines are dropped and quoted literals in the primary
    message replaced with ``[hidden]``; quoted identifiers (constraint, relation, column …)
    stay, so the message still says what was violated.
    """
    primary = _PG_EXTRA_LINE.sub("", message)

    def hide(match: re.Match[str]) -> str:
        word = match.group(1)
        if word is not None and word.lower() in _PG_IDENTIFIER_WORDS:
            return match.group(0)
        return f'{word} "{HIDDEN}"' if word is not None else f'"{HIDDEN}"'

    return _PG_QUOTED.sub(hide, primary)


def _scrub_error(context: ExceptionContext) -> None:
    """Rewrite the driver's and SQLAlchemy's exception messages without the values."""
    for exc in (context.original_exception, context.sqlalchemy_exception):
        if exc is None or len(exc.args) != 1 or not isinstance(exc.args[0], str):
            continue
        scrubbed = scrub_db_message(exc.args[0])
        if scrubbed != exc.args[0]:
            exc.args = (scrubbed,)


def engine_for(url: str, *, pool_size: int = 10) -> Engine:
    """A new engine for ``url``; SQLite gets WAL and a busy timeout so threads can share it.

    Bound parameters never appear in error messages (``hide_parameters``).
    """
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path is not None:
            _private_sqlite_file(path)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL lets readers and one writer work at once; several worker threads write.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        event.listen(engine, "handle_error", _scrub_error)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,
    )
    event.listen(engine, "handle_error", _scrub_error)
    return engine


@functools.cache
def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``."""
    return engine_for(url)


def session(settings: Settings) -> Session:
    """A new session on the configured database (use as a context manager)."""
    return Session(get_engine(settings.resolved_database_url), expire_on_commit=False)


def on_postgresql(s: Session) -> bool:
    """Whether ``s`` is bound to PostgreSQL (else SQLite, the zero-set-up default)."""
    return s.get_bind().dialect.name == "postgresql"


def conflict_insert(s: Session) -> Any:
    """The ``insert`` of ``s``'s database that has ``on_conflict_do_nothing/_update``
    (PostgreSQL's, or SQLite's, the zero-set-up default's)."""
    return postgresql.insert if on_postgresql(s) else sqlite.insert


def skip_locked(s: Session, query: Any) -> Any:
    """``query … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so parallel processes (schedulers)
    each take other rows; unchanged on SQLite, which has no row locks (one process there)."""
    return query.with_for_update(skip_locked=True) if on_postgresql(s) else query


def one_of(s: Session, column: Any, values: Collection[Any]) -> Any:
    """``column IN values``, for a batch's ids or recipients.

    On PostgreSQL ``column = ANY(:array)``: one array parameter, so the statement's text is the
    same for any number of values, and psycopg parses it once (and SQLAlchemy compiles it once)
    instead of a new ``IN (…100 placeholders…)`` text each batch; psycopg does not even cache
    the parse of a statement with more than 50 parameters. SQLite has no arrays: ``IN`` there.

    In an ORM ``UPDATE``/``DELETE`` use ``synchronize_session=False``: the ORM cannot evaluate
    ``= ANY`` in Python.
    """
    if on_postgresql(s):
        return column == any_(_array_parameter(column, values))
    return column.in_(list(values))


def none_of(s: Session, column: Any, values: Collection[Any]) -> Any:
    """``column NOT IN values`` (a column without NULLs), as :func:`one_of`: ``<> ALL(:array)``
    on PostgreSQL."""
    if on_postgresql(s):
        return column != all_(_array_parameter(column, values))
    return column.not_in(list(values))


def _array_parameter(column: Any, values: Collection[Any]) -> Any:
    """``values`` as one binary array parameter of ``column``'s type (:func:`bound_array`: as a
    text array psycopg would quote and escape every element in Python, ~2 µs an id). Untyped,
    so that no bind processor copies the BinaryArray into a plain list; the statement casts it."""
    type_ = column.type  # read once: on an ORM attribute each read costs ~6 µs
    return cast(bindparam(None, bound_array(type_, values), type_=NullType()), _array_of(type_))


#: The dialect whose bind processing :func:`bound_array` applies.
_PG = postgresql.dialect()


@functools.lru_cache(maxsize=256)
def _array_of(type_: Any) -> postgresql.ARRAY:
    """An array of ``type_``: once per column type, not on every :func:`one_of` (a hot path:
    every batch's ids)."""
    return postgresql.ARRAY(type_)


class BinaryArray(list[Any]):
    """A batch's column that psycopg sends to PostgreSQL as a binary array parameter.

    psycopg sends a list as a text array, quoting and escaping every element in Python: the
    journal's 500 event bodies (JSON, ~400 bytes each, as ``bytea``) took 40 ms a batch to dump
    that way, 0.1 ms in binary. Bind it without a SQLAlchemy type and give the array's type in
    the SQL (``CAST(:bodies AS bytea[])``): a type's bind processor would copy it into a plain
    list. Use :func:`binary_array`, which leaves an empty batch a plain list.
    """


# psycopg picks the last dumper registered for a class in "%s" (AUTO) placeholders.
psycopg.adapters.register_dumper(BinaryArray, ListBinaryDumper)


def binary_array(values: Collection[Any]) -> list[Any]:
    """``values`` as a :class:`BinaryArray`; an empty list stays a plain one (a binary array
    needs an element to take its type from)."""
    return BinaryArray(values) if values else []


@functools.cache
def unnest_insert(table: Table, columns: tuple[str, ...], conflict: str) -> TextClause:
    """PostgreSQL's insert of a batch into ``table``: one row per element of the array
    parameters ``a_<column>`` (:func:`unnest_params`), then ``conflict`` (the statement's
    ``ON CONFLICT …`` clause and anything after it, written by the caller).

    Its text never changes with the number of rows, so psycopg parses it once (the multi-row
    ``VALUES`` SQLAlchemy renders otherwise is a new text of thousands of placeholders for each
    batch size, parsed again each time). Every column travels as a :class:`BinaryArray`
    (untyped: the statement casts it), its values already through their type's bind processing
    (:func:`unnest_params`).
    """
    arrays = ", ".join(f"CAST(:a_{c} AS {table.c[c].type.compile(dialect=_PG)}[])" for c in columns)
    # Every name is one of the table's own columns (``table.c[c]`` above raises for any other);
    # every value is a bound parameter.
    return text(
        f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "  # noqa: S608
        + conflict
    ).bindparams(*(bindparam(f"a_{c}") for c in columns))


def unnest_params(
    table: Table, columns: tuple[str, ...], rows: Collection[dict[str, Any]]
) -> dict[str, list[Any]]:
    """The parameters of :func:`unnest_insert` for ``rows`` (each with every one of
    ``columns``), binary: psycopg's text arrays quote and escape every element in Python (100 SMS
    bodies: 451 µs as text, 26 µs in binary; a notification's six timestamps were ~5% of a
    worker's CPU as text). Values go through their type's bind processing here (``TZ``'s
    checks, booleans), as SQLAlchemy would have done element by element."""
    return {f"a_{c}": bound_array(table.c[c].type, [row[c] for row in rows]) for c in columns}


def bound_array(type_: Any, values: Collection[Any]) -> list[Any]:
    """``values`` through ``type_``'s bind processing (``TZ``'s check and UTC, booleans), as
    SQLAlchemy would apply it element by element, as a :func:`binary_array`: for an untyped
    parameter the statement casts to ``type_``'s array."""
    process = _bind_processor(type_)
    return binary_array(values if process is None else [process(value) for value in values])


@functools.lru_cache(maxsize=256)
def _bind_processor(type_: Any) -> Any:
    return type_.dialect_impl(_PG).bind_processor(_PG)


@contextlib.contextmanager
def connected_session(settings: Settings) -> Iterator[Session]:
    """A session that keeps one pool connection for all its transactions.

    A plain :func:`session` gives its connection back to the pool at each commit and takes one
    again (with the pool's pre-ping ``SELECT 1``) for the next transaction. This one checks out
    once: for a few short transactions in a row. Each commit is still a real commit. Never hold
    it across a slow call (a provider's): that would hold the connection.
    """
    with (
        get_engine(settings.resolved_database_url).connect() as conn,
        Session(bind=conn, expire_on_commit=False) as s,
    ):
        yield s


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
    path = _sqlite_path(url)
    if path is not None:
        _private_sqlite_file(path)
    command.upgrade(alembic_config(url), "head")
