"""A real Prometheus, started from the shipped prometheus.yml and rules, scraping a running
pipeline (relay, stream, worker, scheduler, api) and RabbitMQ while known events flow through:
every target up, the key series with the values the events imply, every rule evaluating, and
every panel of the Grafana dashboard answering with data.

The pipeline and Prometheus are started once for the module (about a minute of set-up); the
events go in two waves, the second after Prometheus has scraped the first, so that rates and
quantiles over short windows have something to show.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from infra import services
from infra.db import session
from infra.settings import Settings
from producers.api import TWILIO_STATUS_PATH
from producers.generator import bad_events, license_event
from producers.rabbitmq import Publisher
from schemas.events import Event, make_event
from schemas.models import Notification, RectificationTicket, StaffAlert
from tests.fakes.twilio_server import FakeTwilio
from tests.fakes.webhook_server import FakeWebhook
from tests.support import (
    Pipeline,
    count_rows,
    create_database,
    drop_database,
    pipeline_settings,
    purge_namespace,
    unmasked_mobiles,
    wait_until,
)
from tests.support.prom import GRAFANA_DASHBOARD, Prometheus, config_for, load_yaml

pytestmark = pytest.mark.integration

#: Same server as the `database_url` fixture of conftest (a module-scoped set-up cannot use it).
PG_ADMIN_URL = os.environ.get(
    "GOVNOTIFY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra" / "prometheus" / "rules" / "govnotify.rules.yml"
CST = dt.timezone(dt.timedelta(hours=8))
#: 10:00 local on a Thursday: outside quiet hours.
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
TODAY = NOW.date()
T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
FINAL = {"sent", "delivered", "cancelled", "permanent-failure", "suppressed"}
DEPARTMENT = "市场监督管理局"
#: Dashboard variables as Grafana would expand them for a 10-minute view.
GRAFANA_RANGE = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "10m"}

#: Per wave: three renewal SMS (one to a number Twilio refuses), a green-channel case and its
#: acknowledgement, a completed case (survey after 1 s), a 5-star and an anonymous 1-star review,
#: and one bad event.
GOOD_PER_WAVE = 8
BAD_PER_WAVE = 1
RENEWAL_SENT_PER_WAVE = 2
WAVES = 2


@dataclass
class Live:
    settings: Settings
    pipeline: Pipeline
    prometheus: Prometheus
    twilio: FakeTwilio
    #: Events published so far, good and bad.
    published: int

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.log_tail(15)}" for c in self.pipeline.children)


def _issued(license_id: str, days_left: int, mobile: str) -> Event:
    expires = TODAY + dt.timedelta(days=days_left)
    return license_event(
        "license.issued",
        license_id,
        category="food_business",
        holder_mobile=mobile,
        issued_on=expires - dt.timedelta(days=365 * 5),
        expires_on=expires,
        occurred_at=T0,
    )


def _case(event_type: str, case_id: str, at: dt.datetime, mobile: str, **applicant: Any) -> Event:
    payload: dict[str, Any] = {
        "case_id": case_id,
        "service_item": "食品经营许可证核发",
        "department": DEPARTMENT,
        "service_point": {
            "id": "SC-CHANGAN",
            "name": "长安区政务服务中心",
            "level": "service_centre",
        },
        "applicant": {
            "kind": "citizen",
            "name": "王秀英",
            "mobile": mobile,
            "age": None,
            "special_groups": [],
            **applicant,
        },
        "key_project": False,
        "submitted_at": (at - dt.timedelta(hours=1)).isoformat(),
    }
    if event_type == "case.completed":
        payload["completed_at"] = at.isoformat()
    else:
        payload["submitted_at"] = at.isoformat()
    return make_event(event_type, payload, source="case-system", occurred_at=at)


def _rating(case_id: str, rating: int, at: dt.datetime, mobile: str | None) -> Event:
    return make_event(
        "evaluation.submitted",
        {
            "evaluation_id": f"EV-{case_id}",
            "case_id": case_id,
            "rating": rating,
            "real_name": mobile is not None,
            "citizen_mobile": mobile,
            "comment": "等待时间太长" if rating <= 2 else "",
            "department": DEPARTMENT,
            "service_point_id": "SC-CHANGAN",
            "evaluated_at": at.isoformat(),
        },
        source="evaluation-system",
        occurred_at=at,
    )


def wave(k: int, now: dt.datetime) -> list[Event]:
    """The good events of wave ``k`` (1 or 2) but the acknowledgement; distinct ids and numbers
    per wave."""
    return [
        _issued(f"LIC-{k}-A", 20, f"1380000{k}001"),  # 30-day SMS
        _issued(f"LIC-{k}-B", 5, f"1380000{k}002"),  # 7-day SMS
        _issued(f"LIC-{k}-X", 20, f"1390000{k}009"),  # Twilio: 21211 invalid number
        _case("case.submitted", f"G-{k}", now, f"1390000{k}101", special_groups=["elderly"]),
        _case("case.completed", f"S-{k}", now, f"1390000{k}201"),  # survey invitation
        _rating(f"E-{k}", 5, now, f"1390000{k}301"),
        _rating(f"N-{k}", 1, now, None),  # anonymous 1 star: a rectification ticket
    ]


def acknowledgement(k: int, at: dt.datetime) -> Event:
    """The on-duty staff acknowledge wave ``k``'s green-channel alert."""
    return make_event(
        "greenchannel.acknowledged",
        {
            "case_id": f"G-{k}",
            "service_point_id": "SC-CHANGAN",
            "staff_id": "S001",
            "acknowledged_at": at.isoformat(),
        },
        source="queue-system",
        occurred_at=at,
    )


