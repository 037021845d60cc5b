"""``govnotify worker``'s environment: a metrics folder per worker, named by its pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.cli.components import worker_env
from infra.settings import load_settings


@pytest.mark.parametrize(
    ("others", "kept"),
    [
        # nothing else there
        ((), set()),
        # a worker that stopped: its folder goes
        (("dead",), set()),
        # a worker still running on this host: its files stay untouched
        (("alive",), {"alive"}),
        (("dead", "alive", "not-a-pid"), {"alive"}),
    ],
)
def test_each_worker_gets_a_cleared_folder_and_leaves_running_ones_alone(
    tmp_path: Path, others: tuple[str, ...], kept: set[str]
) -> None:
    # Given a data folder holding metrics folders of other workers, and a stale one of ours
    settings = load_settings(namespace="t-env", data_dir=tmp_path, worker_metrics_port=0)
    root = tmp_path / "prometheus" / "t-env"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {
        "dead": f"worker-{gone.stdout.strip()}",
        "alive": f"worker-{os.getppid()}",
        "not-a-pid": "worker-x",
    }
    for other in others:
        (root / names[other]).mkdir(parents=True)
        (root / names[other] / "counter_1.db").write_bytes(b"x")
    mine = root / "worker-4242424"
    mine.mkdir(parents=True, exist_ok=True)
    (mine / "counter_9.db").write_bytes(b"stale")

    # When the worker with pid 4242424 builds its environment
    env = worker_env(settings, {}, pid=4242424)

    # Then its folder is its own and empty, and only running workers' folders are left
    assert env["PROMETHEUS_MULTIPROC_DIR"] == env["dramatiq_prom_db"] == str(mine.resolve())
    assert list(mine.iterdir()) == []
    assert {p.name for p in root.iterdir()} == {"worker-4242424", *(names[k] for k in kept)}
