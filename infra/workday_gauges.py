"""How long the holiday data lasts, as a gauge read at scrape time.

``govnotify_holiday_data_days_left``: days from the settable clock's local today to the last day
with holiday data (:meth:`infra.workdays.WorkdayCalendar.covered_until`, package plus
``GOVNOTIFY_HOLIDAYS_FILE``). Past that day, deadlines count Monday to Friday only; the
GovnotifyHolidayDataRunningOut alert asks for next year's notice a month before.

One process exports it: the scheduler, a singleton, so there is one series per deployment (the
workers, which compute the deadlines, read the same settings). Computed per scrape, so it counts
down without a restart; a new file is read when the process starts, like the workers do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from infra.clock import Clock
from infra.workdays import WorkdayCalendar

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from infra.settings import Settings

__all__ = ["WorkdayGauges", "register_workday_gauges"]

NAME = "govnotify_holiday_data_days_left"
HELP = (
    "Days from today to the last day with holiday data (chinesecalendar plus "
    "GOVNOTIFY_HOLIDAYS_FILE); after it, working days are counted Monday to Friday only."
)


class WorkdayGauges(Collector):
    """A custom collector: the days left of holiday data, as of each scrape."""

    def __init__(self, calendar: WorkdayCalendar, clock: Clock) -> None:
        self.calendar = calendar
        self.clock = clock

    def days_left(self) -> int:
        return (self.calendar.covered_until() - self.clock.today()).days

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(NAME, HELP)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(NAME, HELP, value=self.days_left())


def register_workday_gauges(
    settings: Settings, registry: CollectorRegistry = REGISTRY
) -> WorkdayGauges:
    """Add the holiday-data gauge to ``registry`` (the scheduler's default registry).

    Raises:
        HolidayFileError: ``GOVNOTIFY_HOLIDAYS_FILE`` is unreadable or wrong.
    """
    collector = WorkdayGauges(
        WorkdayCalendar.from_settings(settings), Clock.from_settings(settings)
    )
    registry.register(collector)
    return collector
