"""One verb per action: each command group's verbs have their own help and only their own options.

``govnotify GROUP --help`` lists the group's verbs, ``govnotify GROUP VERB --help`` exits 0, a
group without its verb is a usage error (exit 2) naming the verbs, and an option of one verb
is refused by another (exit 2) instead of being ignored. Parsing only: nothing here needs a
service, so the CLI's ``main()`` runs in this process (argparse exits before any command runs).
"""

from __future__ import annotations

import argparse
import re

import pytest

from infra.cli import build_parser, main
from tests.support import clean_env, run_cli

MOBILE = "13800138000"

#: Every command group with verbs, and its verbs in the order its help lists them.
VERBS = {
    "services": ("up", "down", "status"),
    "db": ("upgrade",),
    "schemas": ("generate",),
    "renewals": ("scan",),
    "journal": ("redrive",),
    "opt-out": ("add", "lift", "list"),
    "rectification": ("list", "close"),
    "call-list": ("list", "done"),
    "dead-letters": ("list", "show", "replay", "purge"),
    "retention": ("purge",),
    "suppression": ("list", "lift"),
    "sources": ("add", "list", "disable", "set-outcome", "outcome-key"),
}
#: Other names a verb answers to, kept for scripts written against them: the verb they name.
ALIASES = {("opt-out", "remove"): "lift"}

#: A verb given an option that only another verb of its group has: (argv, the foreign option).
FOREIGN_OPTIONS = [
    (("dead-letters", "list", "--operator", "x"), "--operator"),
    (("dead-letters", "show", "abc", "--all"), "--all"),
    (("dead-letters", "show", "abc", "--stage", "job"), "--stage"),
    (("dead-letters", "replay", "--all", "--older-than-days", "5"), "--older-than-days"),
    (("dead-letters", "replay", "--all", "--limit", "5"), "--limit"),
    (("dead-letters", "purge", "--all", "--limit", "5"), "--limit"),
    (("call-list", "done", "abc", "--reveal"), "--reveal"),
    (("call-list", "done", "abc", "--department", "x"), "--department"),
    (("call-list", "list", "--outcome", "x"), "--outcome"),
    (("rectification", "list", "--outcome", "x"), "--outcome"),
    (("rectification", "list", "--operator", "x"), "--operator"),
    (("rectification", "close", "T-1", "--outcome", "x", "--department", "y"), "--department"),
    (("opt-out", "list", MOBILE, "--operator", "x"), "--operator"),
    (("suppression", "list", "--operator", "x"), "--operator"),
    (("sources", "list", "--operator", "x"), "--operator"),
]


def parse_exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``govnotify ARGV`` that argparse ends (help or error)."""
    with pytest.raises(SystemExit) as ended:
        main(argv)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def verbs_of(group: argparse.ArgumentParser) -> list[str] | None:
    """The verbs (aliases included) of a group's parser, or None when it takes no verb."""
    for action in group._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return None


def test_the_table_names_every_group_with_verbs_and_all_their_verbs() -> None:
    # Given the CLI's own parser
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))

    # When each group's verbs are read from it
    found = {name: verbs_of(group) for name, group in commands.choices.items()}

    # Then the table above is complete: a new verb or group with verbs is tested below too
    with_verbs = {name: verbs for name, verbs in found.items() if verbs is not None}
    expected = {
        group: sorted([*verbs, *(alias for g, alias in ALIASES if g == group)])
        for group, verbs in VERBS.items()
    }
    assert {name: sorted(verbs) for name, verbs in with_verbs.items()} == expected


@pytest.mark.parametrize("group", VERBS)
def test_group_help_lists_each_verb_with_its_one_line(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given / When
    code, out, _ = parse_exit([group, "--help"], capsys)

    # Then each verb has a line, and a description on it or (a long name) on the next
    assert code == 0
    lines = out.splitlines()
    for verb in VERBS[group]:
        at = [i for i, line in enumerate(lines) if re.match(rf"^\s+{verb}( \(\w+\))?(\s|$)", line)]
        assert at, f"{group} --help does not list {verb}:\n{out}"
        said = lines[at[0]].split(maxsplit=1)[1:] + lines[at[0] + 1 : at[0] + 2]
        assert any(text.strip() for text in said), f"{group} {verb} has no help line:\n{out}"


@pytest.mark.parametrize(
    ("group", "verb"),
    [(group, verb) for group, verbs in VERBS.items() for verb in verbs] + sorted(ALIASES),
)
def test_verb_help_exits_0_with_its_own_usage(
    group: str, verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given / When
    code, out, err = parse_exit([group, verb, "--help"], capsys)

    # Then (an alias shows the usage of the verb it names)
    assert code == 0, err
    assert out.startswith(f"usage: govnotify {group} {ALIASES.get((group, verb), verb)} ")


@pytest.mark.parametrize("group", VERBS)
def test_a_group_without_its_verb_is_a_usage_error_naming_the_verbs(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given / When
    code, _, err = parse_exit([group], capsys)

    # Then
    assert code == 2
    assert "{" + ",".join(VERBS[group]) + "}" in err.splitlines()[-1], err


@pytest.mark.parametrize(("argv", "option"), FOREIGN_OPTIONS)
def test_an_option_of_another_verb_is_refused(
    argv: tuple[str, ...], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given / When
    code, _, err = parse_exit(list(argv), capsys)

    # Then argparse refuses it (exit 2) before anything runs, naming the option
    assert code == 2
    assert "error:" in err and option in err.splitlines()[-1], err


def test_list_all_and_limit_are_one_or_the_other(capsys: pytest.CaptureFixture[str]) -> None:
    # Given / When
    code, _, err = parse_exit(["dead-letters", "list", "--all", "--limit", "5"], capsys)

    # Then
    assert code == 2
    assert "not allowed with argument" in err


def test_the_installed_command_says_so_too() -> None:
    # Given / When: the real `govnotify` process, once, for the whole contract above
    missing = run_cli("dead-letters", env=clean_env())
    foreign = run_cli("dead-letters", "show", "abc", "--all", env=clean_env())

    # Then
    assert missing.returncode == 2
    assert "{list,show,replay,purge}" in missing.stderr
    assert foreign.returncode == 2
    assert "unrecognized arguments: --all" in foreign.stderr
