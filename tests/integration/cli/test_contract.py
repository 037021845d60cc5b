"""The CLI contract, on the real `govnotify` run as a subprocess against real services.

One exit code per outcome in every command (infra.cli.exits: 0 ok, 1 partial, 2 usage or
configuration, 3 unreachable or down, 4 not found), one line on stderr instead of a traceback,
``--json`` printing one JSON document and nothing else, ``--version``, and an
``operator_audit`` row for every action that changes state.
"""

from __future__ import annotations

import datetime as dt
import getpass
import importlib.metadata
import json
import os
import pty
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from infra.db import session
from infra.services import free_port
from infra.settings import Settings, load_settings
from schemas.models import OperatorAudit, RectificationTicket, Suppression, utcnow
from schemas.phone import normalize_mobile
from tests.support import clean_env, env_for, free_ports, purge_namespace, run_cli
from tests.support.call_list import add_entry

pytestmark = pytest.mark.integration

MOBILE = "13800138000"
OTHER = "13900139000"


@pytest.fixture
def cli_settings(
    namespace: str, database_url: str, amqp_url: str, tmp_path: Path
) -> Iterator[Settings]:
    """Settings on this test's migrated database and its own RabbitMQ names (no Kafka)."""
    s = load_settings(
        namespace=namespace,
        data_dir=tmp_path / "data",
        amqp_url=amqp_url,
        database_url=database_url,
        **free_ports(),
    )
    try:
        yield s
    finally:
        purge_namespace(s)


@pytest.fixture
def bare_database(database_url: str) -> Iterator[str]:
    """A PostgreSQL database next to this test's, never migrated; dropped afterwards."""
    name = f"bare_{uuid.uuid4().hex[:12]}"
    admin = database_url.rsplit("/", 1)[0].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def audit_rows(settings: Settings) -> list[OperatorAudit]:
    with session(settings) as s:
        return list(s.execute(select(OperatorAudit).order_by(OperatorAudit.id)).scalars())


def add_suppression(settings: Settings, mobile: str, category: str = "reminders") -> None:
    with session(settings) as s:
        s.add(
            Suppression(
                recipient=normalize_mobile(mobile), category=category, reason="invalid number"
            )
        )
        s.commit()


def add_ticket(settings: Settings) -> str:
    ticket_id = uuid.uuid4().hex
    now = utcnow()
    with session(settings) as s:
        s.add(
            RectificationTicket(
                id=ticket_id,
                idempotency_key=f"test:{ticket_id}",
                evaluation_id="EV-1",
                case_id="C-1",
                department="市场监督管理局",
                service_item="食品经营许可",
                service_point_id="SP-01",
                rating=1,
                opened_at=now,
                deadline_at=now + dt.timedelta(days=7),
            )
        )
        s.commit()
    return ticket_id


