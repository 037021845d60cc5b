"""A department head reached by e-mail: the daily call-list digest through a real SMTP exchange.

The worker and the scheduler run as processes on the real RabbitMQ and PostgreSQL, with a staff
directory where the 市场监督管理局 head's webhook is a ``mailto:`` entry and
``GOVNOTIFY_SMTP_URL`` pointing at the loopback fake mail server (with AUTH). The other heads
keep their sandbox robots. The last tests choose the notifier in-process (no services).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings, load_settings
from notifiers.staff.email import EmailNotifier
from tests.fakes.smtp_server import FakeSmtp
from tests.fakes.webhook_server import BUNDLED_DIRECTORY
from tests.support import Pipeline, metric, scrape, wait_until
from tests.support.call_list import add_entry, notified
from workers.context import WorkerContext, using
from workers.staff import notify_staff

CST = dt.timezone(dt.timedelta(hours=8))
#: A Thursday, after the 09:00 digest time: today's digest is due at once.
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
TODAY = NOW.date()
DEPARTMENT = "市场监督管理局"
HEAD_ADDRESS = "market-head@changan.gov.cn"
SENDER = "长安区政务服务中心 <govnotify@changan.gov.cn>"
USER = "govnotify-mailer"
PASSWORD = "pw-smtp-e2e-7a6b5c4d3e2f"


def email_directory(path: Path) -> Path:
    """The bundled directory with the 市场监督管理局 head on a ``mailto:`` entry."""
    directory = json.loads(BUNDLED_DIRECTORY.read_text(encoding="utf-8"))
    directory["webhooks"]["market-head-mail"] = {"url": f"mailto:{HEAD_ADDRESS}", "format": "email"}
    (department,) = [d for d in directory["departments"] if d["name"] == DEPARTMENT]
    department["head"]["webhook"] = "market-head-mail"
    path.write_text(json.dumps(directory, ensure_ascii=False), encoding="utf-8")
    return path


def sandbox_records(settings: Settings) -> list[dict[str, Any]]:
    path = settings.data_dir / "sandbox-webhooks.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def worker_metric(settings: Settings, name: str, **labels: str) -> float:
    return metric(scrape(settings.worker_metrics_port), name, **labels)


@pytest.fixture
def mail() -> Iterator[FakeSmtp]:
    with FakeSmtp(credentials=(USER, PASSWORD)) as fake:
        yield fake


def start(pipeline: Pipeline, mail: FakeSmtp, tmp_path: Path) -> None:
    pipeline.set_env(
        GOVNOTIFY_STAFF_DIRECTORY=str(email_directory(tmp_path / "staff.json")),
        GOVNOTIFY_NOW=NOW.isoformat(),
        GOVNOTIFY_SMTP_URL=mail.url(user=USER, password=PASSWORD),
        GOVNOTIFY_SMTP_FROM=SENDER,
    )
    pipeline.worker()
    pipeline.scheduler()


def assert_no_secret_in_logs(pipeline: Pipeline) -> None:
    for path in sorted(pipeline.log_dir.glob("*.log")):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert PASSWORD not in text, path.name
        assert HEAD_ADDRESS not in text, path.name


@pytest.mark.integration
def test_the_call_list_digest_reaches_an_email_head_masked(
    settings: Settings, pipeline: Pipeline, mail: FakeSmtp, tmp_path: Path
) -> None:
    # Given due entries of an e-mail department and of a robot (sandbox) department
    add_entry(settings, "LIC-MKT-1", department=DEPARTMENT, mobile="13800138001")
    add_entry(settings, "LIC-HEALTH-1", department="卫生健康局", mobile="13800138003")

    # When the worker and the scheduler run on a working day after 09:00
    start(pipeline, mail, tmp_path)

    # Then the head got one e-mail, authenticated, with the entry and the number masked
    (got,) = mail.wait_for(1, timeout=60)
    wait_until(
        lambda: notified(settings) == {"LIC-MKT-1": True, "LIC-HEALTH-1": True},
        30,
        message=lambda: f"{notified(settings)}",
    )
    assert got.rcpt_tos == (HEAD_ADDRESS,)
    assert got.mail_from == "govnotify@changan.gov.cn"
    assert str(got.message["From"]) == SENDER
    assert got.login == USER
    assert got.subject == "续证提醒电话清单"
    assert "LIC-MKT-1" in got.text and "138****8001" in got.text
    assert "13800138001" not in got.text and "13800138001" not in got.subject
    assert "王伟" not in got.text
    assert "LIC-HEALTH" not in got.text
    message_id = got.header("X-Govnotify-Id") or ""
    assert message_id.startswith(f"call-list-{TODAY.isoformat()}-")
    assert got.header("Message-ID") == f"<{message_id}@govnotify>"
    assert f"department: {DEPARTMENT}" in got.text
    # and the robot department still went to its (sandbox) robot, not by e-mail
    records = sandbox_records(settings)
    assert [r["webhook"] for r in records] == ["department-robot"]
    assert "LIC-HEALTH-1" in records[0]["text"] and "LIC-MKT" not in records[0]["text"]
    # e-mail is its own channel and provider in the metrics
    labels = {"flow": "call_list", "status": "sent"}
    assert (
        worker_metric(
            settings, "govnotify_notifications_total", channel="email", provider="email", **labels
        )
        == 1
    )
    assert (
        worker_metric(
            settings,
            "govnotify_notifications_total",
            channel="webhook",
            provider="webhook",
            **labels,
        )
        == 1
    )
    assert (
        worker_metric(
            settings,
            "govnotify_provider_request_duration_seconds_count",
            provider="email",
            outcome="ok",
        )
        == 1
    )
    assert_no_secret_in_logs(pipeline)


@pytest.mark.integration
def test_a_mail_server_refusal_is_retried_with_the_same_message_id(
    settings: Settings, pipeline: Pipeline, mail: FakeSmtp, tmp_path: Path
) -> None:
    # Given a due entry, and a mail server that greylists the first attempt
    add_entry(settings, "LIC-MKT-1", department=DEPARTMENT, mobile="13800138001")
    mail.fail_next(1, 451, at="rcpt")

    # When the digest runs
    start(pipeline, mail, tmp_path)

    # Then the retry delivered it once, and the entry is marked sent
    (got,) = mail.wait_for(1, timeout=60)
    wait_until(lambda: notified(settings) == {"LIC-MKT-1": True}, 30)
    assert [(r.stage, r.code) for r in mail.refusals] == [("rcpt", 451)]
    assert "LIC-MKT-1" in got.text
    labels = {"flow": "call_list", "channel": "email", "provider": "email"}
    assert worker_metric(settings, "govnotify_notifications_total", status="failed", **labels) == 1
    assert worker_metric(settings, "govnotify_notifications_total", status="sent", **labels) == 1
    assert_no_secret_in_logs(pipeline)


# ---- choosing the notifier (in-process, no services) -----------------------------------------
def email_context(tmp_path: Path, **settings: Any) -> WorkerContext:
    """A worker context on the e-mail directory with ``settings``."""
    return WorkerContext(
        load_settings(
            data_dir=tmp_path / "data",
            staff_directory=email_directory(tmp_path / "staff.json"),
            **settings,
        )
    )


def test_email_hooks_use_smtp_when_it_is_configured(tmp_path: Path) -> None:
    # Given
    context = email_context(
        tmp_path, smtp_url=f"smtps://{USER}:{PASSWORD}@mail.changan.gov.cn", smtp_from=SENDER
    )

    # When
    notifier = context.staff_notifier("market-head-mail")

    # Then
    assert isinstance(notifier, EmailNotifier)
    assert notifier.to.addr_spec == HEAD_ADDRESS
    assert notifier.sender.addr_spec == "govnotify@changan.gov.cn"
    assert (notifier.endpoint, notifier.security) == ("smtps://mail.changan.gov.cn:465", "smtps")
    # robots are untouched
    assert type(context.staff_notifier("department-robot")).__name__ == "SandboxWebhook"


def test_email_hooks_go_to_the_sandbox_without_smtp_and_say_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given no GOVNOTIFY_SMTP_URL (the zero-setup default)
    context = email_context(tmp_path, smtp_url="")
    settings = context.settings
    caplog.set_level(logging.WARNING, logger="govnotify.staff")
    from notifiers.staff import StaffMessage

    message = StaffMessage(
        message_id="call-list-x-1",
        kind="call_list",
        title="续证提醒电话清单",
        text="1. LIC-1",
        data={},
    )
    head = context.directory.department_head(DEPARTMENT)

    # When two messages are sent to the e-mail head
    with using(context):
        notify_staff([head], message, flow="call_list")
        notify_staff([head], message, flow="call_list")

    # Then both are in the sandbox file, and the warning was given once
    records = sandbox_records(settings)
    assert [(r["webhook"], r["id"]) for r in records] == [("market-head-mail", "call-list-x-1")] * 2
    warnings = [r for r in caplog.records if "GOVNOTIFY_SMTP_URL is empty" in r.getMessage()]
    assert len(warnings) == 1
    assert HEAD_ADDRESS not in caplog.text
