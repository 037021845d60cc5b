"""The heap a long-running component builds as it starts, kept out of the collector's way.

CPython's cyclic garbage collector walks every tracked object of a generation each time it
collects it, and the oldest generation holds everything a component imported and built as it
started: SQLAlchemy's and pydantic's models, Faust, pika, dramatiq, the settings (~130,000
objects in the relay). None of it ever becomes garbage, yet each full collection walked all of
it: a profile of the relay moving 20,000 events spent 18% of its time in the collector, three
quarters of that in three full collections of ~70 ms each (``docs/perf``, session 10).
:func:`freeze_startup_heap` moves what is alive once the component is up into the permanent
generation (:func:`gc.freeze`), which the collector no longer walks; what is created afterwards
is collected as before. Garbage present at that moment is collected first, so nothing frozen is
a cycle that could have been freed.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["freeze_startup_heap"]

log = logging.getLogger("govnotify.heap")


def freeze_startup_heap() -> int:
    """Collect, then freeze every object alive now; returns how many are frozen in all.

    Call it once a long-running component has started (imports done, connections made), right
    before its loop. Calling it again freezes what has been added since.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d objects alive at start kept out of the garbage collector's walks", frozen)
    return frozen
