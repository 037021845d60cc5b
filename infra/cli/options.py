"""What command groups share: their verbs, and the ``--json`` and ``--operator`` options.

A group with several actions gives each its own verb (``govnotify dead-letters replay ID``): a
subparser with its own one-line help and only its own options, so ``dead-letters show --all``
is refused instead of ignored. :class:`Verbs` adds them; a group run without a verb is a usage
error (exit 2) that names the verbs.

The shared options are parent parsers, made fresh for each verb: argparse copies a parent's
option objects into the child by reference, and a child's ``set_defaults`` changes them in
place, so one parent shared by every verb would let one verb's default leak into another's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from infra.cli.output import add_json_flag

__all__ = ["OPERATOR_HELP", "Verbs", "json_option", "operator_option"]

#: How ``--operator`` is described wherever the operator is only recorded.
OPERATOR_HELP = "who does this (default: your login), for the audit"


def json_option() -> argparse.ArgumentParser:
    """A parent parser holding ``--json``, worded as :func:`~infra.cli.output.add_json_flag`."""
    parent = argparse.ArgumentParser(add_help=False)
    add_json_flag(parent)
    return parent


def operator_option(help: str = OPERATOR_HELP) -> argparse.ArgumentParser:
    """A parent parser holding ``--operator NAME``, recorded in ``operator_audit``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--operator", metavar="NAME", help=help)
    return parent


class Verbs:
    """The verbs of one command group, each a subparser that runs its own function.

    Parameters:
        group: the group's parser (``sub.add_parser("dead-letters", …)``).

    The verb used is ``args.action``; its function is ``args.func``.
    """

    def __init__(self, group: argparse.ArgumentParser) -> None:
        self._actions = group.add_subparsers(dest="action", required=True, title="verbs")
        self._names: list[str] = []

    def add(
        self,
        name: str,
        func: Callable[[argparse.Namespace], int],
        help: str,
        *parents: argparse.ArgumentParser,
        aliases: Sequence[str] = (),
    ) -> argparse.ArgumentParser:
        """Add verb ``name``, described by the one line ``help``; returns its parser.

        Parameters:
            func: what the verb runs, given the parsed arguments; returns the exit code.
            parents: shared options, e.g. :func:`json_option`, :func:`operator_option`.
            aliases: other names for the verb (kept for scripts written against them).
        """
        parser = self._actions.add_parser(
            name, help=help, description=help, parents=list(parents), aliases=list(aliases)
        )
        parser.set_defaults(func=func)
        self._names.append(name)
        # Shown in the group's usage line, and in its error when the verb is missing
        # (argparse names a required subcommand by its metavar, else by its dest).
        self._actions.metavar = "{" + ",".join(self._names) + "}"
        return parser
