"""Health endpoints, readiness checks and the arithmetic behind the SRE's gauges, without services.

The HTTP tests serve on loopback ports of their own; checks are injected callables, so a
"dead broker" is a check that raises or hangs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pika
import pytest
from prometheus_client import CollectorRegistry, Counter

from infra import dbgauges
from infra.health import NotReady, Readiness, _Server, component_checks, rabbitmq_check
from infra.metrics import parse_samples, serve_metrics
from infra.processes import wait_until
from infra.services import free_port
from infra.settings import load_settings
from producers.relay import published_at
from streams.lag import partition_lag, topic_lags


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def ok() -> None:
    """A dependency that answers."""


def broken() -> None:
    raise NotReady("connection refused")


@pytest.fixture
def served():  # type: ignore[no-untyped-def]
    """serve_metrics(...) on a free port with a registry of its own; shut down afterwards."""
    servers = []

    def serve(checks, registry=None):  # type: ignore[no-untyped-def]
        port = free_port()
        server, _thread = serve_metrics(
            port, "127.0.0.1", ready_checks=checks, registry=registry or CollectorRegistry()
        )
        servers.append(server)
        return port

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


# ---- /healthz, /readyz, /metrics ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("checks", "status", "expected"),
    [
        (None, 200, {}),
        ({"rabbitmq": ok, "database": ok}, 200, {"rabbitmq": "ok", "database": "ok"}),
        (
            {"rabbitmq": ok, "kafka": broken},
            503,
            {"rabbitmq": "ok", "kafka": "connection refused"},
        ),
    ],
    ids=["no checks", "all answer", "one down"],
)
def test_readyz_answers_each_check_and_healthz_stays_ok(served, checks, status, expected) -> None:
    # Given a metrics server with these readiness checks
    port = served(checks)

    # When probed
    health = get(port, "/healthz")
    ready_status, body = get(port, "/readyz")

    # Then liveness is independent of the dependencies, readiness names each check
    assert health == (200, "ok\n")
    assert ready_status == status
    answer = json.loads(body)
    assert answer["checks"] == expected
    assert answer["status"] == ("ready" if status == 200 else "not ready")


def test_metrics_are_served_as_before_next_to_the_probes(served) -> None:
    # Given a registry with one counter, served with a failing check
    registry = CollectorRegistry()
    Counter("probe_test_total", "A test counter.", registry=registry).inc(3)
    port = served({"kafka": broken}, registry)

    # When /metrics and the root path are scraped
    status, text = get(port, "/metrics")
    root_status, root_text = get(port, "/")

    # Then both give the registry, whatever readiness says
    assert status == 200 and "probe_test_total 3.0" in text
    assert root_status == 200 and "probe_test_total 3.0" in root_text


def _serving() -> int:
    """Threads serving a connection (socketserver names them after their target)."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_idle_connections_cannot_make_a_thread_each_and_time_out(
    served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a metrics server that serves 4 connections at once, each silent one for 2 s
    monkeypatch.setattr(_Server, "max_threads", 4)
    monkeypatch.setattr(_Server, "request_timeout_s", 2.0)
    port = served(None)

    # When a client opens 40 connections and sends nothing on them
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    try:
        wait_until(lambda: _serving() >= 4, 5)
        # Then at most 4 threads serve them; the connections beyond are closed at once
        assert _serving() <= 4
        closed = 0
        for conn in idle[4:]:
            try:
                closed += conn.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == 36
        # … and once the silent ones time out, a scrape is answered again
        wait_until(lambda: _serving() == 0, 5)
        status, _text = get(port, "/metrics")
        assert status == 200
    finally:
        for conn in idle:
            conn.close()


def test_a_hanging_check_is_time_boxed_and_not_run_twice_at_once() -> None:
    # Given a check that never returns (a broker that accepts and never answers)
    release = threading.Event()
    calls: list[int] = []

    def hangs() -> None:
        calls.append(1)
        release.wait(30)

    readiness = Readiness({"kafka": hangs, "database": ok}, timeout_s=0.3, cache_s=0)
    try:
        # When asked twice
        started = time.monotonic()
        first = readiness.status()
        second = readiness.status()
        elapsed = time.monotonic() - started

        # Then each answer comes within the time box, says what hung, and the hung check was
        # not started a second time while its first run still hangs
        assert elapsed < 2.0
        assert first[0] is False and second[0] is False
        assert first[1]["database"] == "ok"
        assert first[1]["kafka"].startswith("no answer within")
        assert len(calls) == 1
    finally:
        release.set()


def test_answers_are_cached_for_a_while() -> None:
    # Given a check that counts its calls
    calls: list[int] = []

    def counted() -> None:
        calls.append(1)

    readiness = Readiness({"rabbitmq": counted}, cache_s=60)

    # When asked three times in a row
    answers = [readiness.status() for _ in range(3)]

    # Then the dependency was asked once
    assert answers == [(True, {"rabbitmq": "ok"})] * 3
    assert len(calls) == 1


