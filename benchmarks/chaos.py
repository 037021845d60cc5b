"""``make chaos`` (``python -m benchmarks.chaos``): the fault run you can repeat.

It publishes a registry of 100,000 licenses (``--licenses``) of which about 7% have their SMS
reminder due on the pinned day, runs relay, stream, worker, scheduler and api against the real
RabbitMQ and PostgreSQL, a Tansu of its own and a fake Twilio that answers 2% of the messages
after the client's timeout, and meanwhile kills the components with SIGKILL (20 kills), restarts
Tansu empty once, and RabbitMQ and PostgreSQL once each (``--no-service-restarts`` skips these
two: they are the machine's shared services). Then it prints, per kind of fault and in total,
what was expected and what was seen, as markdown tables. Exit status 0 only when every due
license got exactly one SMS and the pipeline settled.

    python -m benchmarks.chaos --licenses 100000 --seed 2026
    python -m benchmarks.chaos --licenses 3000 --kills 5 --no-service-restarts

How the run works: :mod:`benchmarks.chaos_run`; the processes and restarts:
:mod:`benchmarks.chaos_fleet`; the fake Twilio: :mod:`benchmarks.chaos_twilio`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.chaos_fleet import COMPONENTS
from benchmarks.chaos_run import (
    FAULT_LABELS,
    NOW,
    ChaosPlan,
    ChaosResult,
    WaveOutcome,
    run_chaos,
)
from benchmarks.common import AMQP_URL, PG_ADMIN_URL
from tests.support import create_database, drop_database

__all__ = ["main", "report"]


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _outcome_row(
    label: str, times: str, ready: str, outcome: WaveOutcome, letters: int, last: float | None
) -> list[str]:
    return [
        label,
        times,
        ready,
        f"{outcome.expected:,}",
        f"{outcome.sent:,}",
        f"{outcome.missing:,}",
        f"{outcome.duplicated:,}",
        str(letters),
        "never" if last is None else _fmt_s(last),
    ]


def fault_table(result: ChaosResult) -> list[str]:
    """Per kind of fault: how often, how long until ready again, and how the due SMS of the
    waves it struck ended (expected: all sent once, none missing or duplicated)."""
    rows = []
    faults = result.faults
    for kind in result.kinds():
        mine = [f for f in faults if f.kind == kind]
        median, worst, late = result.recovery(kind)
        outcome = result.wave_outcome([f.wave for f in mine], 0.0)
        done = [result.wave_outcome([f.wave], f.wave_published_at).last_sms_s for f in mine]
        letters = 0
        for f in mine:
            # Until the next fault struck, or the last wave went out.
            ends = [g.at for g in faults if g.at > f.at] + [result.last_wave_at]
            letters += result.dead_letters_between(f.at, min(ends))
        rows.append(
            _outcome_row(
                FAULT_LABELS[kind],
                str(len(mine)),
                f"{_fmt_s(median)} / {_fmt_s(worst)}" + (f" ({late} not ready)" if late else ""),
                outcome,
                letters,
                None if None in done else max(d for d in done if d is not None),
            )
        )
    tail = result.wave_outcome([len(result.waves) - 1], result.last_wave_at)
    letters = result.dead_letters_between(result.last_wave_at, None)
    rows.append(_outcome_row("none (the last wave)", "-", "-", tail, letters, tail.last_sms_s))
    return _table(
        [
            "fault",
            "times",
            "ready again, s (median / max)",
            "due SMS in the waves it struck",
            "sent",
            "missing",
            "duplicated",
            "dead letters",
            "its wave's last SMS, s after publishing (max)",
        ],
        rows,
    )


def totals_table(result: ChaosResult) -> list[str]:
    letters = sum(rows for rows, _count in result.dead_letters.values())
    settle = (
        f"{_fmt_s(result.time_to_settle_s)} s"
        if result.settled
        else f"not settled ({result.end_reason})"
    )
    return _table(
        [
            "expected SMS",
            "SMS sent",
            "missing",
            "duplicated",
            "unexpected",
            "dead letters",
            "time to settle",
        ],
        [
            [
                f"{len(result.expected):,}",
                f"{result.sms_sent:,}",
                f"{len(result.missing):,}",
                f"{len(result.duplicated):,}",
                f"{len(result.unexpected):,}",
                str(letters),
                settle,
            ]
        ],
    )


def report(result: ChaosResult) -> str:
    """The run's results as markdown: the per-fault table, the totals, and what else was seen."""
    plan = result.plan
    counts = _counts(result)
    restarts = [f"{n} {FAULT_LABELS[k]}" for k, n in counts.items() if k not in COMPONENTS]
    kills = sum(counts.get(k, 0) for k in COMPONENTS)
    lines = [
        f"Fault run, {dt.date.today()}: {plan.licenses:,} licenses ({result.events_published:,} "
        f"events published), seed {plan.seed}; {kills} kills"
        + (f", {', '.join(restarts)}" if restarts else "")
        + f"; {plan.late_share:.0%} "
        f"of Twilio creates answered after the client's timeout; run time "
        f"{result.runtime_s:,.0f} s.",
        "",
        *fault_table(result),
        "",
        *totals_table(result),
        "",
    ]
    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(result.statuses.items()))
    lines.append(f"- Notification rows at the end: {statuses or 'none'}.")
    lines.append(
        f"- Twilio answers after the client's timeout: {result.late_answers:,}; rows the sweep "
        f"confirmed sent (no second SMS): {result.confirmed_by_sweep:,}."
    )
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(result.status_reasons.items()))
    lines.append(f"- Notification rows by status reason: {reasons or 'none'}.")
    if plan.callbacks:
        cb = result.callbacks
        lines.append(
            f"- Status callbacks: {cb['answered']:,} answered ({cb['not 2xx']} not 2xx), "
            f"{cb['retried']:,} posts retried while the api was away, {cb['lost']} given up, "
            f"{cb['waiting']} still waiting at the end."
        )
    if result.dead_letters:
        shown = ", ".join(
            f"{stage}/{reason} {rows} ({count} seen)"
            for (stage, reason), (rows, count) in sorted(result.dead_letters.items())
        )
        lines.append(f"- Dead letters by stage/reason: {shown}.")
    if result.exits:
        by: dict[str, list[str]] = {}
        for e in result.exits:
            by.setdefault(e.component, []).append(str(e.returncode))
        shown = "; ".join(
            f"{c} ×{len(codes)} (status {', '.join(codes)})" for c, codes in by.items()
        )
        lines.append(f"- Components that exited by themselves (restarted after 1 s): {shown}.")
    else:
        lines.append("- No component exited by itself: every restart was one of the kills.")
    for f in result.faults:
        if f.detail and f.kind not in COMPONENTS:
            lines.append(f"- {FAULT_LABELS[f.kind]}: {f.detail}.")
    if result.missing:
        lines.append(
            f"- Missing ({len(result.missing)}), first ones: {', '.join(result.missing[:8])}."
        )
    if result.duplicated:
        shown = ", ".join(f"{k} ×{n}" for k, n in list(result.duplicated.items())[:8])
        lines.append(f"- Duplicated ({len(result.duplicated)}), first ones: {shown}.")
    if result.unexpected:
        lines.append(f"- SMS for licenses not due: {', '.join(result.unexpected[:8])}.")
    lines.append(
        "- Ready again: for a kill, until the restarted component's /readyz answers 200 (the "
        "pause before the restart included); for Tansu, RabbitMQ and PostgreSQL, until every "
        "component is ready and a probe license published after the restart got its SMS. "
        "The registry is published in waves, one just before each fault: a fault's row counts "
        "the SMS due for the licenses of the waves it struck."
    )
    return "\n".join(lines)


