"""Start govnotify components as child processes and always stop them, by pid.

Used by ``govnotify demo`` and the integration tests: every process gets its own session (so a
kill reaches the whole dramatiq process tree), its output goes to a log file, and ``stop_all``
runs on every exit path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "ProcessGroup", "wait_until"]


def wait_until(  # type: ignore[no-untyped-def]
    predicate, timeout: float, interval: float = 0.05, message: str | Callable[[], str] = ""
) -> None:
    """Poll ``predicate`` until it is truthy; TimeoutError after ``timeout`` seconds.

    ``message`` may be a callable, called at the timeout to say what the state was then.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise TimeoutError(text or f"condition not met within {timeout:.0f}s")
        time.sleep(interval)


@dataclass
class Child:
    """One running component."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process tree at once (simulates a crash)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process tree, wait with a deadline, then SIGKILL what is left."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children of the group (dramatiq's worker and fork processes) may outlive the leader.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.poll() is None:
            self.popen.wait(10)


@dataclass
class ProcessGroup:
    """Children started with one environment and log folder; stop_all() ends every one."""

    env: dict[str, str]
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Child:
        """Run ``govnotify <args>`` (via this interpreter) as a new session leader."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        child = Child(name, popen, log_path)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
