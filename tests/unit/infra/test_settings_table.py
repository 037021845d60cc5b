"""The README's settings table is the one generated from Settings.

A setting added without its ``#:`` comment or without regenerating the README fails here, so
the README cannot fall behind the code again (six settings were missing from it).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.settings import Settings, env_name
from infra.settings_doc import field_comments, readme_table, settings_table

README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_setting_has_a_meaning() -> None:
    # Given the fields of Settings
    # When their #: comments are read
    comments = field_comments()

    # Then each one has a comment
    assert [name for name in Settings.model_fields if not comments.get(name)] == []


def test_the_readme_table_is_the_generated_one() -> None:
    # Given the README as committed
    readme = README.read_text(encoding="utf-8")

    # When its table is compared with the one generated from Settings
    # Then they are equal (run `python -m infra.settings_doc` to regenerate it)
    assert readme_table(readme) == settings_table()


def test_the_table_has_one_row_per_setting_under_its_variable() -> None:
    # Given the generated table
    rows = settings_table().splitlines()[2:]

    # When its variables are read
    variables = [row.split(" | ", 1)[0].removeprefix("| ").strip("`") for row in rows]

    # Then each setting has one row, under the variable it is read from
    assert variables == [env_name(name) for name in Settings.model_fields]
    assert "GOVNOTIFY_ENV" in variables


@pytest.mark.parametrize(
    ("change", "check_code"),
    [
        pytest.param(lambda text: text, 0, id="as committed"),
        pytest.param(
            lambda text: (
                "\n".join(line for line in text.splitlines() if "`GOVNOTIFY_SMTP_FROM`" not in line)
                + "\n"
            ),
            1,
            id="a row missing",
        ),
        pytest.param(
            lambda text: text.replace("| `9301` |", "| `9399` |"), 1, id="a default changed"
        ),
    ],
)
def test_the_generator_checks_and_rewrites_a_readme(
    tmp_path: Path, change: Callable[[str], str], check_code: int
) -> None:
    # Given a copy of the README, changed or not
    copy = tmp_path / "README.md"
    copy.write_text(change(README.read_text(encoding="utf-8")), encoding="utf-8")

    # When the generator checks it, then rewrites it
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infra.settings_doc", *args, str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=README.parent,
        )

    checked = run("--check")
    written = run()

    # Then the check says whether it differs, and the rewrite restores the committed README
    assert checked.returncode == check_code, checked.stderr
    assert ("differs from Settings" in checked.stderr) == bool(check_code)
    assert written.returncode == 0, written.stderr
    assert copy.read_text(encoding="utf-8") == README.read_text(encoding="utf-8")
