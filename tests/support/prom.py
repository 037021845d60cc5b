"""A real Prometheus server for tests: configured from the shipped prometheus.yml, queried over
its HTTP API, stopped by pid on every exit path.

The configuration a test runs is the shipped ``infra/prometheus/prometheus.yml`` with only what
must differ rewritten: each job's targets (the test's ports), the scrape and evaluation
intervals (1 s, so a test does not wait 15 s per sample) and the rule files made absolute. The
jobs, metrics paths, parameters and rules are the ones a deployment gets.
"""

from __future__ import annotations

import copy
import glob
import json
import math
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.processes import Child, wait_until
from infra.services import free_port

__all__ = [
    "GRAFANA_DASHBOARD",
    "PROMETHEUS_DIR",
    "PROMETHEUS_YML",
    "PromQLError",
    "Prometheus",
    "config_for",
    "load_yaml",
    "require_binary",
]

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DASHBOARD = ROOT / "infra" / "grafana" / "govnotify-overview.json"


class PromQLError(Exception):
    """Raised when Prometheus answers a query with an error (parse or evaluation)."""


def require_binary(name: str) -> str:
    """Path of ``promtool``/``prometheus``; fails (never skips) the test when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: `apt-get install prometheus` (Debian/Ubuntu) puts "
            "prometheus and promtool on the PATH; the alert rules and the dashboard are "
            "tested with them.",
            pytrace=False,
        )
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def config_for(
    targets: dict[str, str],
    *,
    interval: str = "1s",
    shipped: Path = PROMETHEUS_YML,
) -> dict[str, Any]:
    """The shipped configuration with ``targets`` ({job: "host:port"}) and ``interval``.

    Every job of the shipped file must be given a target, so a job added there is exercised
    here too (or the test says which one is missing).
    """
    config = copy.deepcopy(load_yaml(shipped))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    missing = sorted(set(jobs) - set(targets))
    unknown = sorted(set(targets) - set(jobs))
    if missing or unknown:
        raise ValueError(f"targets for jobs: missing {missing}, not in the config {unknown}")
    for name, job in jobs.items():
        job["static_configs"] = [{"targets": [targets[name]]}]
    config["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    config["rule_files"] = [
        str(path)
        for pattern in config["rule_files"]
        for path in sorted(glob.glob(str(shipped.parent / pattern)))
    ]
    if not config["rule_files"]:
        raise ValueError("the shipped config names no existing rule file")
    return config


class Prometheus:
    """``prometheus`` on a free loopback port with its own storage; a context manager."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child | None = None

    def start(self, timeout: float = 30.0) -> Prometheus:
        binary = require_binary("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log_path = self.workdir / "prometheus.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    # Nothing to keep beyond the test; the default 15 d would not matter either.
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.child = Child("prometheus", popen, log_path)
        try:
            wait_until(
                lambda: self._ready() or not self.child.alive(),  # type: ignore[union-attr]
                timeout,
                message="prometheus did not become ready",
            )
            assert self.child.alive(), "prometheus exited:\n" + self.child.log_tail()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=10)
            self.child = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self) -> str:
        return self.child.log_tail() if self.child else ""

    # ---- HTTP API ------------------------------------------------------------------------
    def _ready(self) -> bool:
        try:
            ready = f"http://127.0.0.1:{self.port}/-/ready"
            with urllib.request.urlopen(ready, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a success, PromQLError otherwise."""
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')} ({params})")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result as a list of {metric, value} (scalars: one, no labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``; None when it has no result."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PromQLError(f"{expr} has {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def eventually(self, expr: str, expected: float, timeout: float = 30.0) -> None:
        """Wait until ``expr`` has the single value ``expected``; the last value in the error."""
        seen: list[float | None] = [None]

        def matches() -> bool:
            seen[0] = self.value(expr)
            return seen[0] is not None and math.isclose(seen[0], expected)

        try:
            wait_until(matches, timeout, interval=0.25)
        except TimeoutError:
            raise AssertionError(f"{expr} = {seen[0]}, expected {expected}") from None

    def eventually_all(self, expected: dict[str, float], timeout: float = 30.0) -> None:
        """Wait until every ``expr`` has its value; else fail listing every mismatch at once."""
        seen: dict[str, float | None] = {}

        def matches() -> bool:
            seen.update({expr: self.value(expr) for expr in expected})
            return all(
                seen[expr] is not None and math.isclose(seen[expr], value)  # type: ignore[arg-type]
                for expr, value in expected.items()
            )

        try:
            wait_until(matches, timeout, interval=0.5)
        except TimeoutError:
            wrong = [
                f"{expr} = {seen[expr]}, expected {value}"
                for expr, value in expected.items()
                if seen[expr] is None or not math.isclose(seen[expr], value)  # type: ignore[arg-type]
            ]
            raise AssertionError("\n".join(wrong)) from None

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]
