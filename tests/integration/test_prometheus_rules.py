"""The shipped Prometheus configuration and alert rules: valid for promtool, every alert unit
tested (fires, and stays quiet just below its threshold), every alert with its runbook.

No service is needed, only promtool (Debian's ``prometheus`` package); its absence fails the
suite with the install command rather than skipping.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.settings import load_settings
from tests.support.prom import PROMETHEUS_DIR, PROMETHEUS_YML, load_yaml, require_binary

ROOT = PROMETHEUS_DIR.parents[1]
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
#: Jobs the shipped config must scrape: every component and RabbitMQ.
JOBS = {
    "govnotify-relay",
    "govnotify-stream",
    "govnotify-worker",
    "govnotify-scheduler",
    "govnotify-api",
    "rabbitmq",
}
SEVERITIES = {"critical", "warning"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def runbook_anchors() -> dict[str, str]:
    """{GitHub anchor: heading} of every second-level heading of docs/runbooks.md."""
    headings = re.findall(r"^## (.+?)\s*$", RUNBOOKS.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-"): h for h in headings}


def test_the_shipped_config_is_valid_and_loads_the_rules() -> None:
    # When
    result = promtool("check", "config", PROMETHEUS_YML)

    # Then
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout, result.stdout
    config = load_yaml(PROMETHEUS_YML)
    assert {job["job_name"] for job in config["scrape_configs"]} == JOBS


def test_the_rules_are_valid() -> None:
    # Given
    assert RULE_FILES, "no rule files under infra/prometheus/rules"

    # When
    result = promtool("check", "rules", *RULE_FILES)

    # Then
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_unit_tests_pass() -> None:
    # Given
    assert RULE_TESTS, "no promtool tests under infra/prometheus/tests"

    # When
    result = promtool("test", "rules", *RULE_TESTS)

    # Then
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_is_labelled_annotated_and_has_a_runbook_section() -> None:
    # Given
    anchors = runbook_anchors()
    names = [rule["alert"] for rule in alerts()]

    # Then: unique names, a severity, the three annotations, a runbook section each
    assert len(names) == len(set(names)), names
    problems = []
    for rule in alerts():
        name = rule["alert"]
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                problems.append(f"{name}: no {key} annotation")
        path, _, anchor = annotations.get("runbook_url", "").partition("#")
        if path != "docs/runbooks.md" or anchor != name.lower():
            problems.append(f"{name}: runbook_url should be docs/runbooks.md#{name.lower()}")
        if anchors.get(name.lower()) != name:
            problems.append(f"{name}: no section '## {name}' in docs/runbooks.md")
    # and no runbook section for an alert that does not exist (renamed, removed)
    problems += [
        f"runbook section '## {h}' has no alert" for h in anchors.values() if h not in names
    ]
    assert not problems, "\n".join(problems)


def test_every_alert_has_a_promtool_test_that_fires_it_and_one_that_does_not() -> None:
    # Given: every alert_rule_test case of every promtool test file
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        spec = load_yaml(path)
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])

    # Then
    names = {rule["alert"] for rule in alerts()}
    assert not names - fires, f"alerts never expected to fire in a test: {sorted(names - fires)}"
    assert not names - quiet, f"alerts never expected quiet in a test: {sorted(names - quiet)}"
    assert not (fires | quiet) - names, (
        f"tests of unknown alerts: {sorted((fires | quiet) - names)}"
    )


def test_the_no_consumer_alert_watches_exactly_the_queues_govnotify_consumes() -> None:
    # Given: the relay's ingest queue and every dramatiq work queue (not .DQ/.XQ)
    settings = load_settings(namespace="govnotify")
    consumed = {settings.relay_queue} | {
        q for q in settings.work_queues if not q.endswith((".DQ", ".XQ"))
    }

    # When: the queue names in the alert's regex
    (rule,) = [r for r in alerts() if r["alert"] == "GovnotifyQueueWithoutConsumers"]
    match = re.search(r"\(((?:[a-z-]+\|)+[a-z-]+)\)", rule["expr"])
    assert match, rule["expr"]
    watched = {f"govnotify.{name}" for name in match[1].split("|")}

    # Then: a queue added to the settings must be added to the alert too
    assert watched == consumed


@pytest.mark.parametrize("path", RULE_TESTS, ids=[p.name for p in RULE_TESTS])
def test_each_promtool_test_file_names_the_shipped_rules(path: Path) -> None:
    # promtool resolves rule_files against the test file's folder
    spec = load_yaml(path)
    resolved = {(path.parent / f).resolve() for f in spec["rule_files"]}
    assert resolved <= {p.resolve() for p in RULE_FILES}, spec["rule_files"]
