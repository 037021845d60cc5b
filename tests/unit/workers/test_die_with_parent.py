"""A dramatiq child whose parent died before it could ask to die with it exits by itself.

The kernel only signals a parent's death that happens after ``prctl(PR_SET_PDEATHSIG)``: a
child that boots slowly (imports, the start check) after its parent was killed must see it.
Real processes: a parent forks a child with multiprocessing (as dramatiq does), then exits;
the child, an orphan by then, calls :func:`workers.observability.die_with_parent`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infra.processes import wait_until

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    from workers.observability import ParentGone, die_with_parent

    def child(out, parent):
        while os.getppid() == parent:  # until the parent below has exited
            time.sleep(0.01)
        try:
            die_with_parent()
        except ParentGone as exc:
            open(out, "w").write(f"exited: {exc.code}")
        else:
            open(out, "w").write("stayed")

    if __name__ == "__main__":
        multiprocessing.set_start_method("fork")
        multiprocessing.Process(target=child, args=(sys.argv[1], os.getpid())).start()
        os._exit(0)  # as a SIGKILL would: no multiprocessing clean-up, no join
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="dramatiq forks its children on Linux")
def test_a_child_whose_parent_died_before_it_booted_exits(tmp_path: Path) -> None:
    # Given a parent that forks a child and dies before the child asks to die with it
    out = tmp_path / "child.txt"
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)

    # When the parent has gone and the child boots
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=30)
    wait_until(out.exists, 30, message="the orphaned child never reported")

    # Then the child refuses to go on, naming the parent it lost
    assert out.read_text().startswith("exited: govnotify: the worker's main process ")
