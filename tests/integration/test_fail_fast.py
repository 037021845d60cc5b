"""Fail fast: a process started with a provider configuration it could not send with exits at
start, naming the variable, and a worker claims nothing.

The issue: a worker started with a malformed Twilio account SID ran, claimed every message and
failed each send with a configuration error, leaving the rows in ``sending`` until the sweep.
Here the worker runs as a real process against the real RabbitMQ and PostgreSQL of the test,
with a delivery job already waiting in its queue.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra.db import session
from infra.processes import Child
from infra.services import free_port
from infra.settings import Settings
from notifiers.sms.text import count_segments
from schemas.models import Notification, NotificationStatus
from tests.fakes.twilio_server import FakeTwilio
from tests.support import clean_env, enqueue, env_for, queue_depth, run_cli, wait_until

pytestmark = pytest.mark.integration

#: 34 characters starting with "AC", so the notifier's old length check let it through, but
#: not hex: Twilio answers every send with an authentication error.
MALFORMED_SID = "AC" + "z" * 32
BODY = "【长安政务】您的办件已办结，请到窗口领取。退订请致电12345"
#: How long a refused worker may take to exit: interpreter, imports, dramatiq's boot.
EXIT_DEADLINE_S = 30


def waiting_delivery(settings: Settings) -> str:
    """A ``created`` notification whose delivery job waits in the delivery queue; its id."""
    notification_id = uuid.uuid4().hex
    with session(settings) as s:
        s.add(
            Notification(
                id=notification_id,
                idempotency_key=f"test:fail-fast:{notification_id}",
                flow="survey",
                channel="sms",
                subject_id=f"T-{notification_id[:8]}",
                recipient="+8613800138000",
                body=BODY,
                segments=count_segments(BODY),
                status=NotificationStatus.CREATED,
                category="",
            )
        )
        s.commit()
    enqueue(settings, "delivery", "deliver_notification", notification_id)
    return notification_id


def start(argv: list[str], env: dict[str, str], log_path: Path) -> Child:
    """Run ``argv`` as a session leader (so a stop reaches dramatiq's children), output logged."""
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Child(log_path.stem, popen, log_path)


#: The two ways a worker is started: the CLI (which reads the settings before it execs
#: dramatiq), and dramatiq on the entry module directly (where workers.actors must refuse).
COMMANDS = {
    "govnotify worker": [sys.executable, "-m", "infra.cli", "worker", "--threads", "1"],
    "dramatiq workers.actors": [
        sys.executable,
        *("-m", "dramatiq", "workers.actors", "--processes", "1", "--threads", "1"),
    ],
}


@pytest.mark.parametrize(
    ("command", "problem", "named"),
    [
        ("govnotify worker", "malformed sid", "GOVNOTIFY_TWILIO_ACCOUNT_SID"),
        ("dramatiq workers.actors", "malformed sid", "GOVNOTIFY_TWILIO_ACCOUNT_SID"),
        # Settings cannot see this one: the sandbox outbox folder cannot be created, which
        # only building the notifiers at worker boot finds.
        ("dramatiq workers.actors", "data folder is a file", "GOVNOTIFY_DATA_DIR"),
    ],
)
def test_a_worker_that_cannot_send_exits_at_start_and_claims_nothing(
    settings: Settings,
    fake_twilio: FakeTwilio,
    tmp_path: Path,
    command: str,
    problem: str,
    named: str,
) -> None:
    # Given a delivery waiting in the queue, and a worker configured in a way it cannot send
    notification_id = waiting_delivery(settings)
    twilio = {
        "GOVNOTIFY_TWILIO_ACCOUNT_SID": MALFORMED_SID,
        "GOVNOTIFY_TWILIO_AUTH_TOKEN": fake_twilio.auth_token,
        "GOVNOTIFY_TWILIO_FROM": "+15017122661",
        "GOVNOTIFY_TWILIO_API_BASE": fake_twilio.base_url,
    }
    if problem == "malformed sid":
        extra = twilio
    else:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the data folder should be\n")
        extra = {"GOVNOTIFY_DATA_DIR": str(blocker)}
    prometheus = tmp_path / "prometheus"
    prometheus.mkdir()
    env = env_for(
        settings,
        GOVNOTIFY_QUIET_HOURS="off",
        # What `govnotify worker` sets for dramatiq; set here for dramatiq started directly.
        PROMETHEUS_MULTIPROC_DIR=str(prometheus),
        dramatiq_prom_db=str(prometheus),
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(free_port()),
        **extra,
    )

    # When the worker is started
    started = time.monotonic()
    worker = start(COMMANDS[command], env, tmp_path / "worker.log")
    try:
        wait_until(
            lambda: not worker.alive(),
            EXIT_DEADLINE_S,
            message=lambda: f"the worker kept running:\n{worker.log_tail()}",
        )
    finally:
        worker.stop()
    took = time.monotonic() - started

    # Then it exited non-zero at once, saying which variable to fix, without a traceback
    output = worker.log_path.read_text(errors="replace")
    assert worker.popen.returncode == 2, output
    assert took < EXIT_DEADLINE_S
    assert named in output
    assert "Traceback" not in output
    assert fake_twilio.auth_token not in output
    # … and nothing was claimed or sent: the row is still `created`, its job still queued
    with session(settings) as s:
        row = s.get(Notification, notification_id)
        assert row is not None
        assert (row.status, row.attempts) == (NotificationStatus.CREATED, 0)
    assert queue_depth(settings, settings.queue("delivery")) == 1
    assert fake_twilio.attempts == 0
    assert not (settings.data_dir / "sandbox-outbox.jsonl").exists()


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        ("api", {"GOVNOTIFY_TWILIO_ACCOUNT_SID": MALFORMED_SID}, "GOVNOTIFY_TWILIO_ACCOUNT_SID"),
        ("scheduler", {"GOVNOTIFY_TWILIO_ACCOUNT_SID": "AC123"}, "GOVNOTIFY_TWILIO_ACCOUNT_SID"),
        ("api", {"GOVNOTIFY_TWILIO_AUTH_TOKEN": "not-the-token"}, "GOVNOTIFY_TWILIO_AUTH_TOKEN"),
        ("scheduler", {"GOVNOTIFY_TWILIO_FROM": "Govnotify"}, "GOVNOTIFY_TWILIO_FROM"),
        ("sweep", {"GOVNOTIFY_SMS_ROUTES": '{"default": ["gateway"]}'}, "GOVNOTIFY_SMS_ROUTES"),
    ],
)
def test_every_process_refuses_a_malformed_provider_configuration(
    tmp_path: Path, command: str, env: dict[str, str], named: str
) -> None:
    # Given Twilio configured, with one variable malformed
    variables = {
        "GOVNOTIFY_DATA_DIR": str(tmp_path / "data"),
        "GOVNOTIFY_TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
        "GOVNOTIFY_TWILIO_AUTH_TOKEN": "f00dfeed" * 4,
        "GOVNOTIFY_TWILIO_FROM": "+15017122661",
        **env,
    }

    # When the command starts
    result = run_cli(command, env=clean_env(**variables), timeout=EXIT_DEADLINE_S)

    # Then it exits at once with one line naming the variable, and never echoes a token
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"invalid setting {named}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "not-the-token" not in result.stderr
    assert "f00dfeed" * 4 not in result.stderr
    assert not (tmp_path / "data").exists()
