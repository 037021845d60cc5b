"""Run the workers' actors in this test process on dramatiq's ``StubBroker``.

The actors are declared, as in production, on the broker ``workers.broker`` builds at import.
:func:`actors_on_stub_broker` binds every one of them to a fresh ``StubBroker`` served by a
dramatiq ``Worker`` in this process, and installs a worker context of the test's own settings
(database, staff directory, providers): what the actors read is passed in, nothing is patched.
On leaving, the worker stops and the actors go back to the broker they were declared on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

# Each flow module declares its actors as it is imported.
from workers import (  # noqa: F401
    call_list,
    callbacks,
    delivery,
    green_channel,
    rectification,
    reminders,
    surveys,
)
from workers.broker import broker as declared_on
from workers.context import WorkerContext, using
from workers.middleware import DeadLetters

__all__ = ["actors_on_stub_broker"]


@contextlib.contextmanager
def actors_on_stub_broker(context: WorkerContext) -> Iterator[StubBroker]:
    """Every actor bound to a new ``StubBroker`` with a worker serving it, in ``context``.

    Send with ``actor.send(...)``; ``broker.join(actor.queue_name, fail_fast=True)`` waits until
    the queue is drained and re-raises what an actor raised for good.
    """
    stub = StubBroker()
    # As workers.broker adds it: a job out of retries becomes a dead letter.
    stub.add_middleware(DeadLetters(context.settings), before=Retries)
    actors = [declared_on.get_actor(name) for name in declared_on.get_declared_actors()]
    for actor in actors:
        actor.broker = stub
        stub.declare_actor(actor)
    worker = dramatiq.Worker(stub, worker_timeout=50, worker_threads=2)
    try:
        with using(context):
            worker.start()
            try:
                yield stub
            finally:
                worker.stop()
    finally:
        for actor in actors:
            actor.broker = declared_on
        stub.close()
