"""``govnotify COMMAND`` imports and registers only the command group that holds COMMAND.

The registry (``infra.cli.COMMAND_GROUPS``) must name each group's commands exactly as its
``register`` adds them, and a command must parse the same with its group alone as with every
group: otherwise a command would vanish or change behind the lazy dispatch.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys

import pytest

from infra.cli import COMMAND_GROUPS, build_parser, command_of


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


@pytest.mark.parametrize(("module", "commands"), COMMAND_GROUPS)
def test_the_registry_names_the_commands_each_group_registers(
    module: str, commands: tuple[str, ...]
) -> None:
    # Given a parser with only this group's register() applied
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")

    # When the group registers its commands
    importlib.import_module(f"infra.cli.{module}").register(sub)

    # Then they are the registry's, in its order
    assert tuple(sub.choices) == commands


def test_every_command_is_held_by_one_group_and_help_lists_them_all() -> None:
    # Given / When
    listed = _commands(build_parser())

    # Then
    registered = [command for _module, commands in COMMAND_GROUPS for command in commands]
    assert listed == registered
    assert len(set(registered)) == len(registered)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["relay"], "relay"),
        (["worker", "--processes", "2"], "worker"),
        (["--today", "2026-12-07", "renewals", "scan"], "renewals"),
        (["--log-level=DEBUG", "dead-letters", "list"], "dead-letters"),
        (["--log-level", "WARNING", "--today=2026-12-07", "publish"], "publish"),
        (["no-such-command"], "no-such-command"),
        ([], None),
        (["--help"], None),
        (["-h", "relay"], None),
        (["--version"], None),
        # Unreadable global options: the full parser is built and says what is wrong.
        (["--today", "yesterday", "relay"], None),
        (["--log-level", "LOUD", "relay"], None),
        (["--today"], None),
    ],
)
def test_command_of_reads_the_command_after_the_global_options(
    argv: list[str], command: str | None
) -> None:
    assert command_of(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        ["relay"],
        ["worker", "--processes", "2", "--threads", "4"],
        ["--today", "2026-12-07", "renewals", "scan"],
        ["--log-level", "DEBUG", "dead-letters", "list", "--limit", "5"],
        ["sources", "list"],
        ["top", "--once"],
    ],
)
def test_a_command_parses_the_same_with_its_group_alone(argv: list[str]) -> None:
    # Given / When
    alone = vars(build_parser(command_of(argv)).parse_args(argv))
    every = vars(build_parser().parse_args(argv))

    # Then the same values, and the same function to run (a verb's is a closure made as its
    # group registers: the same code over the same cells, a new object each build)
    assert _runs(alone.pop("func")) == _runs(every.pop("func"))
    assert alone == every


def _runs(func: object) -> tuple[object, ...]:
    code = getattr(func, "__code__", None)
    cells = getattr(func, "__closure__", None) or ()
    return (code, *(cell.cell_contents for cell in cells))


def test_an_unknown_command_is_refused_with_every_choice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given / When
    with pytest.raises(SystemExit) as ended:
        build_parser(command_of(["relya"])).parse_args(["relya"])

    # Then
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'relya'" in err
    assert "'relay'" in err and "'sources'" in err


def test_a_command_leaves_the_other_groups_unimported() -> None:
    # Given a fresh interpreter (this one has imported every group already)
    probe = (
        "import sys; from infra.cli import build_parser; build_parser('sources'); "
        "print(sorted(m for m in sys.modules if m.startswith('infra.cli.')))"
    )

    # When
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )

    # Then only the sources group (and the package's exits) was imported of the groups
    groups = {f"infra.cli.{module}" for module, _commands in COMMAND_GROUPS}
    imported = set(ast.literal_eval(done.stdout)) & groups
    assert imported == {"infra.cli.sources"}
