"""The fault run's processes: the five components, supervised, and the services it restarts.

:class:`Fleet` runs relay, stream, worker, scheduler and api as children in their own sessions
(``infra.processes``), kills one with SIGKILL on its whole process group (dramatiq's forked
workers included) and restarts it, and restarts any component that exits by itself, as a
supervisor (systemd ``Restart=always``) would, recording that exit: a component that cannot
ride out a broker restart shows up in the report instead of stalling the run. Every process is
stopped by pid; a killed child is forgotten at once, so a recycled pid is never signalled.

The service restarts act on the machine's own RabbitMQ and PostgreSQL (``rabbitmqctl stop`` then
``rabbitmq-server -detached``; ``pg_ctlcluster … restart``) and on the run's own Tansu (SIGKILL,
then a new empty broker on the same port).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from infra.processes import Child, ProcessGroup
from infra.services import (
    ServiceError,
    TansuProcess,
    check_postgres,
    check_rabbitmq,
    port_open,
    start_tansu,
    stop_pid,
)
from infra.settings import Settings

__all__ = [
    "COMPONENTS",
    "Exit",
    "Fleet",
    "group_pids",
    "restart_postgres",
    "restart_rabbitmq",
    "restart_tansu_empty",
]

#: The long-running components, each a ``govnotify`` command of the same name.
COMPONENTS = ("relay", "stream", "worker", "scheduler", "api")
#: The settings field of each component's /metrics, /healthz, /readyz port.
_READY_PORT = {
    "relay": "relay_metrics_port",
    "stream": "stream_metrics_port",
    "worker": "worker_metrics_port",
    "scheduler": "scheduler_metrics_port",
    "api": "api_metrics_port",
}
#: A supervisor's pause before restarting a component that exited by itself.
RESTART_AFTER_S = 1.0
_POLL_S = 0.2


@dataclass(frozen=True)
class Exit:
    """A component that exited without being killed by the run."""

    component: str
    at: float  # time.monotonic()
    returncode: int | None
    log_tail: str


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class Fleet:
    """relay, stream, worker, scheduler and api for one run; restarted when they exit.

    Parameters:
      settings: the run's settings (the readiness ports).
      env: the children's environment (``GOVNOTIFY_*`` for every setting, the shared clock).
      log_dir: one log file per component; a restarted one appends to it.
      say: progress lines.
    """

    def __init__(
        self, settings: Settings, env: dict[str, str], log_dir: Path, say: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.group = ProcessGroup(env=env, log_dir=log_dir)
        self.say = say
        self.current: dict[str, Child] = {}
        #: Exits nobody asked for, oldest first.
        self.exits: list[Exit] = []
        self._lock = threading.RLock()
        #: Components the fault loop is killing and restarting: not the supervisor's to touch.
        self._held: set[str] = set()
        #: Components that exited by themselves, waiting for the supervisor's restart.
        self._restarting: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    # ---- life cycle ------------------------------------------------------------------------
    def start_all(self) -> None:
        with self._lock:
            for name in COMPONENTS:
                self._start(name)
        self._thread.start()

    def stop(self) -> None:
        """Stop supervising, then every component (SIGTERM, then SIGKILL on its group)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            self.group.stop_all()
            self.current.clear()

    def _start(self, name: str) -> Child:
        child = self.group.start(name, name)
        self.current[name] = child
        return child

    def _forget(self, child: Child) -> None:
        with contextlib.suppress(ValueError):
            self.group.children.remove(child)

    # ---- faults ----------------------------------------------------------------------------
    def kill(self, name: str, *, timeout: float = 15.0) -> None:
        """SIGKILL ``name``'s whole process group and wait until no process of it is left."""
        with self._lock:
            self._held.add(name)
            # Not running when it exited by itself and awaits the supervisor: nothing to kill.
            self._restarting.discard(name)
            child = self.current.pop(name, None)
            if child is None:
                return
            child.kill()
            self._forget(child)
        deadline = time.monotonic() + timeout
        while group_pids(child.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: processes of group {child.pid} outlived SIGKILL")
            time.sleep(0.05)

    def restart(self, name: str) -> None:
        with self._lock:
            self._start(name)
            self._held.discard(name)

    # ---- readiness -------------------------------------------------------------------------
    def port(self, name: str) -> int:
        return int(getattr(self.settings, _READY_PORT[name]))

    def ready(self, name: str) -> bool:
        """The component runs and its /readyz answers 200 (its brokers and database answer;
        for the stream: partitions assigned and tables recovered)."""
        with self._lock:
            child = self.current.get(name)
        if child is None or not child.alive() or not _ready(self.port(name)):
            return False
        return name != "api" or port_open("127.0.0.1", self.settings.api_port)

    def wait_ready(self, names: Iterable[str], timeout: float) -> float | None:
        """Seconds until every one of ``names`` is ready, or None when ``timeout`` ran out."""
        names = list(names)
        started = time.monotonic()
        waiting = set(names)
        while waiting:
            waiting = {n for n in waiting if not self.ready(n)}
            if not waiting:
                break
            if time.monotonic() - started > timeout:
                return None
            time.sleep(_POLL_S)
        return time.monotonic() - started

    def not_ready(self) -> list[str]:
        return [n for n in COMPONENTS if not self.ready(n)]

    # ---- supervision -----------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.wait(_POLL_S):
            with self._lock:
                for name, child in list(self.current.items()):
                    if name in self._held or name in self._restarting or child.alive():
                        continue
                    self.exits.append(
                        Exit(name, time.monotonic(), child.popen.returncode, child.log_tail(8))
                    )
                    self.say(
                        f"{name} exited by itself (status {child.popen.returncode}); "
                        f"restarting it in {RESTART_AFTER_S:g} s"
                    )
                    # The leader is gone; whatever it forked goes too (the supervisor's job).
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.pid, signal.SIGKILL)
                    self._forget(child)
                    del self.current[name]
                    self._restarting.add(name)
            for name in sorted(self._restarting):
                if self._stop.wait(RESTART_AFTER_S):
                    return
                with self._lock:
                    self._restarting.discard(name)
                    if name not in self.current and name not in self._held:
                        self._start(name)


