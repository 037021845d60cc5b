"""The deployment files in ``infra/deploy/``: systemd accepts every unit, and every unit starts
a real ``govnotify`` command (one the CLI's own parser accepts)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.cli import build_parser
from infra.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[3] / "infra" / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
GOVNOTIFY = "/opt/govnotify/bin/govnotify"
#: Every long-running component has a unit, and the scheduler exactly one.
COMPONENTS = {"relay", "stream", "worker", "scheduler", "api"}


def directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every line of a unit file, in order (keys may repeat)."""
    found, section = [], ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def exec_start(unit: Path) -> list[str]:
    (command,) = [v for s, k, v in directives(unit) if (s, k) == ("Service", "ExecStart")]
    return shlex.split(command)


def test_every_component_has_a_unit_that_runs_it() -> None:
    # Given the units shipped in infra/deploy
    # When their ExecStart lines are read
    started = {exec_start(u)[1] for u in UNITS if exec_start(u)[1] in COMPONENTS}

    # Then each component is started by exactly one of them
    assert started == COMPONENTS
    assert [exec_start(u)[1] for u in UNITS].count("scheduler") == 1


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_every_exec_start_names_a_real_govnotify_command(unit: Path) -> None:
    # Given a unit's command line
    argv = exec_start(unit)

    # When the CLI's own parser reads its arguments (it exits on an unknown command or option)
    assert argv[0] == GOVNOTIFY
    args = build_parser().parse_args(argv[1:])

    # Then it names a subcommand that runs something
    assert callable(args.func)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_every_unit_restarts_on_failure_and_stops_its_whole_group(unit: Path) -> None:
    # Given a long-running component's unit (the migration runs once)
    settings = {(s, k): v for s, k, v in directives(unit)}
    if settings.get(("Service", "Type")) == "oneshot":
        pytest.skip("a one-shot unit: nothing to restart")

    # Then it restarts after a crash, but not on a refused configuration (exit 2), reads its
    # settings from the environment file, and stops every process of its control group
    assert settings[("Service", "Restart")] == "on-failure"
    assert settings[("Service", "RestartPreventExitStatus")] == "2"
    assert settings[("Service", "EnvironmentFile")] == "/etc/govnotify/govnotify.env"
    assert settings[("Service", "KillMode")] in {"control-group", "mixed"}


def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip(
            "systemd-analyze is not installed (apt-get install systemd); the parser "
            "checks above still ran"
        )
    # Given the units, with ExecStart pointing at this checkout's govnotify (systemd checks the
    # program exists) and the environment file at a path of the test's
    govnotify = Path(sys.executable).with_name("govnotify")
    env_file = tmp_path / "govnotify.env"
    shutil.copy(DEPLOY / "govnotify.env", env_file)
    for unit in [*UNITS, DEPLOY / "govnotify.target"]:
        text = unit.read_text().replace(GOVNOTIFY, str(govnotify))
        text = text.replace("/etc/govnotify/govnotify.env", str(env_file))
        (tmp_path / unit.name).write_text(text)

    # When systemd verifies them
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("govnotify*.*[et]"))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
        check=False,
    )

    # Then it accepts them without one complaint about our files (it only warns on a bad
    # directive, so its output is read as well as its status)
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if re.search(r"govnotify[\w-]*\.(service|target)", line)
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert ours == []


def test_the_container_runs_govnotify_as_a_non_root_user() -> None:
    # Given the container recipe
    lines = [
        line.strip()
        for line in (DEPLOY / "Containerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    # Then its final stage starts from python:3.11-slim, runs as a numbered non-root user,
    # and `govnotify` is its entrypoint
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM "))]
    assert final == "FROM python:3.11-slim"
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user.split(":")[0] not in {"0", "root"}
    assert 'ENTRYPOINT ["govnotify"]' in lines


def test_the_environment_template_names_only_real_settings() -> None:
    # Given the environment file template, its commented examples included
    text = (DEPLOY / "govnotify.env").read_text()
    named = set(re.findall(r"^#?(GOVNOTIFY_[A-Z0-9_]+)=", text, flags=re.MULTILINE))

    # Then every variable in it is one Settings reads (a typo would be silently ignored)
    known = {f"GOVNOTIFY_{name.upper()}" for name in Settings.model_fields} | {"GOVNOTIFY_ENV"}
    assert named - known == set()
    assert "GOVNOTIFY_ENV=production" in text


def test_the_environment_template_sets_what_production_requires(tmp_path: Path) -> None:
    # Given what production refuses to start without, from development's defaults
    required = {
        f.variable.split(",")[0] for f in load_settings(data_dir=tmp_path / "data").fallbacks()
    }

    # Then the template sets each one (uncommented)
    text = (DEPLOY / "govnotify.env").read_text()
    missing = {v for v in required if not re.search(rf"^{v}=", text, flags=re.MULTILINE)}
    assert missing == set()
