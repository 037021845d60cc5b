"""Fixtures on the real services: one Tansu per session, a fresh PostgreSQL database and a unique
namespace (queues, topics, consumer groups) per test, and every process stopped by pid.

At the end of the session every log written during the run is searched for full mobile numbers
(see :func:`log_leaks`); one found fails the run, whatever the tests said.
"""

from __future__ import annotations

import logging
import os
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import services
from infra.logging import mask_pii
from infra.settings import Settings
from tests.fakes.twilio_server import FakeTwilio
from tests.fakes.webhook_server import FakeWebhook
from tests.support import (
    _FULL_MOBILE,
    Pipeline,
    create_database,
    drop_database,
    pipeline_settings,
    purge_namespace,
    unmasked_mobiles,
)

#: Admin URL of the test PostgreSQL server (trust auth on this machine and in CI).
PG_ADMIN_URL = os.environ.get(
    "GOVNOTIFY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
AMQP_URL = os.environ.get("GOVNOTIFY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    services.check_rabbitmq(AMQP_URL, start=True)
    return AMQP_URL


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.TansuProcess]:
    """One Kafka-compatible broker for the whole session; tests use unique topic names."""
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    proc = services.start_tansu(services.free_port(), log)
    try:
        yield proc
    finally:
        services.stop_pid(proc.pid)


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    """The Twilio Messages API on a loopback port (the real ``twilio`` client talks to it)."""
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[tuple[FakeWebhook, Path]]:
    """A fake receiving every staff webhook, and a staff directory pointing at it."""
    with FakeWebhook() as fake:
        yield fake, fake.staff_directory(tmp_path / "staff.json")


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def database_url(namespace: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test, dropped afterwards."""
    url = create_database(PG_ADMIN_URL, f"govnotify_{namespace}")
    try:
        yield url
    finally:
        drop_database(PG_ADMIN_URL, url)


@pytest.fixture
def settings(
    namespace: str, database_url: str, tmp_path: Path, amqp_url: str, tansu: services.TansuProcess
) -> Iterator[Settings]:
    """Settings for one isolated pipeline; its topics exist, its queues are deleted afterwards."""
    s = pipeline_settings(
        namespace=namespace,
        data_dir=tmp_path / "data",
        amqp_url=amqp_url,
        kafka_url=tansu.url,
        database_url=database_url,
    )
    try:
        yield s
    finally:
        purge_namespace(s)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """Starts components as real processes on demand; stops every one at the end."""
    p = Pipeline(settings, tmp_path / "logs")
    try:
        yield p
    finally:
        p.stop_all()
    # Every log line every component wrote during the test: no full phone number in any.
    leaks = unmasked_mobiles(p.log_dir)
    assert not leaks, "full mobile numbers in logs:\n" + "\n".join(leaks[:10])


# ---- the session-wide log check ---------------------------------------------------------------
#: What counts as a log: files named ``*.log`` under the session's temporary folder (every
#: process a test starts logs there: relay, stream, worker, scheduler, the session's Tansu, CLI
#: runs) plus this process's own logging (:data:`SESSION_LOG`). Test inputs (``events.jsonl``,
#: staff directories) and the sandbox outbox (what a citizen's phone would get) are not logs:
#: they hold numbers on purpose.
LOG_PATTERN = "*.log"
#: This pytest process's logging, written by a root handler for the session (see
#: :class:`SessionLogFormatter`): a full number here is one our own code logged in clear.
SESSION_LOG = Path("session-logs") / "pytest-logging.log"
#: Loggers of our own code (``govnotify.*`` and the packages' ``__name__`` loggers).
OUR_LOGGERS = ("govnotify", "infra", "notifiers", "producers", "schemas", "streams", "workers")
#: The credentials of the test fakes (Twilio's auth token, the gateway's secret): a credential
#: must never reach a log, so these strings showing up anywhere is a leak like a full number.
SECRETS = (
    "f4ce7e570ca1ab1e0123456789abcdef",
    "gw-test-secret-0123456789abcdef",
    "pw-smtp-test-9f8e7d6c5b4a",
    "pw-smtp-e2e-7a6b5c4d3e2f",
)
#: Lines listed in the failure report at most.
_REPORT_LINES = 40

_session: dict[str, object] = {}


def log_leaks(root: Path, pattern: str = LOG_PATTERN) -> list[str]:
    """``file:line: masked line`` for every log line under ``root`` holding a full mobile or
    a test credential."""
    leaks = []
    seen: set[Path] = set()
    for path in sorted(root.rglob(pattern)):
        # pytest links "<test>current" to "<test>0": each file once, under its own name.
        if path.is_symlink() or any(
            (root / p).is_symlink() for p in path.relative_to(root).parents
        ):
            continue
        if not path.is_file() or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        try:
            with path.open(encoding="utf-8", errors="replace") as lines:
                for number, line in enumerate(lines, start=1):
                    if _FULL_MOBILE.search(line) or any(secret in line for secret in SECRETS):
                        where = path.relative_to(root)
                        shown = mask_pii(line.rstrip())
                        for secret in SECRETS:
                            shown = shown.replace(secret, "[credential]")
                        leaks.append(f"{where}:{number}: {shown[:300]}")
        except OSError:
            continue  # removed while we looked (another tool cleaning up): nothing to read
    return leaks


class SessionLogFormatter(logging.Formatter):
    """The session log as production would write it, except for what our own code says.

    In a govnotify process every line passes the masking handlers, so a library's line (an
    urllib3 URL, a psycopg DETAIL quoted in a traceback) is masked here too. The message of a
    record from our own loggers is kept raw: our code logs ids, never a full number, masked or
    not — a number there is a bug even if masking would have hidden it. Records are never
    changed: pytest's own capture (and tests reading ``caplog``) see them as they were.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if not record.name.startswith(OUR_LOGGERS):
            message = mask_pii(message)
        text = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        if record.exc_info:
            text += "\n" + mask_pii("".join(traceback.format_exception(*record.exc_info)))
        elif record.exc_text:
            text += "\n" + mask_pii(record.exc_text)
        if record.stack_info:
            text += "\n" + mask_pii(record.stack_info)
        return text


def _basetemp(config: pytest.Config) -> Path | None:
    factory = getattr(config, "_tmp_path_factory", None)  # absent with -p no:tmpdir
    return None if factory is None else factory.getbasetemp()


def pytest_sessionstart(session: pytest.Session) -> None:
    basetemp = _basetemp(session.config)
    if basetemp is None:
        return
    path = basetemp / SESSION_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(SessionLogFormatter())
    logging.getLogger().addHandler(handler)
    # Our loggers at their production level (the root stays at WARNING for the libraries).
    ours = logging.getLogger("govnotify")
    _session.update(handler=handler, basetemp=basetemp, ours_level=ours.level)
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture is torn down (trylast): read every log; fail loudly on a number."""
    handler = _session.pop("handler", None)
    basetemp = _session.pop("basetemp", None)
    if isinstance(handler, logging.Handler):
        logging.getLogger().removeHandler(handler)
        handler.close()
        level = _session.pop("ours_level", logging.NOTSET)
        logging.getLogger("govnotify").setLevel(level if isinstance(level, int) else 0)
    if not isinstance(basetemp, Path):
        return
    leaks = log_leaks(basetemp)
    if not leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        f"{len(leaks)} log line(s) under {basetemp} hold a full mobile number or a credential "
        "(shown masked here):",
        *leaks[:_REPORT_LINES],
    ]
    if len(leaks) > _REPORT_LINES:
        lines.append(f"… and {len(leaks) - _REPORT_LINES} more")
    if reporter is not None:
        reporter.write_sep("=", "PERSONAL DATA OR CREDENTIALS IN LOGS", red=True, bold=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:  # pragma: no cover - the terminal reporter is always there in a normal run
        print("\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
