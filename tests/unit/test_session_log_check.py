"""The session-wide log check of tests/conftest.py: a full mobile in any log fails the run.

Run as a nested pytest on a probe test file, with tests/conftest.py loaded as a plugin and its
own --basetemp outside this session's (the probe leaks on purpose; our own check must not see
it, and a nested default basetemp could prune this session's).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import log_leaks

REPO = Path(__file__).resolve().parents[2]

_PROBE = textwrap.dedent(
    """
    import logging
    import os
    from pathlib import Path


    def test_probe(tmp_path: Path) -> None:
        # test input, not a log: never reported
        (tmp_path / "events.jsonl").write_text('{"holder_mobile": "13800138000"}\\n')
        # a component's log, masked as it should be
        (tmp_path / "worker.log").write_text("sent to 138****8000\\n")
        if os.environ.get("PROBE_LEAK") == "process":
            (tmp_path / "logs").mkdir()
            (tmp_path / "logs" / "relay.log").write_text("rejected 13900139000\\n")
        if os.environ.get("PROBE_LEAK") == "credential":
            (tmp_path / "logs").mkdir()
            (tmp_path / "logs" / "api.log").write_text(
                "auth f4ce7e570ca1ab1e0123456789abcdef refused\\n"
            )
        if os.environ.get("PROBE_LEAK") == "logging":
            logging.getLogger("govnotify.probe").info("sms to +8613700137000")
        # a library's line, and our line with a library's error: masked as in production
        logging.getLogger("urllib3.connectionpool").warning("GET /Messages?To=13600136000")
        try:
            raise ValueError("Key (recipient)=(+8613500135000) already exists")
        except ValueError:
            logging.getLogger("govnotify.probe").exception("could not record")
    """
)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside this session's basetemp (which the session check reads)."""
    path = Path(tempfile.mkdtemp(prefix="govnotify-probe-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_probe(folder: Path, leak: str) -> subprocess.CompletedProcess[str]:
    probe = folder / "test_probe.py"
    probe.write_text(_PROBE)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            f"--rootdir={REPO}",
            "-c",
            str(REPO / "pyproject.toml"),
            f"--basetemp={folder / 'basetemp'}",
            str(probe),
        ],
        cwd=REPO,
        env={**_clean_env(), "PROBE_LEAK": leak},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("GOVNOTIFY_", "PYTEST_"))}


@pytest.mark.parametrize(
    ("leak", "where", "masked"),
    [
        ("process", "logs/relay.log:1:", "139****9000"),
        ("logging", "session-logs/pytest-logging.log:1:", "+86137****7000"),
        ("credential", "logs/api.log:1:", "auth [credential] refused"),
    ],
)
def test_a_full_number_in_any_log_fails_the_run(
    outside: Path, leak: str, where: str, masked: str
) -> None:
    # Given a probe test that passes but leaves a full number in a log

    # When
    result = _run_probe(outside, leak)

    # Then the run fails, naming the file and line, showing the line masked
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 passed" in out
    assert "PERSONAL DATA OR CREDENTIALS IN LOGS" in out
    assert "1 log line(s)" in out
    [report] = [line for line in out.splitlines() if where in line]
    assert masked in report
    assert "events.jsonl" not in out and "worker.log" not in out
    assert "13900139000" not in out and "13700137000" not in out
    assert "urllib3" not in out and "already exists" not in out


def test_inputs_and_masked_logs_pass(outside: Path) -> None:
    # Given / When: a number only in a test input and a masked log line
    result = _run_probe(outside, "none")

    # Then
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "PERSONAL DATA OR CREDENTIALS IN LOGS" not in out


def test_log_leaks_reads_only_log_files(outside: Path) -> None:
    # Given (outside this session's basetemp: this worker.log leaks on purpose)
    tmp_path = outside
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "worker.log").write_text("ok\nto 13800138000 sent\n")
    (tmp_path / "a" / "events.jsonl").write_text('{"m": "13800138000"}\n')
    (tmp_path / "outbox.log.json").write_text('{"m": "13800138000"}\n')
    (tmp_path / "ids.log").write_text("SM13800138000abc 2026112613800138000123\n")
    # pytest's "<test>current" link to the test's folder: the same file, reported once
    (tmp_path / "acurrent").symlink_to(tmp_path / "a", target_is_directory=True)

    # When
    leaks = log_leaks(tmp_path)

    # Then
    assert leaks == ["a/b/worker.log:2: to 138****8000 sent"]