def test_unexpected_exceptions_count_as_not_ready_with_their_type() -> None:
    def buggy() -> None:
        raise RuntimeError("boom\nsecond line")

    ready, checks = Readiness({"database": buggy}).status()

    assert ready is False
    assert checks == {"database": "RuntimeError: boom"}


def test_rabbitmq_check_names_the_address_never_the_password() -> None:
    # Given an AMQP URL with a password, on a port nothing listens on
    port = free_port()
    check = rabbitmq_check(f"amqp://guest:s3cret-pw@127.0.0.1:{port}/", timeout=1)

    # When checked
    with pytest.raises(NotReady) as err:
        check()

    # Then
    assert f"127.0.0.1:{port}" in str(err.value)
    assert "s3cret-pw" not in str(err.value)


@pytest.mark.parametrize(
    ("component", "names"),
    [
        ("relay", ["rabbitmq", "kafka", "database"]),
        ("stream", ["rabbitmq", "kafka"]),
        ("scheduler", ["rabbitmq", "database"]),
        ("worker", ["rabbitmq", "database"]),
        ("api", ["database"]),
    ],
)
def test_each_component_checks_the_dependencies_it_uses(component, names) -> None:
    checks = component_checks(load_settings(), component)

    assert list(checks) == names
    assert all(callable(c) for c in checks.values())


def test_an_unknown_component_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown component 'gateway'"):
        component_checks(load_settings(), "gateway")


# ---- consumer lag arithmetic -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("end", "committed", "beginning", "lag"),
    [
        (100, 100, 0, 0),  # caught up
        (100, 40, 0, 60),  # behind
        (100, None, 0, 100),  # group never committed: everything from the beginning
        (100, None, 30, 70),  # … from the first offset still retained
        (100, 10, 30, 70),  # committed offset below retention: it resumes at the beginning
        (6, 8, 0, 0),  # Tansu: reported end one batch short of the committed offset
        (0, None, 0, 0),  # empty partition
    ],
)
def test_partition_lag(end, committed, beginning, lag) -> None:
    assert partition_lag(end, committed, beginning) == lag


def test_topic_lags_per_partition() -> None:
    ends = {("ns.cases", 0): 10, ("ns.cases", 1): 5, ("ns.licenses", 0): 7}
    committed = {("ns.cases", 0): 4, ("ns.cases", 1): None, ("ns.licenses", 0): 7}

    assert topic_lags(ends, committed, {("ns.cases", 1): 2}) == {
        ("ns.cases", 0): 6,
        ("ns.cases", 1): 3,
        ("ns.licenses", 0): 0,
    }


# ---- relay lag: when a message was published ---------------------------------------------------
@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        (pika.BasicProperties(headers={"timestamp_in_ms": 1_700_000_000_250}), 1_700_000_000.25),
        (pika.BasicProperties(timestamp=1_700_000_000), 1_700_000_000.0),
        (
            pika.BasicProperties(
                timestamp=1_700_000_000, headers={"timestamp_in_ms": 1_700_000_000_500}
            ),
            1_700_000_000.5,
        ),
        (pika.BasicProperties(), 42.0),
        (pika.BasicProperties(headers={"timestamp_in_ms": "soon"}), 42.0),
        (None, 42.0),
    ],
    ids=["header in ms", "property in s", "header wins", "neither", "bad header", "no props"],
)
def test_published_at_prefers_the_publishers_timestamp(properties, expected) -> None:
    assert published_at(properties, received=42.0) == pytest.approx(expected)


# ---- bounded label values ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("市场监督管理局", "市场监督管理局"),
        ("SC-CHANGAN", "SC-CHANGAN"),
        ("13800138000", "redacted"),
        ("dept 110105199001010123", "redacted"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_label_values_never_carry_a_number_that_could_be_personal(value, label) -> None:
    assert dbgauges._label(value) == label


def test_label_values_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbgauges, "MAX_LABEL_VALUES", 3)
    values = {"a": 5.0, "b": 4.0, "c": 1.0, "d": 1.0, "e": 2.0}

    assert dbgauges._bounded(values) == {"a": 5.0, "b": 4.0, "other": 4.0}


# ---- top's reading of the text format ----------------------------------------------------------
def test_parse_samples_reads_labels_with_commas_quotes_and_chinese() -> None:
    text = "\n".join(
        [
            "# HELP x_total A counter.",
            'x_total{department="市场监督管理局",note="a, \\"b\\""} 3.0',
            "up 1",
            "broken_line",
        ]
    )

    samples = parse_samples(text)

    assert samples["x_total"] == {(("department", "市场监督管理局"), ("note", 'a, "b"')): 3.0}
    assert samples["up"] == {(): 1.0}
