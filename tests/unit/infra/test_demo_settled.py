"""``govnotify demo`` waits until the worker's jobs are settled, retries included.

It used to call the pipeline settled once the worker had processed as many jobs as the stream
handed over; a failed job counts as processed, so a job waiting for its retry (taken from the
``.DQ``, held until its time) or still running was taken for done.
"""

from __future__ import annotations

import pytest

from infra.cli.demo import jobs_settled

STREAM = {'govnotify_jobs_enqueued_total{actor="record_licenses"}': 40.0}


def _worker(processed: float, running: float = 0.0, delayed: float = 0.0) -> dict[str, float]:
    return {
        'dramatiq_messages_total{actor_name="record_licenses",queue_name="d.registry"}': processed,
        'dramatiq_messages_inprogress{actor_name="record_licenses",queue_name="d.registry"}': (
            running
        ),
        'dramatiq_delayed_messages_inprogress{actor_name="retry_delivery"}': delayed,
        'dramatiq_message_errors_total{actor_name="record_licenses"}': 1.0,
    }


@pytest.mark.parametrize(
    ("worker", "settled"),
    [
        (_worker(40), True),
        (_worker(41), True),  # the scheduler's jobs too
        (_worker(39), False),  # one not processed yet
        (_worker(40, running=1), False),  # one running (a retry of a failed one)
        (_worker(40, delayed=1), False),  # one waiting for its retry's time
        ({}, False),  # the worker's /metrics empty: nothing known
    ],
)
def test_jobs_are_settled_only_when_none_is_left_running_or_waiting_to_retry(
    worker: dict[str, float], settled: bool
) -> None:
    assert jobs_settled(STREAM, worker) is settled
