"""Counts the SQL a process sends, for ``benchmarks.profile_stages`` (never imported otherwise).

Put this folder on ``PYTHONPATH`` and set ``GOVNOTIFY_SQLCOUNT_DIR``: every Python process
started so (relay, stream, the dramatiq worker and its forks) counts, through SQLAlchemy's
engine events, each statement round trip (``execute`` and ``executemany`` alike, by the
statement's first words and table), each COMMIT and each ROLLBACK, and writes the counts to
``<dir>/<pid>.json`` twice a second. Nothing is changed in what the process does.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import Counter

_DIR = os.environ.get("GOVNOTIFY_SQLCOUNT_DIR")

if _DIR:
    _lock = threading.Lock()
    _counts: Counter[str] = Counter()
    _WORDS = re.compile(
        r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|WITH|BEGIN|COMMIT|ROLLBACK|SAVEPOINT"
        r"|RELEASE SAVEPOINT|COPY|SET|SHOW)\b\s*([\w\".]*)",
        re.IGNORECASE,
    )
    _FROM = re.compile(r"\bFROM\s+([\w\".]+)", re.IGNORECASE)

    def _kind(statement: str) -> str:
        m = _WORDS.match(statement)
        if not m:
            return "other " + statement.strip()[:30]
        verb = m.group(1).upper()
        table = m.group(2).strip('"')
        if verb == "SELECT":
            f = _FROM.search(statement)
            table = f.group(1).strip('"') if f else "-"
        return f"{verb} {table}".strip()

    def _before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        with _lock:
            _counts["statements"] += 1
            if executemany:
                _counts["executemany"] += 1
            _counts["sql: " + _kind(statement)] += 1

    def _commit(conn):  # type: ignore[no-untyped-def]
        with _lock:
            _counts["commits"] += 1

    def _rollback(conn):  # type: ignore[no-untyped-def]
        with _lock:
            _counts["rollbacks"] += 1

    def _count(name: str) -> None:
        with _lock:
            _counts[name] += 1

    def _wrap(cls: type, method: str, label) -> None:  # type: ignore[no-untyped-def]
        original = getattr(cls, method)

        def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            _count(label(args))
            return original(self, *args, **kwargs)

        setattr(cls, method, wrapper)

    def _install() -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.pool import Pool

        event.listen(Engine, "before_cursor_execute", _before)
        event.listen(Engine, "commit", _commit)
        event.listen(Engine, "rollback", _rollback)
        event.listen(Engine, "begin", lambda conn: _count("sqlalchemy begin"))
        event.listen(Pool, "checkout", lambda *a: _count("pool checkouts"))

        # What psycopg itself sends, each a round trip to the server: the statements (the pool's
        # pre-ping SELECT 1 included, which SQLAlchemy's events do not see) and the BEGIN,
        # COMMIT and ROLLBACK commands it issues around them.
        import psycopg

        def _command(args) -> str:  # type: ignore[no-untyped-def]
            command = args[0] if args else b"?"
            if isinstance(command, bytes | bytearray):
                command = command.decode(errors="replace")
            return "psycopg command: " + str(command).split()[0].upper()

        _wrap(psycopg.Connection, "_exec_command", _command)
        _wrap(psycopg.Cursor, "execute", lambda args: "psycopg execute")
        _wrap(psycopg.Cursor, "executemany", lambda args: "psycopg executemany")

    def _dump() -> None:
        path = os.path.join(_DIR, f"{os.getpid()}.json")
        with _lock:
            data = dict(_counts)
        data["argv"] = " ".join(sys.argv)[:200]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    def _writer() -> None:
        while True:
            time.sleep(0.5)
            try:
                _dump()
            except Exception:  # noqa: S110 - a count lost this round is written next round
                pass

    def _start() -> None:
        threading.Thread(target=_writer, name="sqlcount", daemon=True).start()

    def _after_fork() -> None:
        _counts.clear()
        _start()

    try:
        _install()
        _start()
        os.register_at_fork(after_in_child=_after_fork)
    except Exception:  # noqa: S110 - no SQLAlchemy in this interpreter: nothing to count
        pass
