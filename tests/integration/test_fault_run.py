"""The fault run of ``make chaos``, small: a few thousand licenses through the whole pipeline
while each component is killed once with SIGKILL and Kafka (the run's own Tansu) comes back empty
once; every due license must get exactly one SMS.

The run (``benchmarks.chaos_run``) starts its own Tansu, since it restarts it, its own fake
Twilio answering 2% of the messages after the client's timeout, and relay, stream, worker,
scheduler and api as processes; RabbitMQ and the database are the session's. The machine's
RabbitMQ and PostgreSQL are not restarted here: other tests share them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import report
from benchmarks.chaos_fleet import COMPONENTS
from benchmarks.chaos_run import ChaosPlan, run_chaos
from tests.support import unmasked_mobiles

pytestmark = pytest.mark.integration

PLAN = ChaosPlan(
    licenses=3000,
    seed=2026,
    kills=len(COMPONENTS),
    tansu_restarts=1,
    rabbitmq_restart=False,
    postgres_restart=False,
    # Each fault strikes while the wave before it is still on its way (the stream takes a
    # wave of ~430 events in about a second).
    gap_s=(0.0, 0.5),
    pause_s=(0.0, 1.0),
    ready_timeout_s=90.0,
    drain_timeout_s=60.0,
    settle_deadline_s=240.0,
    # Long enough for the slowest honest step: a late Twilio answer resolved by the sweep
    # (sending after 15 s, swept every 5 s).
    stall_s=60.0,
)


def test_every_due_license_gets_exactly_one_sms_through_kills_and_an_empty_kafka(
    amqp_url: str, database_url: str, namespace: str, tmp_path: Path
) -> None:
    # Given: a registry of 3,000 licenses, ~7% of them with their SMS reminder due, published in
    # waves; before each fault one wave
    lines: list[str] = []

    # When: relay, stream, worker (its process group), scheduler and api are killed once each
    # and Tansu restarts empty once, in seeded order, each while a wave is in flight
    result = run_chaos(
        PLAN,
        amqp_url=amqp_url,
        database_url=database_url,
        namespace=namespace,
        workdir=tmp_path,
        say=lines.append,
    )
    shown = "\n".join(lines) + "\n\n" + report(result)

    # Then: every fault happened and the pipeline came back from each
    assert sorted(f.kind for f in result.faults) == sorted([*COMPONENTS, "tansu"]), shown
    assert all(f.recovery_s is not None for f in result.faults), shown
    # and every due license got exactly one SMS, none went to a license not due
    assert len(result.expected) > 150, shown
    assert result.missing == [], shown
    assert result.duplicated == {}, shown
    assert result.unexpected == [], shown
    # and nothing is left half-done
    assert result.settled, shown
    assert not set(result.statuses) & {"created", "sending"}, shown
    # and no log of any component holds a full mobile number, crashes included
    leaks = unmasked_mobiles(result.log_dir)
    assert not leaks, "full mobile numbers in logs:\n" + "\n".join(leaks[:10])
