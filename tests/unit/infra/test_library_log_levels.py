"""The chatty libraries log warnings, not every request (infra.logging.QUIET_LIBRARIES), in the
processes our CLI configures and in dramatiq's worker processes, which configure themselves.

Each case runs in a fresh interpreter: configuring logging replaces ``sys.stderr`` and the
exception hooks, and importing the workers sets the process's dramatiq broker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

#: Then, in every case: twilio's request line and a pika INFO line are not written, twilio's
#: warning and our own INFO line are.
_LOG_LINES = """
import logging
logging.getLogger("twilio.http_client").info("-- BEGIN Twilio API Request --")
logging.getLogger("twilio.http_client").warning("twilio warning")
logging.getLogger("pika.connection").info("pika info")
logging.getLogger("govnotify.worker").info("our info")
"""

CASES = {
    # relay, scheduler, api (and the worker command, before it execs dramatiq)
    "configure_logging": """
        from infra.logging import configure_logging
        configure_logging("INFO", "probe")
    """,
    # a dramatiq worker process: dramatiq's own set-up (INFO, pika at CRITICAL), then our actors
    "dramatiq worker process": """
        import sys, types
        from dramatiq.cli import setup_worker_logging
        setup_worker_logging(types.SimpleNamespace(verbose=0, skip_logging=False), 0, sys.stderr)
        import workers.actors
    """,
}


@pytest.mark.parametrize("setup", list(CASES.values()), ids=list(CASES))
def test_twilio_http_client_logs_warnings_but_not_each_request(setup: str, tmp_path: Path) -> None:
    # Given a process set up as our components are
    script = textwrap.dedent(setup) + _LOG_LINES

    # When it logs through twilio's HTTP client, pika and our own logger
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "GOVNOTIFY_DATA_DIR": str(tmp_path)},
    )

    # Then
    assert result.returncode == 0, result.stderr
    assert "twilio warning" in result.stderr
    assert "our info" in result.stderr
    assert "BEGIN Twilio API Request" not in result.stderr
    assert "pika info" not in result.stderr


def test_quiet_libraries_only_raises_levels() -> None:
    # Given: pika at CRITICAL (as dramatiq's workers set it), twilio's client not set
    script = textwrap.dedent(
        """
        import logging
        from infra.logging import quiet_libraries
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        quiet_libraries()
        print(logging.getLogger("pika").level, logging.getLogger("twilio.http_client").level)
        quiet_libraries("ERROR")
        print(logging.getLogger("twilio.http_client").level)
        """
    )

    # When
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    # Then: pika keeps CRITICAL, twilio gets WARNING, then a higher level asked for
    assert out.split() == ["50", "30", "40"]