def _counts(result: ChaosResult) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in result.faults:
        out[f.kind] = out.get(f.kind, 0) + 1
    return out


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or "127.0.0.1"
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--licenses", type=int, default=100_000, help="registry size (default 100,000)")
    p.add_argument("--seed", type=int, default=2026, help="registry, fault order, pauses, late SMS")
    p.add_argument(
        "--now",
        default=NOW.isoformat(),
        help=f"the pinned clock's start (default {NOW.isoformat()}); 'start': the run's start",
    )
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs over the five components")
    p.add_argument("--tansu-restarts", type=int, default=1, help="empty Tansu restarts (default 1)")
    p.add_argument(
        "--no-service-restarts",
        action="store_true",
        help="do not restart the machine's RabbitMQ and PostgreSQL (shared with others)",
    )
    p.add_argument(
        "--no-recreate-topics",
        action="store_true",
        help="after an empty Tansu, leave the topics to auto-creation",
    )
    p.add_argument("--late-share", type=float, default=0.02, help="Twilio answers after timeout")
    p.add_argument("--no-callbacks", action="store_true", help="no status callbacks to the api")
    p.add_argument(
        "--gap-max",
        type=float,
        default=4.0,
        help="a fault strikes 0..this many seconds after the relay took its wave (default 4)",
    )
    p.add_argument("--worker-threads", type=int, default=8)
    p.add_argument(
        "--settle-deadline", type=float, default=1200.0, help="seconds, after the last wave"
    )
    p.add_argument(
        "--stall", type=float, default=90.0, help="give up after this long without change"
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the logs of a successful run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (_loopback(AMQP_URL) and _loopback(PG_ADMIN_URL)):
        print("the fault run only talks to loopback RabbitMQ and PostgreSQL", file=sys.stderr)
        return 2
    plan = ChaosPlan(
        licenses=args.licenses,
        seed=args.seed,
        now=None if args.now == "start" else dt.datetime.fromisoformat(args.now),
        kills=args.kills,
        tansu_restarts=args.tansu_restarts,
        rabbitmq_restart=not args.no_service_restarts,
        postgres_restart=not args.no_service_restarts,
        recreate_topics=not args.no_recreate_topics,
        late_share=args.late_share,
        callbacks=not args.no_callbacks,
        worker_threads=args.worker_threads,
        gap_s=(0.0, args.gap_max),
        settle_deadline_s=args.settle_deadline,
        stall_s=args.stall,
    )
    # SIGTERM unwinds like Ctrl-C: every process the run started is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run_id = uuid.uuid4().hex[:10]
    workdir = Path(tempfile.mkdtemp(prefix="govnotify-chaos-"))
    started = time.monotonic()

    def say(line: str) -> None:
        print(line, flush=True)

    result: ChaosResult | None = None
    db_url = create_database(PG_ADMIN_URL, f"chaos_{run_id}")
    try:
        result = run_chaos(
            plan,
            amqp_url=AMQP_URL,
            database_url=db_url,
            namespace=f"chaos{run_id}",
            workdir=workdir,
            say=say,
        )
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - started:.0f} s; everything stopped")
        return 130
    finally:
        failed = result is None or not (result.ok and result.settled)
        if failed:
            # What went wrong is in the journal, the notifications and the scheduled jobs.
            print(f"database kept for a look: {db_url}", file=sys.stderr)
        else:
            try:
                drop_database(PG_ADMIN_URL, db_url)
            except Exception as exc:
                print(
                    f"clean-up failed: drop database: {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )
        if failed or args.keep_logs:
            print(f"logs kept in {workdir / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(report(result))
    return 0 if result.ok and result.settled else 1


if __name__ == "__main__":
    sys.exit(main())
