"""The exit codes of every ``govnotify`` command, the same outcome giving the same code.

====  ==========================================================================
0     ok
1     partial: some of the work was done, some refused or failed (see the output)
2     usage or configuration: a bad argument, a bad setting, an unmigrated database
3     a service is unreachable (RabbitMQ, PostgreSQL, Kafka, a component), or down
4     not found: the id, ticket, entry or number named does not exist
====  ==========================================================================

argparse's own usage errors exit 2 as well, and an interrupted command 130.
"""

from __future__ import annotations

__all__ = [
    "INTERRUPTED",
    "NOT_FOUND",
    "OK",
    "PARTIAL",
    "UNREACHABLE",
    "USAGE",
    "CommandError",
]

#: Everything asked was done.
OK = 0
#: Some of it was done; the output says what was not.
PARTIAL = 1
#: A bad argument or setting, or a database without its tables: nothing was done.
USAGE = 2
#: A service the command needs is unreachable, or (status commands) something is down.
UNREACHABLE = 3
#: What the command was asked to act on does not exist.
NOT_FOUND = 4
#: Ctrl-C (128 + SIGINT, as the shell reports it).
INTERRUPTED = 130


class CommandError(Exception):
    """Raised by a command to end with one line on stderr and the exit ``code``.

    :func:`infra.cli.main` prints ``govnotify: <message>`` and returns ``code``.
    """

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code
