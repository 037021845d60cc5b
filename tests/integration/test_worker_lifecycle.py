"""A worker's processes live and die together, and two workers share a host without colliding.

The issue: with dramatiq's main process killed by SIGKILL, its worker processes lived on as
orphans and kept consuming, with the old code and settings, for two hours. And two
``govnotify worker`` on one host shared a metrics folder (each clearing the other's files) and
silently fought over one metrics port.

Each worker here runs as ``govnotify worker`` (a real process, the way production starts it) on
the test's RabbitMQ; its children are found in ``/proc``.
"""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from infra.services import free_port
from infra.settings import Settings
from tests.support import Pipeline, env_for, run_cli, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc"),
]

#: How long the orphaned children may take to stop: SIGTERM, then dramatiq's graceful stop
#: (consumers closed, threads joined) on an idle queue.
ORPHANS_GONE_S = 30

#: A process as (pid, start time in clock ticks): a pid alone could be reused meanwhile.
Proc = tuple[int, int]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may hold spaces: the fields start after the last ")".
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def children_of(parent: int) -> set[Proc]:
    """Every living process whose parent is ``parent``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[1] == parent and stat[0] != "Z":
            found.add((int(entry.name), stat[2]))
    return found


def running(proc: Proc) -> bool:
    """The process still exists (a zombie waiting for init to reap it has exited)."""
    stat = _stat(proc[0])
    return stat is not None and stat[2] == proc[1] and stat[0] != "Z"


def kill_all(procs: set[Proc]) -> None:
    for proc in procs:
        if running(proc):
            os.kill(proc[0], signal.SIGKILL)


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_the_worker_processes_exit_when_the_main_process_is_killed(pipeline: Pipeline) -> None:
    # Given a worker with two worker processes and its metrics server (three children), ready
    worker = pipeline.worker("--processes", "2")
    wait_until(
        lambda: len(children_of(worker.pid)) == 3,
        30,
        message=lambda: f"children: {children_of(worker.pid)}\n{worker.log_tail()}",
    )
    children = children_of(worker.pid)
    try:
        # When dramatiq's main process alone is killed with SIGKILL (it can stop nobody)
        os.kill(worker.pid, signal.SIGKILL)
        worker.popen.wait(10)

        # Then every child exits by itself within the deadline
        wait_until(
            lambda: not any(running(c) for c in children),
            ORPHANS_GONE_S,
            message=lambda: (
                f"still running: {[c for c in children if running(c)]}\n{worker.log_tail()}"
            ),
        )
    finally:
        kill_all(children)
    # … and the metrics port is free again (the server went with them)
    assert not answers(pipeline.settings.worker_metrics_port)


def test_a_second_worker_on_the_host_needs_its_own_metrics_port(
    pipeline: Pipeline, settings: Settings
) -> None:
    # Given one worker running
    first = pipeline.worker()

    # When a second one starts with the same settings
    same_port = run_cli("worker", "--threads", "1", env=env_for(settings), timeout=60)

    # Then it refuses at once, naming the setting, and the first one still serves
    assert same_port.returncode == 2, same_port.stdout + same_port.stderr
    assert "GOVNOTIFY_WORKER_METRICS_PORT" in same_port.stderr
    assert "Traceback" not in same_port.stderr
    assert first.alive() and answers(settings.worker_metrics_port)

    # When it is given a port of its own
    port = free_port()
    pipeline.set_env(GOVNOTIFY_WORKER_METRICS_PORT=str(port))
    second = pipeline.start("worker-2", "worker", "--threads", "1")
    wait_until(lambda: answers(port) or not second.alive(), 60, message=second.log_tail)

    # Then both serve, each from a metrics folder of its own named by its pid
    assert second.alive(), second.log_tail()
    assert answers(settings.worker_metrics_port)
    folders = settings.data_dir.resolve() / "prometheus" / settings.namespace
    assert {p.name for p in folders.iterdir()} == {f"worker-{first.pid}", f"worker-{second.pid}"}


def test_a_taken_metrics_port_is_refused_before_dramatiq_starts(settings: Settings) -> None:
    # Given something else listening on the worker's metrics port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        # When a worker is started on it
        result = run_cli(
            "worker", env=env_for(settings, GOVNOTIFY_WORKER_METRICS_PORT=str(port)), timeout=60
        )

    # Then it exits with the configuration status and one line naming the setting and port
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"invalid setting GOVNOTIFY_WORKER_METRICS_PORT: 127.0.0.1:{port} is taken" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