# ---- services ------------------------------------------------------------------------------
def restart_tansu_empty(tansu: TansuProcess, timeout: float = 30.0) -> TansuProcess:
    """SIGKILL ``tansu`` and start an empty one on the same port (memory storage: every topic,
    offset and changelog is gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(tansu.pid, signal.SIGKILL)
    stop_pid(tansu.pid)  # reaps it
    deadline = time.monotonic() + timeout
    while True:
        try:
            return start_tansu(tansu.port, tansu.log_path)
        except ServiceError:
            # The port may take a moment to be free for the new listener.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def restart_rabbitmq(amqp_url: str, timeout: float = 120.0) -> None:
    """Stop the machine's RabbitMQ node (``rabbitmqctl stop``) and start it again."""
    parts = urlsplit(amqp_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise ServiceError("rabbitmqctl not found: cannot restart RabbitMQ")
    subprocess.run([ctl, "stop"], capture_output=True, timeout=timeout, check=True)
    deadline = time.monotonic() + timeout
    while port_open(host, port):
        if time.monotonic() > deadline:
            raise ServiceError(f"RabbitMQ still listens on {host}:{port} after rabbitmqctl stop")
        time.sleep(0.2)
    # `rabbitmq-server -detached`, then waits until a login works.
    check_rabbitmq(amqp_url, start=True)


def _pg_cluster(port: int) -> tuple[str, str]:
    """(version, name) of the local Debian-style cluster configured for ``port``."""
    for conf in sorted(Path("/etc/postgresql").glob("*/*/postgresql.conf")):
        configured = 5432
        for line in conf.read_text(errors="replace").splitlines():
            key, _, value = line.split("#", 1)[0].partition("=")
            if key.strip() == "port" and value.strip().isdigit():
                configured = int(value.strip())
        if configured == port:
            return conf.parent.parent.name, conf.parent.name
    raise ServiceError(f"no local PostgreSQL cluster configured for port {port}")


def restart_postgres(database_url: str, timeout: float = 120.0) -> None:
    """``pg_ctlcluster --skip-systemctl-redirect VERSION NAME restart``, then wait for logins."""
    port = urlsplit(database_url.replace("+psycopg", "")).port or 5432
    version, name = _pg_cluster(port)
    ctl = shutil.which("pg_ctlcluster")
    if ctl is None:
        raise ServiceError("pg_ctlcluster not found: cannot restart PostgreSQL")
    subprocess.run(
        [ctl, "--skip-systemctl-redirect", version, name, "restart"],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_postgres(database_url, start=False)
            return
        except ServiceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
