"""Jobs sent by name reach the queue their actor consumes (schemas.commands.JOB_QUEUES)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from schemas.commands import JOB_QUEUES

#: Prints each declared actor with its queue, in a fresh interpreter: importing the workers
#: sets the process's dramatiq broker, which this test process must not get.
_LIST_ACTORS = """
import workers.actors
from workers.broker import broker, settings
prefix = settings.namespace + "."
for name in broker.get_declared_actors():
    print(name, broker.get_actor(name).queue_name.removeprefix(prefix))
"""


def test_every_actor_is_declared_on_the_queue_its_jobs_are_sent_to(tmp_path: Path) -> None:
    # When the workers declare their actors
    out = subprocess.run(
        [sys.executable, "-c", _LIST_ACTORS],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "GOVNOTIFY_DATA_DIR": str(tmp_path)},
    ).stdout
    declared = dict(line.split() for line in out.splitlines())

    # Then every actor has its queue in the registry, and the registry names no other actor
    assert declared == JOB_QUEUES
