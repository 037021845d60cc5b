"""One fault run: a license registry through the whole pipeline while components and brokers die.

:func:`run_chaos` gives the run its own Tansu (a free port), its own fake Twilio
(:class:`~benchmarks.chaos_twilio.LateTwilio`), its own namespace and free metrics ports, on the
real RabbitMQ and the PostgreSQL database it is handed. It publishes the registry in waves, one
before each fault: the wave is published (``Publisher.publish_many``), the relay takes it off
RabbitMQ, and after a seeded random pause the fault strikes while the wave is still on its way
through Kafka, the stream and the workers. After the last fault a final wave goes through
untouched, and the run waits until it has settled: every expected SMS at the fake and no
notification row left ``created`` or ``sending`` for a while. It stops early when nothing moves
any more (lost work never arrives) or at a deadline.

Faults: SIGKILL of the relay, the stream, the worker's process group, the scheduler or the api,
each restarted after a short seeded pause; an empty Tansu (SIGKILL, a new broker on the same
port, topics created again); a RabbitMQ restart; a PostgreSQL restart.

What it reports (:class:`ChaosResult`): expected SMS (one per due license, keyed like the
idempotency key ``renewal:sms:<license>:<expiry>:<offset>``) against the messages the fake took,
matched by the license id in the body; per fault kind, the due SMS of the waves it struck and
how they ended, and how long the pipeline took to be ready again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import re
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from benchmarks.chaos_fleet import (
    COMPONENTS,
    Exit,
    Fleet,
    restart_postgres,
    restart_rabbitmq,
    restart_tansu_empty,
)
from benchmarks.chaos_twilio import CallbackPoster, LateTwilio, client_timeout_s
from benchmarks.common import child_env
from infra.db import session
from infra.services import TansuProcess, create_topics, free_port, start_tansu, stop_pid
from infra.settings import Settings, load_settings
from producers.generator import generate_registry, license_event
from producers.rabbitmq import Publisher, delete_namespace, queue_depth
from schemas.events import Event
from schemas.models import DeadLetter, LicenseRecord, Notification
from tests.support import free_ports

__all__ = [
    "FAULT_LABELS",
    "NOW",
    "TIMEZONE",
    "ChaosPlan",
    "ChaosResult",
    "FaultRecord",
    "WaveOutcome",
    "due_sms",
    "fault_schedule",
    "run_chaos",
]

#: Every process's clock starts at this instant (GOVNOTIFY_NOW) when the run starts
#: (GOVNOTIFY_NOW_EPOCH): 10:00 local on a fixed day, so a repeated run meets the same dates.
TIMEZONE = "Asia/Shanghai"
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=ZoneInfo(TIMEZONE))
TWILIO_FROM = "+15017122661"
#: Fault kinds in report order, with their labels.
FAULT_LABELS = {
    "relay": "relay kill",
    "stream": "stream kill",
    "worker": "worker kill (process group)",
    "scheduler": "scheduler kill",
    "api": "api kill",
    "tansu": "Tansu empty restart",
    "rabbitmq": "RabbitMQ restart",
    "postgres": "PostgreSQL restart",
}
PENDING = ("created", "sending")
_LICENSE_IN_BODY = re.compile(r"证号([^）)]+)[）)]")


@dataclass(frozen=True)
class ChaosPlan:
    """What one run does; the same plan and seed give the same registry, faults and pauses."""

    licenses: int = 100_000
    seed: int = 2026
    #: GOVNOTIFY_NOW; None: the instant the run starts (the wall clock, pinned and shared).
    now: dt.datetime | None = NOW
    #: SIGKILLs, spread over relay, stream, worker, scheduler and api in seeded rounds.
    kills: int = 20
    tansu_restarts: int = 1
    rabbitmq_restart: bool = True
    postgres_restart: bool = True
    #: Create the topics again after an empty Tansu (False: rely on Tansu's auto-creation).
    recreate_topics: bool = True
    #: Share of Twilio creates answered after the client's timeout.
    late_share: float = 0.02
    #: Signed `delivered` callbacks to the api (needs GOVNOTIFY_PUBLIC_BASE_URL).
    callbacks: bool = True
    #: Pause between the relay taking a wave off RabbitMQ and the fault, seconds (seeded).
    gap_s: tuple[float, float] = (0.0, 4.0)
    #: Pause between a kill and the restart, seconds (seeded).
    pause_s: tuple[float, float] = (0.0, 2.0)
    worker_threads: int = 8
    #: GOVNOTIFY_RENEWAL_SETTLE_S: reminders due at once wait this long (then re-checked).
    renewal_settle_s: int = 3
    sweep_interval_s: int = 5
    sweep_sending_after_s: int = 15
    sweep_created_after_s: int = 30
    #: Start-up, and each fault's wait for every component to be ready again.
    ready_timeout_s: float = 180.0
    #: Waiting for the relay to take a wave off RabbitMQ.
    drain_timeout_s: float = 120.0
    #: After the last wave: settled, or given up.
    settle_deadline_s: float = 1200.0
    #: Given up early when nothing moved for this long (lost work never arrives).
    stall_s: float = 90.0
    #: Settled = everything expected seen and nothing pending for this long.
    quiet_s: float = 12.0


@dataclass
class FaultRecord:
    kind: str
    #: time.monotonic() when the fault struck; when every component was ready again (None:
    #: not within the plan's ready_timeout_s).
    at: float
    recovered_at: float | None
    #: Seconds until the faulted component (kills) or every component (services) was ready.
    recovery_s: float | None
    #: The wave published just before it: index into ChaosResult.waves, and when it was
    #: published (time.monotonic()).
    wave: int
    wave_published_at: float
    detail: str = ""


@dataclass
class WaveOutcome:
    """The due SMS of some waves: how many, sent (all copies), missing, duplicated; and when
    the last one arrived, seconds after the waves were published (None: some never did)."""

    expected: int
    sent: int
    missing: int
    duplicated: int
    last_sms_s: float | None = None


@dataclass
class ChaosResult:
    plan: ChaosPlan
    #: license id → idempotency key of its one expected SMS.
    expected: dict[str, str]
    #: license ids of each wave, in publishing order (the last one met no fault).
    waves: list[list[str]]
    #: license id → SMS the fake Twilio took for it.
    seen: Counter[str]
    #: license id → time.monotonic() of its first SMS.
    first_sms_at: dict[str, float]
    faults: list[FaultRecord]
    exits: list[Exit]
    #: Notification rows by status at the end.
    statuses: Counter[str]
    #: (stage, reason) → (rows, events counted); and (stage, reason, time.monotonic() first seen).
    dead_letters: dict[tuple[str, str], tuple[int, int]]
    dead_letter_times: list[tuple[str, str, float]]
    started_at: float
    last_wave_at: float
    settled: bool
    settled_at: float | None
    end_reason: str
    events_published: int
    publish_retries: int
    late_answers: int
    confirmed_by_sweep: int
    #: Notification rows by status_reason (None: no reason recorded).
    status_reasons: Counter[str]
    callbacks: dict[str, int]
    runtime_s: float
    log_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return sorted(lic for lic in self.expected if not self.seen.get(lic))

    @property
    def duplicated(self) -> dict[str, int]:
        return {lic: n for lic, n in sorted(self.seen.items()) if n > 1}

    @property
    def unexpected(self) -> list[str]:
        return sorted(lic for lic in self.seen if lic not in self.expected)

    @property
    def sms_sent(self) -> int:
        return sum(self.seen.values())

    @property
    def time_to_settle_s(self) -> float | None:
        """From the first publish until everything expected was seen with nothing pending."""
        return None if self.settled_at is None else self.settled_at - self.started_at

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)

    def kinds(self) -> list[str]:
        done = {f.kind for f in self.faults}
        return [k for k in FAULT_LABELS if k in done]

    def recovery(self, kind: str) -> tuple[float | None, float | None, int]:
        """(median, max) seconds to ready again, and how many did not get ready in time."""
        times = [f.recovery_s for f in self.faults if f.kind == kind]
        got = [t for t in times if t is not None]
        if not got:
            return None, None, len(times)
        return statistics.median(got), max(got), len(times) - len(got)

    def wave_outcome(self, waves: Sequence[int], start: float) -> WaveOutcome:
        """How the due SMS of the licenses of ``waves`` ended; ``start``: when they were
        published (time.monotonic())."""
        licenses = [lic for w in waves for lic in self.waves[w] if lic in self.expected]
        arrivals = [self.first_sms_at[lic] for lic in licenses if lic in self.first_sms_at]
        outcome = WaveOutcome(
            expected=len(licenses),
            sent=sum(self.seen.get(lic, 0) for lic in licenses),
            missing=sum(1 for lic in licenses if not self.seen.get(lic)),
            duplicated=sum(1 for lic in licenses if self.seen.get(lic, 0) > 1),
        )
        if arrivals and not outcome.missing:
            outcome.last_sms_s = max(0.0, max(arrivals) - start)
        return outcome

    def dead_letters_between(self, start: float, end: float | None) -> int:
        return sum(
            1 for _s, _r, at in self.dead_letter_times if at >= start and (end is None or at < end)
        )


# ---- the registry and what it must produce --------------------------------------------------
def due_sms(
    final: dict[str, tuple[str, dt.date]], today: dt.date, offsets: list[int]
) -> dict[str, str]:
    """license id → the idempotency key of the one renewal SMS due on ``today``.

    A live license expiring within the largest offset gets the reminder of the smallest offset
    whose send date has come (a license 5 days from expiry gets the 7-day one, not a late
    30-day one); expired and revoked ones get none.
    """
    due = {}
    for license_id, (status, expires_on) in final.items():
        if status != "live" or expires_on <= today:
            continue
        reached = [o for o in offsets if expires_on - dt.timedelta(days=o) <= today]
        if reached:
            due[license_id] = f"renewal:sms:{license_id}:{expires_on.isoformat()}:{min(reached)}"
    return due


def fault_schedule(plan: ChaosPlan, rng: random.Random) -> list[str]:
    """The faults in order: kills in seeded rounds over the five components, with the service
    restarts at seeded places (never first: the pipeline is busy by then)."""
    kills: list[str] = []
    while len(kills) < plan.kills:
        round_ = list(COMPONENTS)
        rng.shuffle(round_)
        kills.extend(round_)
    schedule = kills[: plan.kills]
    services = ["tansu"] * plan.tansu_restarts
    services += ["rabbitmq"] * plan.rabbitmq_restart + ["postgres"] * plan.postgres_restart
    for kind in services:
        schedule.insert(rng.randint(1, max(1, len(schedule))), kind)
    return schedule


def _split(events: list[Event], n: int) -> list[list[Event]]:
    size, extra = divmod(len(events), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(events[start:end])
        start = end
    return out


# ---- the run --------------------------------------------------------------------------------
class _Run:
    """State of one run while it goes; :func:`run_chaos` drives it."""

    def __init__(
        self,
        plan: ChaosPlan,
        settings: Settings,
        fleet: Fleet,
        fake: LateTwilio,
        tansu: TansuProcess,
        say: Callable[[str], None],
        *,
        today: dt.date,
        expected: dict[str, str],
        waves: list[list[str]],
    ) -> None:
        self.plan = plan
        self.today = today
        #: Grown by the probes (a probe is a due license like any other).
        self.expected = expected
        self.waves = waves
        self.settings = settings
        self.fleet = fleet
        self.fake = fake
        self.tansu = tansu
        self.say = say
        self.rng = random.Random(plan.seed + 1)
        self.faults: list[FaultRecord] = []
        self.publish_retries = 0
        self.published = 0
        self.dead_letter_times: list[tuple[str, str, float]] = []
        self._dead_seen: set[str] = set()
        self.t0 = time.monotonic()

    def elapsed(self) -> str:
        return f"[{time.monotonic() - self.t0:7.1f}s]"

    # ---- publishing ----
    def publish(self, events: list[Event]) -> None:
        """Publish ``events`` with pipelined confirms; retry those not confirmed, as an upstream
        does (a repeat is harmless: the pipeline keys every effect)."""
        todo = [(e.to_json_bytes(), e.event_type, e.event_id) for e in events]
        for attempt in range(10):
            try:
                with Publisher.from_settings(self.settings) as publisher:
                    outcomes = publisher.publish_many(todo)
            except Exception as exc:  # connection refused while RabbitMQ restarts
                self.say(f"{self.elapsed()} publishing failed ({type(exc).__name__}); retrying")
                outcomes = [(False, str(exc))] * len(todo)
            failed = [m for m, (ok, _reason) in zip(todo, outcomes, strict=True) if not ok]
            self.published += len(todo) - len(failed)
            if not failed:
                return
            self.publish_retries += len(failed)
            todo = failed
            time.sleep(min(2.0 * (attempt + 1), 10.0))
        raise RuntimeError(f"{len(todo)} events were never confirmed by RabbitMQ")

    def wait_drained(self) -> None:
        """Until the relay took every event off its RabbitMQ queue (or the plan's deadline)."""
        deadline = time.monotonic() + self.plan.drain_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if queue_depth(self.settings, self.settings.relay_queue) == 0:
                    return
            time.sleep(0.1)
        self.say(f"{self.elapsed()} the relay did not drain its queue in time; going on")

    # ---- faults ----
    def strike(self, kind: str, wave: int, wave_published_at: float) -> FaultRecord:
        at = time.monotonic()
        detail = ""
        if kind in COMPONENTS:
            self.fleet.kill(kind)
            time.sleep(self.rng.uniform(*self.plan.pause_s))
            self.fleet.restart(kind)
            recovery = self.fleet.wait_ready([kind], self.plan.ready_timeout_s)
        else:
            if kind == "tansu":
                self.tansu = restart_tansu_empty(self.tansu)
                if self.plan.recreate_topics:
                    created = create_topics(
                        self.settings.kafka_bootstrap,
                        self.settings.topics,
                        self.settings.kafka_partitions,
                    )
                    detail = f"topics created again: {len(created)} of {len(self.settings.topics)}"
                else:
                    detail = "topics left to auto-creation"
            elif kind == "rabbitmq":
                restart_rabbitmq(self.settings.amqp_url)
                detail = f"broker back after {time.monotonic() - at:.1f} s"
            elif kind == "postgres":
                restart_postgres(self.settings.resolved_database_url)
                detail = f"database back after {time.monotonic() - at:.1f} s"
            waited = self.fleet.wait_ready(COMPONENTS, self.plan.ready_timeout_s)
            # /readyz answers before a component noticed the broker went away (Faust rejoins
            # its group seconds later): what counts is one new event all the way through.
            probe = self.probe(wave, at + self.plan.ready_timeout_s)
            recovery = None if waited is None or probe is None else probe - at
            if waited is not None and probe is None:
                detail += f"; the probe's SMS did not come within {self.plan.ready_timeout_s:g} s"
        recovered_at = None if recovery is None else at + recovery
        if recovery is None and (waiting := self.fleet.not_ready()):
            detail = (detail + "; " if detail else "") + f"not ready: {', '.join(waiting)}"
        record = FaultRecord(kind, at, recovered_at, recovery, wave, wave_published_at, detail)
        self.faults.append(record)
        shown = "not ready in time" if recovery is None else f"ready again in {recovery:.1f} s"
        self.say(
            f"{self.elapsed()} fault {len(self.faults)}: {FAULT_LABELS[kind]}: {shown}"
            + (f" ({detail})" if detail else "")
            + f"; SMS so far {self.fake.count()}"
        )
        if kind in COMPONENTS:
            # The next fault strikes a whole pipeline, not one still coming up.
            self.fleet.wait_ready(COMPONENTS, self.plan.ready_timeout_s)
        return record

    def probe(self, wave: int, deadline: float) -> float | None:
        """Publish one license due today and wait for its SMS; when it came (None: not by
        ``deadline``). It counts as a license of ``wave``."""
        n = sum(1 for f in self.faults if f.kind not in COMPONENTS) + 1
        license_id = f"CHAOS-PROBE-{n:04d}"
        expires_on = self.today + dt.timedelta(days=10)
        event = license_event(
            "license.issued",
            license_id,
            category="food_business",
            holder_mobile=f"1390000{n:04d}",
            issued_on=expires_on - dt.timedelta(days=365 * 5),
            expires_on=expires_on,
            occurred_at=dt.datetime.now(dt.UTC),
        )
        self.expected.update(
            due_sms(
                {license_id: ("live", expires_on)}, self.today, self.settings.renewal_sms_offsets
            )
        )
        self.waves[wave].append(license_id)
        start = self.fake.count()
        self.publish([event])
        needle = f"证号{license_id}"
        while time.monotonic() < deadline:
            with self.fake._cond:
                for message in self.fake.messages[start:]:
                    if needle in message["body"]:
                        return float(message.get("arrived", time.monotonic()))
            time.sleep(0.2)
        return None

    # ---- observing ----
    def db_state(self) -> tuple[Counter[str], int] | None:
        """(notification rows by status, license records); None while the database is away."""
        try:
            with session(self.settings) as s:
                statuses = Counter(
                    dict(
                        s.execute(
                            select(Notification.status, func.count()).group_by(Notification.status)
                        ).all()
                    )
                )
                records = s.execute(select(func.count()).select_from(LicenseRecord)).scalar_one()
                letters = s.execute(
                    select(DeadLetter.id, DeadLetter.stage, DeadLetter.reason)
                ).all()
        except Exception:
            return None
        now = time.monotonic()
        for letter_id, stage, reason in letters:
            if letter_id not in self._dead_seen:
                self._dead_seen.add(letter_id)
                self.dead_letter_times.append((stage, reason, now))
        return Counter({str(k): v for k, v in statuses.items()}), records

    def settle(
        self, expected: set[str], seen: Counter[str], read_new: Callable[[], None]
    ) -> tuple[bool, float | None, str]:
        """Wait until settled; (settled, when everything was first complete, why it ended)."""
        plan = self.plan
        deadline = time.monotonic() + plan.settle_deadline_s
        last_change = time.monotonic()
        snapshot: object = None
        complete_since: float | None = None
        last_say = 0.0
        while True:
            read_new()
            state = self.db_state()
            now = time.monotonic()
            relay_depth = None
            with contextlib.suppress(Exception):
                relay_depth = queue_depth(self.settings, self.settings.relay_queue)
            current = (
                sum(seen.values()),
                None if state is None else tuple(sorted(state[0].items())),
                None if state is None else state[1],
                relay_depth,
            )
            if current != snapshot:
                snapshot, last_change = current, now
            pending = None if state is None else sum(state[0].get(s, 0) for s in PENDING)
            complete = pending == 0 and expected.issubset(seen)
            if complete:
                complete_since = complete_since or now
                if now - complete_since >= plan.quiet_s:
                    return True, complete_since, "settled"
            else:
                complete_since = None
            if now - last_say >= 10:
                last_say = now
                got = len(expected.intersection(seen))
                self.say(
                    f"{self.elapsed()} settling: {got}/{len(expected)} expected SMS seen, "
                    f"{pending if pending is not None else '?'} rows pending, "
                    f"relay queue {relay_depth if relay_depth is not None else '?'}"
                )
            if now - last_change > plan.stall_s:
                return False, None, f"nothing moved for {plan.stall_s:g} s"
            if now > deadline:
                return False, None, f"deadline of {plan.settle_deadline_s:g} s passed"
            time.sleep(1.0)


def _settings(
    plan: ChaosPlan,
    *,
    namespace: str,
    data_dir: Path,
    amqp_url: str,
    database_url: str,
    kafka_url: str,
    fake: LateTwilio,
    now: dt.datetime,
    epoch: float,
) -> tuple[Settings, dict[str, str]]:
    """The run's settings, and the environment that makes every child load exactly them."""
    ports = free_ports()
    settings = load_settings(
        namespace=namespace,
        data_dir=data_dir,
        amqp_url=amqp_url,
        kafka_url=kafka_url,
        kafka_broker_kind="tansu",
        database_url=database_url,
        metrics_host="127.0.0.1",
        **ports,
        twilio_account_sid=fake.account_sid,
        twilio_auth_token=fake.auth_token,
        twilio_from=TWILIO_FROM,
        twilio_api_base=fake.base_url,
        # The fault run proves exactly-once, not Twilio's declared 50 a second: unpaced.
        send_rates={"twilio": 0},
        # Callbacks are asked of Twilio only with a public URL; here it is the api itself.
        public_base_url=f"http://127.0.0.1:{ports['api_port']}" if plan.callbacks else "",
        # One clock for every process, restarted ones included.
        timezone=TIMEZONE,
        now=now,
        now_epoch=epoch,
        # The hour of the run and the holders' other SMS never matter.
        quiet_hours="off",
        sms_daily_cap=0,
        sweep_interval_s=plan.sweep_interval_s,
        sweep_sending_after_s=plan.sweep_sending_after_s,
        sweep_created_after_s=plan.sweep_created_after_s,
        worker_threads=plan.worker_threads,
    )
    env = child_env(settings)
    # Set explicitly as well: a build without the setting ignores it instead of failing.
    env["GOVNOTIFY_RENEWAL_SETTLE_S"] = str(plan.renewal_settle_s)
    return settings, env


def run_chaos(
    plan: ChaosPlan,
    *,
    amqp_url: str,
    database_url: str,
    namespace: str | None = None,
    workdir: Path,
    say: Callable[[str], None] = print,
) -> ChaosResult:
    """Run ``plan`` against RabbitMQ at ``amqp_url`` and the (migrated, empty) database at
    ``database_url``; everything it starts is stopped by pid before it returns or raises.

    The database and the RabbitMQ broker are the caller's: the run deletes its namespace's
    queues but drops nothing else. Logs go to ``workdir/logs``.
    """
    started = time.monotonic()
    namespace = namespace or f"chaos{uuid.uuid4().hex[:10]}"
    log_dir = workdir / "logs"
    rng = random.Random(plan.seed)
    schedule = fault_schedule(plan, rng)
    now = plan.now or dt.datetime.now(ZoneInfo(TIMEZONE)).replace(microsecond=0)
    today = now.astimezone(ZoneInfo(TIMEZONE)).date()
    registry = generate_registry(
        plan.licenses, today, seed=plan.seed, prefix="CHAOS", renew_share=0.0, revoke_share=0.0
    )
    waves = _split(registry.events, len(schedule) + 1)
    wave_ids = [[e.key for e in wave] for wave in waves]
    say(
        f"fault run: {plan.licenses:,} licenses in {len(waves)} waves; faults in order: "
        + ", ".join(schedule)
    )

    with contextlib.ExitStack() as stack:
        tansu_box: list[TansuProcess] = [start_tansu(free_port(), log_dir / "tansu.log")]
        stack.callback(lambda: stop_pid(tansu_box[0].pid))
        fake = LateTwilio(
            late_share=plan.late_share, late_after_s=client_timeout_s() + 2.0, seed=plan.seed
        ).start()
        stack.callback(fake.stop)
        settings, env = _settings(
            plan,
            namespace=namespace,
            data_dir=workdir / "data",
            amqp_url=amqp_url,
            database_url=database_url,
            kafka_url=tansu_box[0].url,
            fake=fake,
            now=now,
            # The clock reads `now` at this instant, in every process, restarted ones too.
            epoch=time.time() if plan.now else now.timestamp(),
        )
        expected = due_sms(registry.final, today, settings.renewal_sms_offsets)
        say(f"{len(expected):,} licenses have their SMS reminder due on {today}")
        create_topics(settings.kafka_bootstrap, settings.topics, settings.kafka_partitions)
        stack.callback(
            _quietly, say, "delete the run's RabbitMQ queues", delete_namespace, settings
        )
        fleet = Fleet(settings, env, log_dir, say)
        stack.callback(fleet.stop)
        poster = CallbackPoster(fake)
        if plan.callbacks:
            poster.start()
            stack.callback(poster.stop)
        fleet.start_all()
        up = fleet.wait_ready(COMPONENTS, plan.ready_timeout_s)
        if up is None:
            raise RuntimeError(f"components not ready after start-up: {fleet.not_ready()}")
        run = _Run(
            plan,
            settings,
            fleet,
            fake,
            tansu_box[0],
            say,
            today=today,
            expected=expected,
            waves=wave_ids,
        )
        say(f"{run.elapsed()} all five components ready in {up:.1f} s")

        seen: Counter[str] = Counter()
        first_sms_at: dict[str, float] = {}
        cursor = [0]

        def read_new() -> None:
            with fake._cond:
                new = fake.messages[cursor[0] :]
            cursor[0] += len(new)
            now = time.monotonic()
            for message in new:
                match = _LICENSE_IN_BODY.search(message["body"])
                license_id = match.group(1) if match else "?"
                seen[license_id] += 1
                first_sms_at.setdefault(license_id, message.get("arrived", now))

        t_first = time.monotonic()
        try:
            for i, kind in enumerate(schedule):
                published_at = time.monotonic()
                run.publish(waves[i])
                run.wait_drained()
                time.sleep(run.rng.uniform(*plan.gap_s))
                run.strike(kind, i, published_at)
                tansu_box[0] = run.tansu
                read_new()
                run.db_state()
            last_wave_at = time.monotonic()
            run.publish(waves[-1])
            say(f"{run.elapsed()} last wave published; waiting for the pipeline to settle")
            settled, settled_at, reason = run.settle(set(expected), seen, read_new)
        finally:
            tansu_box[0] = run.tansu
        read_new()
        state = run.db_state()
        statuses = state[0] if state else Counter()
        dead_letters, reasons = _ledger_totals(settings)
        result = ChaosResult(
            plan=plan,
            expected=expected,
            waves=wave_ids,
            seen=seen,
            first_sms_at=first_sms_at,
            faults=run.faults,
            exits=list(fleet.exits),
            statuses=statuses,
            dead_letters=dead_letters,
            dead_letter_times=run.dead_letter_times,
            started_at=t_first,
            last_wave_at=last_wave_at,
            settled=settled,
            settled_at=settled_at,
            end_reason=reason,
            events_published=run.published,
            publish_retries=run.publish_retries,
            late_answers=fake.late_answers,
            confirmed_by_sweep=reasons.get("confirmed by sweep", 0),
            status_reasons=Counter({str(k): v for k, v in reasons.items()}),
            callbacks={
                "answered": poster.answered,
                "retried": poster.retried,
                "lost": poster.lost,
                "not 2xx": sum(poster.refused_status.values()),
                "waiting": poster.pending(),
            },
            runtime_s=0.0,
            log_dir=log_dir,
        )
    result.runtime_s = time.monotonic() - started
    return result


def _ledger_totals(
    settings: Settings,
) -> tuple[dict[tuple[str, str], tuple[int, int]], Counter[str | None]]:
    with session(settings) as s:
        letters = s.execute(
            select(
                DeadLetter.stage, DeadLetter.reason, func.count(), func.sum(DeadLetter.count)
            ).group_by(DeadLetter.stage, DeadLetter.reason)
        ).all()
        reasons = Counter(
            dict(
                s.execute(
                    select(Notification.status_reason, func.count()).group_by(
                        Notification.status_reason
                    )
                ).all()
            )
        )
    letters_by = {(stage, reason): (rows, int(n or 0)) for stage, reason, rows, n in letters}
    return letters_by, reasons


def _quietly(
    say: Callable[[str], None], what: str, fn: Callable[..., object], *args: object
) -> None:
    try:
        fn(*args)
    except Exception as exc:
        say(f"clean-up failed: {what}: {type(exc).__name__}: {exc}")
