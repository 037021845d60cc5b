"""``scripts/prereqs.sh``, run by ``make demo``, ``make test`` and CI: on a machine where it
cannot install (not root, or no apt), it stops at once with the one command that would.

The machine is made to look bare with a PATH that holds only the basic tools (no apt-get,
promtool or prometheus) and, for Python, an interpreter that is too old. RabbitMQ and
PostgreSQL run, as the suite needs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prereqs.sh"
#: What the script itself uses; everything else is absent from the bare PATH.
BASICS = ("bash", "id", "ls", "head", "sleep", "dirname")


@pytest.fixture
def bare_path(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in BASICS:
        (folder / tool).symlink_to(shutil.which(tool) or pytest.fail(f"{tool} missing"))
    (folder / "python3").symlink_to(sys.executable)
    old = folder / "old-python"
    old.write_text("#!/bin/sh\n# answers `sys.version_info < (3, 11)` with yes\nexit 1\n")
    old.chmod(0o755)
    return folder


@pytest.mark.parametrize(
    ("need", "python", "status", "told"),
    [
        # a Python that is too old: refused first, whatever the command
        ("demo", "old-python", 1, "apt-get install -y python3 python3-venv"),
        # the demo needs RabbitMQ only, which runs
        ("demo", "python3", 0, ""),
        # the tests need Prometheus's tools as well: the Debian package is named
        ("test", "python3", 1, "apt-get install -y --no-install-recommends prometheus"),
    ],
)
def test_it_stops_at_once_with_the_command_that_fixes_it(
    bare_path: Path, need: str, python: str, status: int, told: str
) -> None:
    # Given a machine where nothing can be installed
    env = {**os.environ, "PATH": str(bare_path), "PYTHON": str(bare_path / python)}

    # When the script checks what `make <need>` needs
    result = subprocess.run(
        ["bash", str(SCRIPT), need], env=env, capture_output=True, text=True, timeout=60
    )

    # Then it exits with the status, naming the one command to run
    assert result.returncode == status, result.stderr
    if told:
        assert told in result.stderr
        assert result.stderr.strip().splitlines()[-1].strip().endswith(told)
