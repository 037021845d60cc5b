"""Helpers for tests on the real services (imported by conftest and tests)."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pika
import psycopg
from sqlalchemy import func, select

from infra.db import session, upgrade
from infra.processes import Child, ProcessGroup, wait_until

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "Pipeline",
    "count_rows",
    "create_database",
    "drop_database",
    "purge_namespace",
    "scrape",
    "wait_until",
]

#: dramatiq queues the workers declare (with their .DQ delay and .XQ dead-letter queues).
WORK_QUEUES = ("registry", "reminders", "delivery")


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` next to ``admin_url``'s, migrate it, return its SQLAlchemy URL."""
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url=url)
    return url


def drop_database(admin_url: str, url: str) -> None:
    from infra.db import get_engine

    get_engine(url).dispose()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def purge_namespace(settings: Settings) -> None:
    """Delete every RabbitMQ queue and the exchange of this namespace."""
    names = [settings.relay_queue, settings.dead_letter_queue]
    for q in WORK_QUEUES:
        base = settings.queue(q)
        names += [base, f"{base}.DQ", f"{base}.XQ"]
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        ch = conn.channel()
        for name in names:
            ch.queue_delete(name)
        ch.exchange_delete(settings.exchange)
    finally:
        conn.close()


def queue_depth(settings: Settings, queue: str) -> int:
    """Ready messages on ``queue``; 0 while it does not exist yet."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        if conn.is_open:
            conn.close()


def scrape(port: int) -> dict[str, float]:
    """Metrics served over HTTP at 127.0.0.1:port, as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        metric_name, _, rest = key.partition("{")
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def count_rows(settings: Settings, model, *where) -> int:  # type: ignore[no-untyped-def]
    with session(settings) as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a child process load exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVNOTIFY_")}
    for name, value in settings.model_dump().items():
        if value is None or value == "":
            continue
        if isinstance(value, list):
            value = json.dumps(value)
        env[f"GOVNOTIFY_{name.upper()}"] = str(value)
    env.update(extra)
    return env


class Pipeline(ProcessGroup):
    """relay, stream and worker processes for one test's settings."""

    def __init__(self, settings: Settings, log_dir: Path, **extra_env: str) -> None:
        super().__init__(env=env_for(settings, **extra_env), log_dir=log_dir)
        self.settings = settings

    def set_env(self, **extra: str) -> None:
        self.env.update(extra)

    def relay(self) -> Child:
        child = self.start("relay", "relay")
        wait_until(
            lambda: _answers(self.settings.relay_metrics_port),
            30,
            message="relay metrics did not come up:\n" + child.log_tail(),
        )
        return child

    def stream(self) -> Child:
        return self.start("stream", "stream")

    def worker(self, *args: str, name: str = "worker") -> Child:
        child = self.start(name, "worker", "--threads", "4", *args)
        wait_until(lambda: _answers(self.settings.worker_metrics_port) or not child.alive(), 60)
        assert child.alive(), child.log_tail()
        return child

    def all(self) -> None:
        self.relay()
        self.stream()
        self.worker()


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True