def assert_one_clean_line(stderr: str) -> None:
    """A friendly error: one ``govnotify: …`` line, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("govnotify: "), stderr


# ---- version ---------------------------------------------------------------------------------
def test_version_is_the_installed_distributions() -> None:
    # Given / When
    result = run_cli("--version", env=clean_env())

    # Then
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"govnotify {importlib.metadata.version('govnotify')}"


# ---- exit codes on a reachable, migrated database --------------------------------------------
@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        # 4: what was named does not exist
        (("dead-letters", "show", "ffffffffffff"), 4, "no dead letter"),
        (("rectification", "close", "NO-SUCH-TICKET", "--outcome", "x"), 4, "no rectification"),
        (("call-list", "done", "ffffffffffff"), 4, "no call-list entry"),
        (("suppression", "lift", OTHER), 4, "is not suppressed"),
        (("opt-out", "lift", OTHER), 4, "no opt-out"),
        (("opt-out", "remove", OTHER, "surveys"), 4, "no opt-out"),
        (("sources", "disable", "no-such-source"), 4, "no source"),
        (("sources", "outcome-key", "no-such-source"), 4, "no source"),
        # 2: usage
        (("suppression", "lift", "123"), 2, "not a mainland mobile number"),
        (("opt-out", "add", "123"), 2, "not a mainland mobile number"),
        (("opt-out", "add", OTHER, "horoscopes"), 2, "horoscopes"),
        (("rectification", "close", "T-1", "--outcome", ""), 2, "non-empty --outcome"),
        (("dead-letters", "list", "--stage", "nope"), 2, "unknown stage"),
        (("dead-letters", "replay"), 2, "--all"),
        (("retention", "purge", "--days", "0"), 2, "at least 1"),
        (("top", "--json"), 2, "--once"),
    ],
)
def test_each_outcome_has_its_exit_code_and_one_line(
    cli_settings: Settings, args: tuple[str, ...], code: int, said: str
) -> None:
    # Given a migrated, empty database / When
    result = run_cli(*args, env=env_for(cli_settings))

    # Then
    assert result.returncode == code, result.stdout + result.stderr
    assert said in result.stderr
    assert_one_clean_line(result.stderr)
    assert audit_rows(cli_settings) == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("suppression", "unlift", MOBILE), "invalid choice"),
        (("rectification", "close", "T-1"), "required: --outcome"),
        (("dead-letters", "show"), "required: ID"),
    ],
)
def test_an_argparse_usage_error_exits_2(args: tuple[str, ...], said: str) -> None:
    # Given / When
    result = run_cli(*args, env=clean_env())

    # Then the verb's usage and what was wrong, before anything ran
    assert result.returncode == 2
    assert said in result.stderr
    assert result.stderr.startswith(f"usage: govnotify {args[0]} ")


def test_a_partial_publish_exits_1(cli_settings: Settings, tmp_path: Path) -> None:
    # Given a file whose only line is not an event
    events = tmp_path / "events.jsonl"
    events.write_text('{"not": "an event"}\n', encoding="utf-8")

    # When
    result = run_cli("publish", str(events), env=env_for(cli_settings))

    # Then it says what it refused, and exits 1 (not a traceback, not 0)
    assert result.returncode == 1, result.stderr
    assert "0 accepted, 1 rejected" in result.stdout
    assert result.stderr == ""  # no progress when stderr is not a terminal


def test_publish_shows_progress_on_a_terminal(cli_settings: Settings, tmp_path: Path) -> None:
    # Given 2,500 lines (not events: counted all the same) and stderr on a pseudo-terminal
    events = tmp_path / "events.jsonl"
    events.write_text('{"not": "an event"}\n' * 2500, encoding="utf-8")
    controller, terminal = pty.openpty()

    # When
    try:
        result = subprocess.run(
            [sys.executable, "-m", "infra.cli", "publish", str(events)],
            env=env_for(cli_settings),
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=120,
            check=False,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)

    # Then stdout is the report alone, and the terminal saw the count grow to the end
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1] == "0 accepted, 2500 rejected"
    text = shown.decode()
    assert "1,000 lines read" in text and "2,000 lines read" in text
    assert "2,500 lines read" in text and "lines/s" in text


# ---- unreachable services and an unmigrated database -----------------------------------------
def _closed() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("args", "broken", "code", "said"),
    [
        (("suppression", "list"), "database", 3, "is unreachable"),
        (("opt-out", "add", MOBILE), "database", 3, "is unreachable"),
        (("dead-letters", "list", "--json"), "database", 3, "is unreachable"),
        (("publish", "EVENTS"), "amqp", 3, "RabbitMQ at 127.0.0.1"),
        (("suppression", "list"), "bare", 2, "run `govnotify db upgrade`"),
        (("call-list", "list"), "bare", 2, "run `govnotify db upgrade`"),
        (("opt-out", "lift", MOBILE), "bare", 2, "run `govnotify db upgrade`"),
    ],
)
def test_a_service_down_or_unmigrated_is_one_clear_line(
    cli_settings: Settings,
    bare_database: str,
    tmp_path: Path,
    args: tuple[str, ...],
    broken: str,
    code: int,
    said: str,
) -> None:
    # Given one of the services pointed at a closed port, or a database without tables
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n", encoding="utf-8")
    env = env_for(cli_settings)
    if broken == "database":
        env["GOVNOTIFY_DATABASE_URL"] = f"postgresql+psycopg://{_closed()}/govnotify"
    elif broken == "amqp":
        env["GOVNOTIFY_AMQP_URL"] = f"amqp://guest:guest@{_closed()}/"
    else:
        env["GOVNOTIFY_DATABASE_URL"] = bare_database
    args = tuple(str(events) if a == "EVENTS" else a for a in args)

    # When
    result = run_cli(*args, env=env)

    # Then
    assert result.returncode == code, result.stdout + result.stderr
    assert said in result.stderr
    assert_one_clean_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("services", "status"),
        ("services", "status", "--json"),
        ("top", "--once", "--interval", "0"),
        ("top", "--once", "--interval", "0", "--json"),
    ],
)
def test_status_commands_exit_3_when_everything_is_down(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # Given every service and component on a port nobody listens on
    env = clean_env(
        GOVNOTIFY_AMQP_URL=f"amqp://guest:guest@{_closed()}/",
        GOVNOTIFY_DATABASE_URL=f"postgresql+psycopg://{_closed()}/govnotify",
        GOVNOTIFY_KAFKA_URL=f"kafka://{_closed()}",
        GOVNOTIFY_DATA_DIR=str(tmp_path / "data"),
        **{f"GOVNOTIFY_{name.upper()}": str(port) for name, port in free_ports().items()},
    )

    # When
    result = run_cli(*args, env=env)

    # Then it says what is down and exits 3; with --json, stdout is one JSON document
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    if "--json" in args:
        document = json.loads(result.stdout)
        if args[0] == "services":
            assert document["ok"] is False
            assert document["services"]["rabbitmq"]["state"] == "down"
        else:
            assert {"relay", "stream", "worker", "rabbitmq", "database"} <= set(document["down"])
    else:
        assert "down" in result.stdout


# ---- --json ----------------------------------------------------------------------------------
def test_list_commands_print_one_json_document(cli_settings: Settings) -> None:
    # Given a suppression, an opt-out, a call-list entry and a rectification ticket
    env = env_for(cli_settings)
    add_suppression(cli_settings, MOBILE)
    assert run_cli("opt-out", "add", MOBILE, "surveys", env=env).returncode == 0
    entry = add_entry(cli_settings, "LIC-JSON-1", mobile=MOBILE)
    ticket = add_ticket(cli_settings)

    # When each list runs with --json
    def document(*args: str) -> object:
        result = run_cli(*args, "--json", env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # the whole of stdout is one JSON document

    suppressions = document("suppression", "list")
    opt_outs = document("opt-out", "list", MOBILE)
    dead_letters = document("dead-letters", "list")
    calls = document("call-list", "list")
    tickets = document("rectification", "list")
    green = document("green-channel")
    retention = document("retention", "purge", "--dry-run")
    sources = document("sources", "list")

    # Then each is machine-readable, numbers masked as in the tables
    assert suppressions == {
        "suppressions": [
            {
                "mobile": "+86138****8000",
                "category": "reminders",
                "reason": "invalid number",
                "provider": None,
                "error_code": None,
                "since": suppressions["suppressions"][0]["since"],  # type: ignore[index]
            }
        ]
    }
    assert opt_outs == {"mobile": "+86138****8000", "categories": ["surveys"]}
    assert dead_letters == {"dead_letters": []}
    [call] = calls["entries"]  # type: ignore[index]
    assert (call["id"], call["license_id"], call["mobile"]) == (
        entry,
        "LIC-JSON-1",
        "138****8000",  # as the test helper stored it
    )
    [row] = tickets["tickets"]  # type: ignore[index]
    assert (row["ticket"], row["rating"], row["status"]) == (ticket, 1, "open")
    assert green == {"service_points": []}
    assert retention["dry_run"] is True  # type: ignore[index]
    assert isinstance(sources["sources"], list)  # type: ignore[index]
    assert "38000" not in json.dumps([suppressions, opt_outs, calls])


# ---- the operator audit ----------------------------------------------------------------------
def test_every_state_change_records_its_operator(cli_settings: Settings) -> None:
    # Given a suppressed number, an open call-list entry and an open ticket
    env = env_for(cli_settings)
    add_suppression(cli_settings, OTHER)
    entry = add_entry(cli_settings, "LIC-AUDIT-1", mobile=MOBILE)
    ticket = add_ticket(cli_settings)
    me = getpass.getuser()

    # When operators act, named or by their login
    commands = [
        ("opt-out", "add", MOBILE, "surveys", "--operator", "李娜"),
        ("opt-out", "lift", MOBILE, "surveys"),
        ("suppression", "lift", OTHER, "--operator", "王伟"),
        ("call-list", "done", entry[:10], "--outcome", "已告知", "--operator", "张三"),
        ("rectification", "close", ticket, "--outcome", "已整改"),
        ("dead-letters", "purge", "--all", "--stage", "ingest", "--operator", "赵六"),
    ]
    results = [run_cli(*args, env=env) for args in commands]

    # Then each succeeded and left one audit row: who, what, on which subject (masked)
    for args, result in zip(commands, results, strict=True):
        assert result.returncode == 0, (args, result.stderr)
    rows = [(r.operator, r.action, r.subject) for r in audit_rows(cli_settings)]
    assert rows == [
        ("李娜", "opt-out.add", "+86138****8000"),
        (me, "opt-out.lift", "+86138****8000"),
        ("王伟", "suppression.lift", "+86139****9000"),
        ("张三", "call-list.done", entry),
        (me, "rectification.close", ticket),
        ("赵六", "dead-letters.purge", "--all"),
    ]
    with session(cli_settings) as s:
        lifted = s.get(Suppression, (normalize_mobile(OTHER), "reminders"))
    assert lifted is not None and (lifted.status, lifted.lifted_by) == ("lifted", "王伟")
    assert all(MOBILE not in r.detail and OTHER not in r.detail for r in audit_rows(cli_settings))


# ---- schemas generate ------------------------------------------------------------------------
def test_schemas_generate_writes_where_it_is_told(tmp_path: Path) -> None:
    # Given an empty folder
    out = tmp_path / "schemas"

    # When
    result = run_cli("schemas", "generate", "--out", str(out), env=clean_env())

    # Then the schemas are there, and each is JSON
    assert result.returncode == 0, result.stderr
    written = sorted(out.glob("*.schema.json"))
    assert written and all(json.loads(p.read_text(encoding="utf-8")) for p in written)
    assert result.stdout.count("wrote ") == len(written)


@pytest.mark.parametrize("component", ["relay", "scheduler", "api"])
def test_a_component_whose_metrics_port_is_taken_exits_2_naming_the_variable(
    cli_settings: Settings, component: str
) -> None:
    # Given another program listening on the component's metrics port
    port = getattr(cli_settings, f"{component}_metrics_port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((cli_settings.metrics_host, port))
        holder.listen()

        # When the component starts
        result = run_cli(component, env=env_for(cli_settings), timeout=60)

    # Then it stops at once with one line naming the variable, and no traceback
    assert result.returncode == 2, result.stderr
    variable = f"GOVNOTIFY_{component.upper()}_METRICS_PORT"
    assert variable in result.stderr and "is taken" in result.stderr
    assert "Traceback" not in result.stderr
