"""The startup heap is frozen out of the collector's walks; garbage is collected first."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from infra.heap import freeze_startup_heap
from workers.middleware import FrozenStartupHeap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    # The test process goes on collecting as before once a test is done.
    yield
    gc.unfreeze()


def _walked(obj: object) -> bool:
    """Whether the collector's generations (not the permanent one) hold ``obj``."""
    return any(o is obj for o in gc.get_objects())


def test_what_is_alive_at_start_is_frozen_and_what_comes_later_is_not() -> None:
    # Given an object alive as the component starts
    started = [_Node()]
    assert _walked(started)

    # When the heap is frozen, and another object is made afterwards
    frozen = freeze_startup_heap()
    later = [_Node()]

    # Then the first is out of the collector's walks, the later one in them
    assert frozen == gc.get_freeze_count() > 0
    assert not _walked(started)
    assert _walked(later)


def test_garbage_present_at_start_is_collected_not_frozen() -> None:
    # Given a reference cycle nobody holds any more
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b

    # When the heap is frozen
    freeze_startup_heap()

    # Then the cycle was freed first
    assert gone() is None


def test_a_worker_process_freezes_its_heap_once_booted() -> None:
    # Given a worker process's state before its boot hook
    before = gc.get_freeze_count()
    booted = [_Node()]

    # When dramatiq runs the after_worker_boot hooks
    FrozenStartupHeap().after_worker_boot(None, None)  # type: ignore[arg-type]

    # Then what it held is frozen
    assert gc.get_freeze_count() > before
    assert not _walked(booted)
