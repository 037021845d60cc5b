"""``govnotify publish FILE``: events from a JSON-lines file, with publisher confirms.

On a terminal it shows its progress on stderr (lines read and the rate, every
:data:`PROGRESS_EVERY` lines and once at the end), so stdout stays the report a script reads.
A dozen lines of our own rather than ``tqdm``: one counter and one rate need no dependency,
and the line count is not known in advance (stdin, a file being written) for a bar to fill.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from infra.cli import exits
from infra.settings import get_settings
from producers.rabbitmq import Publisher

__all__ = ["PROGRESS_EVERY", "Progress", "cmd_publish", "register"]

#: Lines between two progress updates.
PROGRESS_EVERY = 1000


class Progress:
    """Counts lines as they are handed to the publisher; reports on ``stream`` if a terminal."""

    def __init__(self, stream: TextIO, every: int = PROGRESS_EVERY) -> None:
        self.stream = stream
        self.every = every
        self.enabled = stream.isatty()
        self.count = 0
        self.started = time.monotonic()

    def _show(self, end: str) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.stream.write(f"\r{self.count:,} lines read, {self.count / elapsed:,.0f} lines/s{end}")
        self.stream.flush()

    def track(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        """``lines`` unchanged, counted; an update every ``every`` lines."""
        for line in lines:
            self.count += 1
            if self.enabled and self.count % self.every == 0:
                self._show("")
            yield line

    def done(self) -> None:
        if self.enabled and self.count:
            self._show("\n")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="publish events from a JSON-lines file, with confirms")
    p.add_argument("file", help="JSON-lines file, one event envelope per line ('-' for stdin)")
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="send lines as they are (the relay then rejects bad ones)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also list accepted lines")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    s = get_settings()
    try:
        source = sys.stdin.buffer if args.file == "-" else Path(args.file).open("rb")
    except OSError as exc:
        raise exits.CommandError(f"cannot read {args.file}: {exc.strerror}", exits.USAGE) from exc
    progress = Progress(sys.stderr)
    with (
        source,
        Publisher.from_settings(s) as p,
    ):
        results = p.publish_lines(progress.track(source), validate=not args.no_validate)
    progress.done()
    rejected = [r for r in results if not r.accepted]
    for r in results:
        if r.accepted:
            if args.verbose:
                print(f"line {r.index}: accepted {r.event_id or ''}".rstrip())
        else:
            print(f"line {r.index}: rejected {r.reason}: {r.detail}")
    print(f"{len(results) - len(rejected)} accepted, {len(rejected)} rejected")
    return exits.PARTIAL if rejected else exits.OK
