"""Where the holiday data comes from and until when: ``govnotify workdays`` as a subprocess, and
the scheduler's ``govnotify_holiday_data_days_left`` gauge on its real /metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.settings import Settings
from tests.support import Pipeline, clean_env, metric, run_cli, scrape, wait_until

pytestmark = pytest.mark.integration

NOW = "2026-11-26T10:00:00+08:00"
#: TEST DATA, not the real 2027 notice: a made-up Spring Festival off Feb 10–16, Sat Feb 20 worked.
FICTIONAL_2027 = {
    "2027": {
        "holidays": ["2027-01-01", *(f"2027-02-{d}" for d in range(10, 17))],
        "workdays": ["2027-02-20"],
    }
}


def _write(path: Path, notices: object) -> Path:
    path.write_text(json.dumps(notices), encoding="utf-8")
    return path


# ---- govnotify workdays ----------------------------------------------------------------------
def test_workdays_json_reports_the_package_the_file_and_the_days_left(tmp_path: Path) -> None:
    # Given the 2027 notice in GOVNOTIFY_HOLIDAYS_FILE and the clock at 2026-11-26
    path = _write(tmp_path / "holidays.json", FICTIONAL_2027)
    env = clean_env(GOVNOTIFY_HOLIDAYS_FILE=str(path), GOVNOTIFY_NOW=NOW)

    # When
    result = run_cli("workdays", "--json", env=env)

    # Then the data reaches the end of 2027, 400 days away
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "package": {
            "name": "chinesecalendar",
            "version": "1.11.0",
            "first_year": 2004,
            "last_year": 2026,
        },
        "file": {"path": str(path), "years": [2027]},
        "covered_until": "2027-12-31",
        "today": "2026-11-26",
        "days_left": 400,
    }


def test_workdays_without_a_file_ends_with_the_package() -> None:
    # Given no GOVNOTIFY_HOLIDAYS_FILE, on 2026-11-26 and on 2026-12-15
    env = clean_env(GOVNOTIFY_NOW=NOW)
    late = clean_env(GOVNOTIFY_NOW="2026-12-15T10:00:00+08:00")

    # When
    as_json = run_cli("workdays", "--json", env=env)
    as_text = run_cli("workdays", env=late)

    # Then the package's last year is the end, and with under 31 days left the text says
    # what to do (the alert's threshold)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert (report["file"], report["covered_until"], report["days_left"]) == (
        None,
        "2026-12-31",
        35,
    )
    assert as_text.returncode == 0, as_text.stderr
    assert "chinesecalendar 1.11.0, 2004–2026" in as_text.stdout
    assert "16 (today is 2026-12-15)" in as_text.stdout
    assert (
        "upgrade chinesecalendar or add next year's notice to GOVNOTIFY_HOLIDAYS_FILE"
        in as_text.stdout
    )


def test_workdays_with_a_bad_file_exits_2_naming_the_problem(tmp_path: Path) -> None:
    # Given a file listing a Wednesday as a make-up working day
    notices = {"2027": {**FICTIONAL_2027["2027"], "workdays": ["2027-02-17"]}}
    path = _write(tmp_path / "holidays.json", notices)
    env = clean_env(GOVNOTIFY_HOLIDAYS_FILE=str(path), GOVNOTIFY_NOW=NOW)

    # When
    result = run_cli("workdays", "--json", env=env)

    # Then it exits 2 with the file and the problem, and prints no report
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f'govnotify: holiday notices file {path}: 2027: "workdays": 2027-02-17 is a '
        "Wednesday; make-up working days (调休) are Saturdays or Sundays"
    )


# ---- the scheduler's gauge -------------------------------------------------------------------
@pytest.mark.parametrize(("with_file", "expected"), [(False, 35.0), (True, 400.0)])
def test_the_scheduler_exports_the_days_left_of_holiday_data(
    settings: Settings, pipeline: Pipeline, tmp_path: Path, with_file: bool, expected: float
) -> None:
    # Given a scheduler whose clock reads 2026-11-26, with or without the 2027 notice
    extra = {"GOVNOTIFY_NOW": NOW}
    if with_file:
        extra["GOVNOTIFY_HOLIDAYS_FILE"] = str(_write(tmp_path / "holidays.json", FICTIONAL_2027))
    pipeline.set_env(**extra)
    child = pipeline.scheduler()

    # When Prometheus scrapes it (the gauge is registered as the scheduler loop starts)
    def samples() -> dict[str, float]:
        return scrape(settings.scheduler_metrics_port)

    wait_until(lambda: "govnotify_holiday_data_days_left" in samples(), 30, message=child.log_tail)

    # Then it exports the days to the end of the data
    assert metric(samples(), "govnotify_holiday_data_days_left") == expected