def _alert_sent(settings: Settings, k: int) -> bool:
    with session(settings) as s:
        return bool(
            s.execute(
                select(StaffAlert).where(
                    StaffAlert.case_id == f"G-{k}", StaffAlert.sent_at.is_not(None)
                )
            ).first()
        )


def _settled(settings: Settings, k: int) -> bool:
    """Wave ``k`` is done in the database: its SMS final, alerts acknowledged, tickets open."""
    with session(settings) as s:
        rows = s.execute(select(Notification.flow, Notification.status)).all()
        acked = s.execute(select(StaffAlert).where(StaffAlert.acknowledged_at.is_not(None))).all()
    renewals = [status for flow, status in rows if flow == "renewal"]
    surveys = [status for flow, status in rows if flow == "survey"]
    return (
        len(renewals) == 3 * k
        and len(surveys) == k
        and all(status in FINAL for status in renewals + surveys)
        and len(acked) == k
        and count_rows(settings, RectificationTicket) == k
    )


def _run_wave(live: Live, k: int) -> None:
    settings, prom = live.settings, live.prometheus
    events = wave(k, live.pipeline.now(NOW))
    with Publisher.from_settings(settings) as publisher:
        for event in events:
            publisher.publish(event)
        # a different kind of bad input per wave: distinct dead letters
        for _reason, raw in bad_events(TODAY)[k - 1 : k - 1 + BAD_PER_WAVE]:
            publisher.publish_raw(raw, "license.issued")
    live.published += len(events) + BAD_PER_WAVE
    # Staff acknowledge the alert once it reached them (a response time is measured only then)
    wait_until(lambda: _alert_sent(settings, k), 60, message=f"no alert G-{k}:\n" + live.logs())
    with Publisher.from_settings(settings) as publisher:
        publisher.publish(acknowledgement(k, live.pipeline.now(NOW)))
    live.published += 1
    wait_until(
        lambda: _settled(settings, k),
        90,
        message=f"wave {k} did not settle:\n" + live.logs(),
    )
    # Status callbacks for the wave's first SMS: one signed by Twilio, one without a signature
    sid = next(m["sid"] for m in live.twilio.messages if m["to"] == f"+861380000{k}001")
    url = settings.api_public_url + TWILIO_STATUS_PATH
    assert live.twilio.send_status_callback(url, sid, "delivered") == 204
    assert live.twilio.send_status_callback(url, sid, "delivered", sign=False) == 403
    # Prometheus has scraped the whole wave before anything else happens
    prom.eventually("sum(govnotify_events_received_total)", live.published, timeout=30)
    prom.eventually(
        'sum(govnotify_notifications_total{flow="survey", status="sent"})', k, timeout=30
    )
    prom.eventually(
        'sum(govnotify_callback_requests_total{provider="twilio", outcome="unsigned"})', k
    )


@pytest.fixture(scope="module")
def live(
    amqp_url: str, tansu: services.TansuProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("prometheus-live")
    namespace = "t" + uuid.uuid4().hex[:12]
    with contextlib.ExitStack() as stack:
        database_url = create_database(PG_ADMIN_URL, f"govnotify_{namespace}")
        stack.callback(drop_database, PG_ADMIN_URL, database_url)
        settings = pipeline_settings(
            namespace=namespace,
            data_dir=root / "data",
            amqp_url=amqp_url,
            kafka_url=tansu.url,
            database_url=database_url,
        )
        stack.callback(purge_namespace, settings)
        # RabbitMQ's endpoint is one of the shipped jobs: on, as `govnotify services up` does
        status = services.enable_rabbitmq_prometheus(settings)
        assert status.startswith(("up", "enabled (")), f"rabbitmq_prometheus: {status}"

        twilio = stack.enter_context(FakeTwilio())
        hooks = stack.enter_context(FakeWebhook())
        directory_path = hooks.staff_directory(root / "staff.json")
        for k in range(1, WAVES + 1):
            twilio.fail_number(f"+861390000{k}009", 400, 21211)

        pipeline = Pipeline(settings, root / "logs")
        stack.callback(pipeline.stop_all)
        pipeline.set_env(
            GOVNOTIFY_TWILIO_ACCOUNT_SID=twilio.account_sid,
            GOVNOTIFY_TWILIO_AUTH_TOKEN=twilio.auth_token,
            GOVNOTIFY_TWILIO_FROM="+15017122661",
            GOVNOTIFY_TWILIO_API_BASE=twilio.base_url,
            GOVNOTIFY_STAFF_DIRECTORY=str(directory_path),
            GOVNOTIFY_NOW=NOW.isoformat(),
            GOVNOTIFY_SURVEY_DELAY_S="1",
        )
        pipeline.all()
        pipeline.api()

        host = "127.0.0.1"
        prometheus = Prometheus(
            config_for(
                {
                    "govnotify-relay": f"{host}:{settings.relay_metrics_port}",
                    "govnotify-stream": f"{host}:{settings.stream_metrics_port}",
                    "govnotify-worker": f"{host}:{settings.worker_metrics_port}",
                    "govnotify-scheduler": f"{host}:{settings.scheduler_metrics_port}",
                    "govnotify-api": f"{host}:{settings.api_metrics_port}",
                    "rabbitmq": f"{host}:{settings.rabbitmq_prometheus_port}",
                }
            ),
            root / "prometheus",
        )
        stack.enter_context(prometheus)

        state = Live(settings, pipeline, prometheus, twilio, published=0)
        for k in range(1, WAVES + 1):
            _run_wave(state, k)
        # The stream measures its lag every 5 s once its group has joined: the waves can be
        # over before its first measure has been scraped (they take seconds now).
        wait_until(
            lambda: (prometheus.value("count(govnotify_kafka_consumer_lag_messages)") or 0) >= 1,
            60,
            message=lambda: "no consumer lag scraped:\n" + state.logs(),
        )
        yield state
    # Every line every component wrote: no full phone number in any.
    leaks = unmasked_mobiles(root / "logs")
    assert not leaks, "full mobile numbers in logs:\n" + "\n".join(leaks[:10])


def test_prometheus_scrapes_every_component_and_sees_what_the_events_did(live: Live) -> None:
    # Given: two waves of known events went through the pipeline (the fixture)
    prom, ns = live.prometheus, live.settings.namespace
    good, bad = WAVES * GOOD_PER_WAVE, WAVES * BAD_PER_WAVE

    # Then: every job of the shipped config has its one target up
    def health() -> dict[str, list[str]]:
        jobs: dict[str, list[str]] = {}
        for target in prom.targets():
            jobs.setdefault(target["labels"]["job"], []).append(target["health"])
        return jobs

    jobs = {job["job_name"] for job in prom.config["scrape_configs"]}
    wait_until(lambda: health() == {job: ["up"] for job in jobs}, 30, message=str(health()))

    # and the counters say what the events did
    expected = {
        "sum(govnotify_events_received_total)": good + bad,
        "sum(govnotify_events_rejected_total)": bad,
        "sum(govnotify_events_relayed_total)": good,
        "sum(govnotify_stream_events_total)": good,
        'sum(govnotify_notifications_total{flow="renewal", status="sent"})': (
            WAVES * RENEWAL_SENT_PER_WAVE
        ),
        'sum(govnotify_notifications_total{flow="survey", status="sent"})': WAVES,
        'sum(govnotify_notifications_total{status="permanent-failure"})': WAVES,
        'sum(govnotify_provider_request_duration_seconds_count{provider="twilio"})': (
            WAVES * (RENEWAL_SENT_PER_WAVE + 1 + 1)
        ),
        'sum(govnotify_provider_request_duration_seconds_count{outcome="permanent"})': WAVES,
        'sum(govnotify_rectification_tickets_total{event="opened"})': WAVES,
        'sum(govnotify_green_channel_response_seconds_count{service_point="SC-CHANGAN"})': WAVES,
        'sum(govnotify_callback_requests_total{outcome="accepted"})': WAVES,
        'sum(govnotify_callback_requests_total{outcome="unsigned"})': WAVES,
        # the scheduler's database gauges
        'sum(govnotify_dead_letters_open{stage="ingest"})': bad,
        'sum(govnotify_rectification_tickets_open{department="市场监督管理局"})': WAVES,
        'sum(govnotify_notifications_pending{status="created"})': 0,
        "max(govnotify_green_channel_oldest_unacknowledged_seconds)": 0,
        # the stream's satisfaction gauges: 2 ratings of 5 and 2 of 1 today
        'govnotify_satisfaction_ratings{window="day", dimension="department", '
        'key="市场监督管理局"}': 2 * WAVES,
        'govnotify_satisfaction_rate{window="day", dimension="department", '
        'key="市场监督管理局"}': 0.5,
        # RabbitMQ's per-queue series, this test's queues only: all drained, no dead letters;
        # the copies of the bad events on the relay's dead-event queue
        f'sum(rabbitmq_detailed_queue_messages_ready{{queue=~"{ns}\\\\.[a-z-]+"}})': 0,
        f'sum(rabbitmq_detailed_queue_messages{{queue="{ns}.events.dead"}})': bad,
    }
    prom.eventually_all(expected, timeout=20)
    # and the series whose exact value depends on scheduling have at least what the waves imply
    at_least = {
        "sum(govnotify_green_channel_alert_seconds_count)": WAVES,
        f'min(rabbitmq_detailed_queue_consumers{{queue="{ns}.relay"}})': 1,
        f'min(rabbitmq_detailed_queue_consumers{{queue="{ns}.delivery"}})': 1,
        # a wave's reminders travel together (GOVNOTIFY_JOB_BATCH_SIZE): one message or more
        f'sum(dramatiq_messages_total{{queue_name="{ns}.reminders"}})': WAVES,
        f'sum(dramatiq_messages_total{{queue_name="{ns}.alerts"}})': WAVES,
        "count(govnotify_kafka_consumer_lag_messages)": 1,
    }
    values = {expr: prom.value(expr) for expr in at_least}
    assert all((values[e] or 0) >= n for e, n in at_least.items()), values
    # on Tansu the stream says its lag is not to be trusted (the alert is gated on it)
    assert prom.value("max(govnotify_kafka_consumer_lag_trustworthy)") == 0


def test_permanent_sms_failures_leave_no_job_on_a_dead_letter_queue(live: Live) -> None:
    # Given: each wave had one SMS to a number Twilio refuses for good (21211), recorded in
    # the ledger as permanent-failure (the first test checks the counter)
    prom, ns = live.prometheus, live.settings.namespace

    # Then: no job sits on a dramatiq dead-letter queue, so GovnotifyDeadLetterQueueNotEmpty
    # stays quiet: a wrong number is a recipient's outcome, not work an operator must replay
    dead_jobs = prom.query(f'rabbitmq_detailed_queue_messages{{queue=~"{ns}\\\\..+\\\\.XQ"}} > 0')
    assert not dead_jobs, {r["metric"]["queue"]: r["value"][1] for r in dead_jobs}


def test_every_rule_of_the_shipped_files_is_loaded_and_evaluates_without_error(
    live: Live,
) -> None:
    # Given
    shipped = [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]

    # When: a few evaluation rounds over the live series
    def loaded() -> list[dict[str, Any]]:
        groups = live.prometheus.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    wait_until(
        lambda: len(loaded()) == len(shipped) and all(r["health"] == "ok" for r in loaded()),
        30,
    )

    # Then: every rule is there, none failed to evaluate
    names = sorted(r["name"] for r in loaded())
    assert names == sorted(r.get("alert") or r["record"] for r in shipped)
    assert [(r["name"], r.get("lastError")) for r in loaded() if r.get("lastError")] == []
    # and every recording rule (read by the dashboard and the alerts) has series
    empty = [
        r["record"] for r in shipped if "record" in r and not live.prometheus.query(r["record"])
    ]
    assert empty == []
    # and no component is reported down
    assert not live.prometheus.query('ALERTS{alertname="GovnotifyComponentDown"}')


def _dashboard_queries(dashboard: dict[str, Any], variables: dict[str, str]) -> list[tuple]:
    """(panel title, refId, PromQL with variables expanded) of every target of every panel."""
    out = []
    panels = list(dashboard["panels"])
    for panel in panels:
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
        for target in panel.get("targets", []):
            expr = target["expr"]
            # longest names first: $__rate_interval before $__range ...
            for name in sorted(variables, key=len, reverse=True):
                expr = expr.replace("${" + name.lstrip("$") + "}", variables[name])
                expr = expr.replace(name, variables[name])
            out.append((panel["title"], target["refId"], expr))
    return out


def test_every_panel_of_the_grafana_dashboard_has_data(live: Live) -> None:
    # Given: the dashboard, its variables set as Grafana would for this deployment
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    templating = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert templating["datasource"]["type"] == "datasource"
    # the namespace variable lists this test's namespace from RabbitMQ's queue labels
    variable = templating["namespace"]
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
    assert match, variable["definition"]
    values = live.prometheus.api(f"label/{match[2]}/values", **{"match[]": match[1]})
    pattern = re.compile(variable["regex"].strip("/"))
    namespaces = {m[1] for v in values if (m := pattern.fullmatch(v))}
    assert live.settings.namespace in namespaces
    variables = {**GRAFANA_RANGE, "$namespace": live.settings.namespace}
    queries = _dashboard_queries(dashboard, variables)
    assert len(queries) >= 30
    # every panel reads the datasource variable
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

    # When: each query runs against the live Prometheus
    problems = []
    for title, ref, expr in queries:
        assert "$" not in expr, f"{title} {ref}: unexpanded variable in {expr}"
        try:
            result = live.prometheus.query(expr)
        except Exception as exc:
            problems.append(f"{title} [{ref}]: {exc}\n    {expr}")
            continue
        if not result:
            problems.append(f"{title} [{ref}]: no data\n    {expr}")

    # Then
    assert not problems, f"{len(problems)} of {len(queries)} queries:\n" + "\n".join(problems)
