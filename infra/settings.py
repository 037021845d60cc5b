"""Configuration from ``GOVNOTIFY_*`` environment variables, validated at start.

Every number the product talks about (offsets, ports, partition counts) is a setting with a
documented default. A bad value fails at start with :class:`SettingsError`, whose message names
the environment variable to fix.

Secrets (the passwords inside ``GOVNOTIFY_AMQP_URL``, ``_DATABASE_URL``, ``_KAFKA_URL`` and
``_SMTP_URL``; ``GOVNOTIFY_TWILIO_AUTH_TOKEN``; ``GOVNOTIFY_GATEWAY_SECRET``) never show in
``repr(settings)``, ``str(settings)``, ``settings.model_dump()`` or ``model_dump_json()``, nor in a
validation error (settings objects end up in test failures, tracebacks and logs). The URLs are
shown with the password as ``***``; the token and the secret not at all. The attributes stay
plain ``str`` so every caller reads the value it needs as before (``settings.amqp_url`` is what
pika is given); only the displays are masked. ``model_dump()`` gives each secret as a
:class:`pydantic.SecretStr` (``.get_secret_value()`` for the value), which ``Settings(**dump)``
accepts back, and :meth:`Settings.env` hands the real values to child processes.

Profiles: by default (``GOVNOTIFY_ENV=development``) a missing provider, database, Kafka or
staff directory falls back on a sandbox or a local stand-in, and :func:`warn_sandboxes` names
them in one warning line at start. ``GOVNOTIFY_ENV=production`` refuses to start with any
(:meth:`Settings.fallbacks`), listing every variable to set in one :class:`SettingsError`.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from infra.quiet_hours import QuietHours
from schemas.addresses import parse_address
from schemas.staff import StaffDirectoryError, load_staff_directory

__all__ = [
    "EMBEDDED_KAFKA_PORT",
    "SECRET_FIELDS",
    "Fallback",
    "Settings",
    "SettingsError",
    "env_name",
    "get_settings",
    "is_loopback",
    "load_settings",
    "redact_url",
    "warn_sandboxes",
]

#: Loopback port of the embedded Tansu broker when ``GOVNOTIFY_KAFKA_URL`` is not set.
EMBEDDED_KAFKA_PORT = 19092

# Shapes of the provider credentials, checked when the settings are read so that a process
# that could not send stops at start (a worker would otherwise claim every message and fail
# each). The notifiers check the same shapes in their __init__ (TwilioSMSNotifier's class
# attributes); settings, on the floor below, cannot import them.
#: Twilio Account SID: "AC" and 32 hex digits (the pattern in Twilio's API reference).
_TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
#: Twilio Auth Token: 32 hex digits.
_TWILIO_AUTH_TOKEN = re.compile(r"[0-9a-fA-F]{32}")
#: Twilio sender: an E.164 number ("+", 7 to 15 digits) or a Messaging Service SID.
_TWILIO_SENDER = re.compile(r"\+[1-9][0-9]{6,14}|MG[0-9a-fA-F]{32}")
#: Providers a route may name.
_SMS_PROVIDERS = ("twilio", "gateway", "sandbox")
#: Senders a send rate may name: the SMS providers and the staff channels ("sandbox" is both
#: sandboxes).
_PACED_SENDERS = (*_SMS_PROVIDERS, "webhook", "email")
#: Settings that are URLs which may carry a password: shown with the password as ``***``.
_SECRET_URLS = ("amqp_url", "database_url", "kafka_url", "smtp_url")
#: Every setting holding a secret: never shown whole outside the attribute itself.
SECRET_FIELDS = (*_SECRET_URLS, "twilio_auth_token", "gateway_secret", "outcome_signing_key")
#: What a hidden secret (or a URL that cannot be parsed) is shown as.
_HIDDEN = "**********"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; several ``;``/``,``-separated
    URLs (the Kafka form) are redacted each. A URL that cannot be parsed is hidden whole."""

    def one(part: str) -> str:
        try:
            parts = urlsplit(part)
            password = parts.password
        except ValueError:
            return _HIDDEN
        if password is None:
            return part
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()

    return re.sub(r"[^;,]+", lambda m: one(m.group(0)), url)


class _Secret(SecretStr):
    """A secret in ``model_dump()``: shown as ``**********``, its value via get_secret_value."""


class _SecretUrl(SecretStr):
    """A URL secret in ``model_dump()``: shown with its password as ``***``."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


def _shown(name: str, value: str) -> str:
    """How secret setting ``name`` with ``value`` is displayed."""
    if not value:
        return value
    return redact_url(value) if name in _SECRET_URLS else _HIDDEN


class SettingsError(Exception):
    """Raised when a GOVNOTIFY_* setting is missing or invalid; the message names it."""


class Fallback(NamedTuple):
    """A development fall-back: what :meth:`Settings.fallbacks` finds, and production refuses."""

    #: The environment variable(s) to set.
    variable: str
    #: Why production refuses it, and what to set instead (never a secret).
    problem: str
    #: How development's start-up warning names it when it is a sandbox (something that looks
    #: like sending and is not); empty for what is merely unfit for production.
    sandbox: str = ""


class Settings(BaseSettings):
    """All of govnotify's configuration. Field ``x`` is read from ``GOVNOTIFY_X`` (the one
    exception: ``environment`` from ``GOVNOTIFY_ENV``).

    Every field carries a ``#:`` comment: it is the "meaning" column of the README's settings
    table, which :mod:`infra.settings_doc` generates from this class (a unit test keeps the two
    equal, so a setting without its comment or its README line fails CI).
    """

    # hide_input_in_errors: a ValidationError's text would otherwise quote the bad value (a
    # mistyped token, a URL with its password). populate_by_name: ``environment`` is read from
    # GOVNOTIFY_ENV (an alias), and ``Settings(environment=…)`` must still work for callers.
    model_config = SettingsConfigDict(
        env_prefix="GOVNOTIFY_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        populate_by_name=True,
    )

    #: ``production`` refuses to start with any development fall-back (sandbox SMS or e-mail,
    #: SQLite, the embedded Kafka, the bundled staff directory, a relative data folder, a
    #: loopback metrics host, RabbitMQ's guest user) and names the variable to set for each;
    #: ``development`` starts with them and logs one warning line naming the sandboxes.
    # The field cannot be called ``env``: Settings.env() hands the settings to child processes.
    environment: Literal["development", "production"] = Field(
        "development", validation_alias="GOVNOTIFY_ENV"
    )
    #: Prefix of every exchange, queue, topic and consumer group; tests use a unique one each.
    namespace: str = Field("govnotify", pattern=r"^[a-z][a-z0-9_-]{0,40}$")
    #: Folder for the SQLite default database, pid files, sandbox outbox and metrics files
    #: (an absolute path in production).
    data_dir: Path = Path(".govnotify")

    #: RabbitMQ: ``amqp://user:password@host:5672/vhost`` or ``amqps://…`` (shown with its
    #: password as ``***``, as are the other URLs; production refuses the guest user).
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    #: ``kafka://host:port[;kafka://host2:port]``. Empty: the embedded Tansu broker on
    #: 127.0.0.1:19092 (development only).
    kafka_url: str = ""
    #: Partitions of every topic (pre-created).
    kafka_partitions: int = Field(4, ge=1, le=256)
    #: ``tansu`` (the embedded broker; works around its ListOffsets answer) or ``kafka`` for a
    #: real cluster.
    kafka_broker_kind: Literal["tansu", "kafka"] = "tansu"
    #: Replicas of every topic ``services up`` creates on a real cluster (``kafka`` kind; 1 on
    #: Tansu); existing topics are left as they are.
    kafka_replication_factor: int = Field(3, ge=1, le=7)
    #: ``min.insync.replicas`` of every topic on a real cluster (1 on Tansu): with acks=all a
    #: write is acknowledged only once this many replicas have it, so one broker lost loses
    #: nothing.
    kafka_min_insync_replicas: int = Field(2, ge=1, le=7)
    #: Longest a stream's fetch waits for records, in ms (Faust fixes 1,500). On a real Kafka it
    #: is only how often an idle consumer asks again; Tansu holds a fetch over several
    #: partitions this long even when a record arrives, so there it is the stream's idle
    #: latency.
    kafka_fetch_max_wait_ms: int = Field(100, ge=10, le=30_000)
    #: The stream's Kafka group session timeout, in seconds (heartbeats every third of it).
    #: Empty: 4 on Tansu, 10 on a real cluster. A group join waits about half of it, and Tansu
    #: keeps a member that left (or was killed) until its session ends, so a stream started
    #: again within it joins twice: 4 s makes a (re)started stream ready in ~6 s rather than
    #: 8–22. A real cluster refuses less than its ``group.min.session.timeout.ms`` (6 s by
    #: default) and ends a member that leaves at once; longer rides out pauses without a
    #: rebalance.
    kafka_session_timeout_s: float | None = Field(None, ge=1, le=300)
    #: How often the relay checks that Kafka still holds its epoch marker (a broker that came
    #: back empty lost every event not yet applied; the relay re-drives them from the journal).
    kafka_epoch_check_s: float = Field(5.0, gt=0)
    #: ``quorum``: every govnotify queue (work queues with their ``.DQ``/``.XQ``, relay queue,
    #: ``events.dead``) is a replicated quorum queue (a single-node one works too). RabbitMQ
    #: refuses to change the type of an existing queue, so drain and delete a namespace's
    #: queues (or use a new namespace) to switch.
    rabbitmq_queue_type: Literal["classic", "quorum"] = "classic"
    #: ``postgresql+psycopg://user@host/db`` (required in production). Empty: a SQLite file
    #: under the data folder.
    database_url: str = ""

    #: Twilio Account SID (``AC`` + 32 hex). Twilio needs all three of SID, token and sender,
    #: or none; with no SMS provider at all, SMS go to the sandbox outbox file.
    twilio_account_sid: str = ""
    #: Twilio Auth Token (32 hex); never shown.
    # Secrets stay out of repr(): settings objects show up in test failures and tracebacks.
    twilio_auth_token: str = Field("", repr=False)
    #: Twilio sender: an E.164 number or a Messaging Service SID (``MG`` + 32 hex).
    twilio_from: str = ""
    #: Overrides https://api.twilio.com, for a sandbox or a test fake.
    twilio_api_base: str = ""

    #: The second SMS provider: a mainland-style HTTP gateway (template id + parameters + an
    #: HMAC-SHA256 signature), enabled when its URL is set: https, or http only to a loopback
    #: host; it then needs its key id, secret and ``_TEMPLATES`` or ``_GENERIC_TEMPLATE``.
    gateway_url: str = ""
    #: The gateway's key id, sent with every request.
    gateway_key_id: str = ""
    #: The gateway's HMAC signing secret; never shown.
    gateway_secret: str = Field("", repr=False)
    #: The registered signature (签名) the gateway puts in front of every message.
    gateway_sign_name: str = "长安政务"
    #: JSON: our template name → the gateway's approved template id.
    gateway_templates: dict[str, str] = {}
    #: Template id approved as ``${content}``, for messages without a mapped template.
    gateway_generic_template: str = ""

    #: JSON provider order per flow, primary first, e.g. ``{"default": ["twilio", "gateway"],
    #: "green_channel": ["gateway", "twilio"]}``; the rest take over on transient failure and a
    #: provider named here must be configured. Empty: every configured provider, Twilio
    #: first; the sandbox when none is configured.
    sms_routes: dict[str, list[str]] = {}
    #: Sends per second per sender, kept by every worker process together, e.g.
    #: ``gateway=100,twilio=50,webhook=0.333`` (or the same as JSON). A staff rate
    #: (``webhook``, ``email``) applies to each robot or mailbox on its own. 0: not paced.
    #: A sender not named keeps its provider's declared limit (gateway 100, twilio 50,
    #: webhook robots 20 a minute); the sandboxes and e-mail are not paced unless named.
    send_rates: Annotated[dict[str, float], NoDecode] = {}
    #: A provider whose error rate over this window (seconds) passes the threshold leaves the
    #: rotation for the cool-down.
    circuit_window_s: float = Field(60.0, gt=0)
    #: Requests in the window before the circuit judges a provider's error rate.
    circuit_min_requests: int = Field(10, ge=1)
    #: Error rate over the window that takes a provider out of the rotation.
    circuit_error_rate: float = Field(0.5, gt=0, le=1)
    #: A provider out of the rotation stays out this long (seconds), then one trial request
    #: decides whether it is back.
    circuit_cooldown_s: float = Field(30.0, gt=0)

    #: Address of ``govnotify api``: provider status callbacks (public) and HTTP ingest.
    api_host: str = "127.0.0.1"
    #: Port of ``govnotify api``.
    api_port: int = Field(8400, ge=0, le=65535)
    #: The URL providers reach the api at (behind the city's proxy), e.g.
    #: https://notify.example.gov.cn: Twilio signs the full public URL, so validation needs
    #: it. Empty: no status callbacks are asked of Twilio, and the api checks signatures
    #: against http://api_host:api_port.
    public_base_url: str = ""

    #: Most simultaneous connections the api serves; more wait in the listen backlog.
    api_max_connections: int = Field(1000, ge=1, le=100_000)
    #: A connection that sent nothing for this long is closed, in seconds (a client trickling
    #: its request a byte at a time is the proxy's to cut off: every byte resets the timer).
    api_idle_timeout_s: int = Field(15, ge=1, le=3600)
    #: Largest request body ``POST /events`` accepts, in bytes (callbacks have a small fixed cap).
    api_max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: How far in the future an event's ``occurred_at`` may lie (clock skew allowed), seconds;
    #: an event further ahead is refused (``occurred_in_future``).
    max_clock_skew_s: int = Field(300, ge=0, le=86400)
    #: How long the relay trusts its copy of the sources registry before reading it again, in
    #: seconds (a source added or disabled takes effect within this; 0: read it for every
    #: event).
    sources_cache_s: float = Field(2.0, ge=0, le=3600)
    #: The master key of outcome webhooks (at least 32 characters); never shown. Each source's
    #: signing key is derived from it and the source's name (``govnotify sources
    #: outcome-key``), so the database holds no usable key. Empty: no source may have an
    #: outcome URL.
    outcome_signing_key: str = Field("", repr=False)
    #: Attempts at POSTing one outcome report before it becomes a dead letter.
    outcome_max_attempts: int = Field(8, ge=1, le=100)
    #: Longest one outcome POST may take (connect and read), in seconds.
    outcome_timeout_s: float = Field(5.0, gt=0, le=60)
    #: Wait before the second attempt at an outcome report, in seconds; doubled after each
    #: failure, at most an hour.
    outcome_retry_s: float = Field(30.0, gt=0, le=3600)

    #: Message bodies and recipients are purged after this many days (license holders once the
    #: license is this long expired); statistics are kept. The RabbitMQ dead-letter queues and
    #: the Kafka event topics keep messages as long, no longer.
    retention_days: int = Field(30, ge=1, le=3650)
    #: Local time of the nightly retention purge the scheduler runs (once a day, caught up
    #: after a missed night).
    retention_purge_at: dt.time = dt.time(2, 30)

    #: Time zone of all local dates, quiet hours and working days.
    timezone: str = "Asia/Shanghai"
    #: The settable clock: run "as of" this date (YYYY-MM-DD) instead of today (``--today``
    #: does the same).
    today: dt.date | None = None
    #: The settable clock, to the second: start at this instant (ISO 8601 with offset, e.g.
    #: ``2026-11-26T10:00:00+08:00``), then run.
    now: dt.datetime | None = None
    #: Unix time at which the settable clock read ``GOVNOTIFY_NOW``: processes started apart
    #: share one clock. Empty: each process's clock reads ``GOVNOTIFY_NOW`` when it starts.
    now_epoch: float | None = Field(None, gt=0)

    #: Prefix of every SMS.
    sms_signature: str = "【长安政务】"
    #: Days before expiry at which the holder gets a renewal SMS.
    renewal_sms_offsets: list[int] = [30, 7]
    #: Days before expiry at which the issuing department gets a call-list entry.
    renewal_call_offsets: list[int] = [3]
    #: A reminder due at once when a license event arrives waits this long (seconds) and is
    #: checked against the registry again, so an issue followed at once by a renewal or
    #: revocation texts nobody (0: send at once).
    renewal_settle_s: int = Field(60, ge=0, le=86400)
    #: Ingested events are kept in the journal (PostgreSQL) this many days after the stream
    #: applied them: the window for de-duplicating an upstream's repeats and for rebuilding
    #: stream state; the retention purge deletes older ones.
    journal_keep_days: int = Field(30, ge=1, le=3650)
    #: Local time of each working day's call-list digest to the issuing departments' heads.
    call_list_digest_at: dt.time = dt.time(9, 0)

    #: Non-critical citizen SMS are deferred out of these local hours (``off`` or empty
    #: disables).
    quiet_hours: str = "21:00-08:00"
    #: Non-critical SMS per citizen per local day; more are deferred to the next day (0: no cap).
    sms_daily_cap: int = Field(5, ge=0, le=100)
    #: Appended to every non-critical citizen SMS (Twilio allows no replies to mainland numbers).
    opt_out_hint: str = Field("退订请致电12345", max_length=30)
    #: Applicants this old count as elderly (高龄老人) even without the tag.
    elderly_age: int = Field(70, ge=50, le=120)
    #: The relay also sends green-channel alerts and acks straight to the alerts queue, so
    #: they do not wait behind the stream's backlog (the stream path stays as the fallback).
    green_fast_path: bool = True
    #: Also text the on-duty staff (critical SMS: no quiet hours, no cap) besides the webhook.
    green_channel_sms: bool = False
    #: Green-channel alerts not acknowledged within this (seconds) escalate to the hall
    #: supervisor.
    green_escalate_after_s: int = Field(600, ge=1)
    #: Survey invitation this long (seconds) after completion, then deferred out of quiet
    #: hours.
    survey_delay_s: int = Field(1800, ge=0)
    #: A key project's follow-up callback is due this long (seconds; 3 days) after completion.
    callback_due_after_s: int = Field(3 * 86400, ge=1)
    #: Rectification deadline, in Chinese working days after the negative review.
    rectification_workdays: int = Field(5, ge=1, le=60)
    #: Remind the department this many working days before the rectification deadline.
    rectification_remind_workdays: int = Field(1, ge=0, le=30)
    #: Record 基本满意 (3) for cases not rated within ``GOVNOTIFY_DEFAULT_RATING_AFTER_S``, as some
    #: provinces do (off by default).
    default_rating_enabled: bool = False
    #: How long (seconds; 7 days) a completed case waits for a rating before the default one.
    default_rating_after_s: int = Field(7 * 86400, ge=1)
    #: The shorter tumbling window of the live satisfaction rates, seconds (the other is one
    #: local day).
    satisfaction_window_s: int = Field(3600, ge=60)
    #: JSON file: service points, on-duty staff, supervisors, department heads, webhooks
    #: (robots, or ``{"url": "mailto:head@dept.gov.cn", "format": "email"}``); loaded and
    #: checked at start. Empty: the bundled sample, whose robots are sandboxes (development
    #: only).
    staff_directory: Path | None = None
    #: Mail server for staff reached by e-mail (a ``mailto:`` webhook in the staff directory):
    #: ``smtps://user:password@host:465``, or ``smtp://…:587`` with STARTTLS required (plain
    #: only on loopback). Empty: e-mails are written to the sandbox file (development only).
    smtp_url: str = Field("", repr=False)
    #: The From address of those e-mails.
    smtp_from: str = "govnotify@localhost"
    #: JSON holiday notices for years the chinesecalendar package does not know yet (the State
    #: Council publishes next year's each November): ``{"2027": {"holidays": ["2027-01-01",
    #: …], "workdays": ["2027-02-07", …]}}``. Empty: the package only.
    holidays_file: Path | None = None
    #: How often the scheduler hands due jobs to the work queues, seconds.
    scheduler_interval_s: float = Field(0.5, gt=0)

    #: The relay's ``/metrics``, ``/healthz`` and ``/readyz`` port.
    relay_metrics_port: int = Field(9301, ge=0, le=65535)
    #: The stream's ``/metrics``, ``/healthz`` and ``/readyz`` port.
    stream_metrics_port: int = Field(9302, ge=0, le=65535)
    #: The scheduler's ``/metrics``, ``/healthz`` and ``/readyz`` port.
    scheduler_metrics_port: int = Field(9303, ge=0, le=65535)
    #: The worker's ``/metrics``, ``/healthz`` and ``/readyz`` port.
    worker_metrics_port: int = Field(9191, ge=0, le=65535)
    #: The api's ``/metrics``, ``/healthz`` and ``/readyz`` port.
    api_metrics_port: int = Field(9304, ge=0, le=65535)
    #: RabbitMQ's own Prometheus endpoint (rabbitmq_prometheus plugin).
    rabbitmq_prometheus_port: int = Field(15692, ge=0, le=65535)
    #: Address the metrics ports listen on: in production one Prometheus on another host can
    #: reach (a loopback address is refused there).
    metrics_host: str = "127.0.0.1"

    #: dramatiq worker processes of one ``govnotify worker``.
    worker_processes: int = Field(1, ge=1, le=64)
    #: Threads of each dramatiq worker process.
    worker_threads: int = Field(8, ge=1, le=256)
    #: Renewal reminders handed to the work queues travel this many to a job, and a worker
    #: claims and records each job's messages together (1: one message a job, as before).
    job_batch_size: int = Field(100, ge=1, le=1000)
    #: Largest accepted event, in bytes, before it is dead-lettered as oversize.
    max_event_bytes: int = Field(64 * 1024, ge=1024)
    #: Transient provider errors are retried this many times on the retry queue, with
    #: exponential backoff.
    delivery_max_retries: int = Field(8, ge=0, le=50)
    #: The first retry's backoff, in milliseconds.
    delivery_min_backoff_ms: int = Field(1_000, ge=10)
    #: The longest backoff between retries, in milliseconds.
    delivery_max_backoff_ms: int = Field(300_000, ge=10)
    #: How often the stream checks for a new local day (the scan itself runs once per day).
    stream_scan_interval_s: float = Field(30.0, gt=0)
    #: Stream state is forgotten this many days after a license expired or a case's last event
    #: (rebuilt from the journal if the case comes back).
    stream_state_keep_days: int = Field(90, ge=1, le=3650)
    #: The scheduler runs the reconciliation sweep this often, seconds (0: only ``govnotify
    #: sweep``).
    sweep_interval_s: float = Field(60.0, ge=0)
    #: Rows in ``sending`` longer than this (seconds) are resolved by the sweep.
    sweep_sending_after_s: int = Field(300, ge=1)
    #: Rows in ``created`` longer than this (seconds) are re-queued by the sweep.
    sweep_created_after_s: int = Field(120, ge=1)
    #: Rows in ``sent`` with no final status from the provider after this (seconds; 72 h) are
    #: resolved by the sweep (asked of the provider, else ``unknown-failure``). Twilio reports
    #: within hours.
    sweep_sent_after_s: int = Field(72 * 3600, ge=1)

    # ---- secrets: plain str attributes, masked displays ---------------------------------------
    @field_validator(*SECRET_FIELDS, mode="before")
    @classmethod
    def _unwrap_secret(cls, value: object) -> object:
        # model_dump() gives secrets as SecretStr: Settings(**settings.model_dump()) takes them.
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    @field_serializer(*SECRET_FIELDS)
    def _dump_secret(self, value: str, info: SerializationInfo) -> str | SecretStr:
        if not value:
            return value
        if info.mode_is_json():
            return _shown(info.field_name or "", value)
        return _SecretUrl(value) if info.field_name in _SECRET_URLS else _Secret(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in SECRET_FIELDS and isinstance(value, str):
                yield name, _shown(name, value)
            else:
                yield name, value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str) -> str:
        QuietHours.parse(value)  # raises ValueError naming the expected form
        return value

    @field_validator("now")
    @classmethod
    def _aware_now(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-11-26T10:00:00+08:00")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("amqp", "amqps"):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    @field_validator("kafka_url")
    @classmethod
    def _kafka_scheme(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("kafka", "tcp"):
            raise ValueError("must look like kafka://host:port[;kafka://host2:port]")
        return value

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("twilio_api_base")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    # ---- providers: every shape checked here, so a process that could not send stops at
    # start, with the variable named, instead of claiming messages and failing each ------------
    @field_validator("twilio_account_sid")
    @classmethod
    def _twilio_account_sid(cls, value: str) -> str:
        if value and not _TWILIO_ACCOUNT_SID.fullmatch(value):
            raise ValueError(
                "must be the Account SID from the Twilio console: 'AC' and 32 hex digits, "
                f"34 characters (got {len(value)}{_whitespace_note(value)})"
            )
        return value

    @field_validator("twilio_auth_token")
    @classmethod
    def _twilio_auth_token(cls, value: str) -> str:
        # The token is never echoed, not even in part: this message reaches logs.
        if value and not _TWILIO_AUTH_TOKEN.fullmatch(value):
            raise ValueError(
                "must be the Auth Token from the Twilio console: 32 hex digits "
                f"(got {len(value)} characters{_whitespace_note(value)})"
            )
        return value

    @field_validator("twilio_from")
    @classmethod
    def _twilio_from(cls, value: str) -> str:
        if value and not _TWILIO_SENDER.fullmatch(value):
            raise ValueError(
                "must be an E.164 number ('+' and 7 to 15 digits, e.g. +8613800138000) or a "
                f"Messaging Service SID ('MG' and 32 hex digits){_whitespace_note(value)}"
            )
        return value

    @field_validator("gateway_url")
    @classmethod
    def _gateway_url(cls, value: str) -> str:
        if not value:
            return value
        # Every request carries the key id and an HMAC, and every message a citizen's number:
        # plain http only where the traffic never leaves the machine (a local relay, tests).
        try:
            parts = urlsplit(value)
            host = parts.hostname or ""
            port_ok = parts.port != 0
            scheme = parts.scheme
        except ValueError:  # a bad port or IPv6 literal
            host, port_ok, scheme = "", False, ""
        secure = scheme == "https" or (scheme == "http" and is_loopback(host))
        if not (host and port_ok and secure):
            raise ValueError(
                "must be an https:// URL with a host (http:// only to a loopback host: "
                "127.0.0.1, ::1 or localhost)"
            )
        return value.rstrip("/")

    @field_validator("outcome_signing_key")
    @classmethod
    def _outcome_key_long_enough(cls, value: str) -> str:
        # The message names the length only: a validation error must never echo a secret.
        if value and len(value) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("gateway_key_id", "gateway_secret")
    @classmethod
    def _gateway_credential(cls, value: str) -> str:
        # Blank is "not set" (the gateway's all-or-nothing rule below names what is missing).
        if value and any(c.isspace() for c in value):
            raise ValueError("must not be blank or contain whitespace")
        return value

    @field_validator("gateway_sign_name")
    @classmethod
    def _gateway_sign_name(cls, value: str) -> str:
        if not value.strip() or len(value) > 12 or "【" in value or "】" in value:
            raise ValueError(
                "must be the registered signature (签名), 1 to 12 characters, without 【】 "
                "(the gateway adds them)"
            )
        return value

    @field_validator("gateway_templates")
    @classmethod
    def _gateway_templates(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not name.strip() for name in value):
            raise ValueError("a template name is empty")
        bad = sorted(name for name, tid in value.items() if not _is_token(tid))
        if bad:
            raise ValueError(
                f"template ids must be non-blank, without whitespace: {', '.join(bad)}"
            )
        return value

    @field_validator("gateway_generic_template")
    @classmethod
    def _gateway_generic_template(cls, value: str) -> str:
        if value and not _is_token(value):
            raise ValueError("must be a template id, without whitespace")
        return value

    @field_validator("sms_routes")
    @classmethod
    def _routes(cls, value: dict[str, list[str]], info: ValidationInfo) -> dict[str, list[str]]:
        for flow, providers in value.items():
            if not providers:
                raise ValueError(f"route {flow!r} names no provider")
            if len(set(providers)) != len(providers):
                raise ValueError(f"route {flow!r} names a provider twice")
            unknown = [p for p in providers if p not in _SMS_PROVIDERS]
            if unknown:
                raise ValueError(
                    f"route {flow!r}: unknown provider {unknown[0]!r}; known: "
                    f"{', '.join(_SMS_PROVIDERS)}"
                )
        # Fields are validated in order and the providers' come first. One that failed its own
        # check is absent from info.data: that error is reported already, not repeated here.
        configured = {
            "twilio": info.data.get("twilio_account_sid", "invalid"),
            "gateway": info.data.get("gateway_url", "invalid"),
            "sandbox": "always",
        }
        for flow, providers in value.items():
            missing = [p for p in providers if not configured[p]]
            if missing:
                variables = {
                    "twilio": "GOVNOTIFY_TWILIO_ACCOUNT_SID, _AUTH_TOKEN and _FROM",
                    "gateway": "GOVNOTIFY_GATEWAY_URL, _KEY_ID and _SECRET",
                }[missing[0]]
                raise ValueError(
                    f"route {flow!r} names {missing[0]}, which is not configured "
                    f"(set {variables}, or leave it out of the route)"
                )
        return value

    @field_validator("send_rates", mode="before")
    @classmethod
    def _parse_send_rates(cls, value: object) -> object:
        # "gateway=100,twilio=50" as an operator writes it; JSON as Settings.env() hands it on.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("is not valid JSON") from None
        rates: dict[str, str] = {}
        for item in text.split(","):
            name, sep, rate = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(
                    f"{item.strip()!r} is not sender=rate (e.g. gateway=100,twilio=50)"
                )
            rates[name.strip()] = rate.strip()
        return rates

    @field_validator("send_rates")
    @classmethod
    def _send_rates(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(_PACED_SENDERS))
        if unknown:
            raise ValueError(f"unknown sender {unknown[0]!r}; known: {', '.join(_PACED_SENDERS)}")
        bad = sorted(name for name, rate in value.items() if not 0 <= rate < float("inf"))
        if bad:
            raise ValueError(
                f"rate of {bad[0]} must be a number of sends per second, 0 or more (0: not paced)"
            )
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str) -> str:
        # The same rules as EmailNotifier's; nothing of the URL is echoed (it holds a password).
        if not value:
            return value
        problems = []
        try:
            parts = urlsplit(value)
            host = parts.hostname
            port = parts.port
        except ValueError:
            raise ValueError(
                "must look like smtps://user:password@host:465 or smtp://user:password@host:587 "
                "(a port from 1 to 65535; percent-encode '/', '?', '#', '@' and ':' in the "
                "password)"
            ) from None
        if parts.scheme.lower() not in ("smtp", "smtps"):
            problems.append("must start with smtp:// or smtps://")
        if not host:
            problems.append("has no host")
        if port == 0:
            problems.append("port must be a number from 1 to 65535")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            problems.append(
                "takes no path, query or fragment (percent-encode '/', '?', '#' and '@' in the "
                "password)"
            )
        if (parts.username is None) != (parts.password is None):
            problems.append("must give both user and password, or neither")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("smtp_from")
    @classmethod
    def _smtp_from(cls, value: str) -> str:
        # The one address rule EmailNotifier applies.
        try:
            parse_address(value)
        except ValueError as exc:
            raise ValueError(
                f"must be one e-mail address, e.g. govnotify@changan.gov.cn or "
                f"长安政务 <govnotify@changan.gov.cn>: it {exc}"
            ) from None
        return value

    @field_validator("staff_directory", mode="before")
    @classmethod
    def _empty_staff_directory(cls, value: object) -> object:
        # An empty variable means the bundled sample (as documented), not the folder ".".
        return None if value == "" else value

    @field_validator("staff_directory")
    @classmethod
    def _staff_directory(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        # Read and validated in full: a mistyped number or webhook must stop the worker at
        # start, not lose an alert.
        try:
            load_staff_directory(value)
        except StaffDirectoryError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("renewal_sms_offsets", "renewal_call_offsets")
    @classmethod
    def _offsets(cls, value: list[int]) -> list[int]:
        if any(o < 0 or o > 3650 for o in value):
            raise ValueError("offsets are days before expiry, 0..3650")
        return sorted(set(value), reverse=True)

    @model_validator(mode="after")
    def _twilio_all_or_nothing(self) -> Settings:
        given = [
            bool(self.twilio_account_sid),
            bool(self.twilio_auth_token),
            bool(self.twilio_from),
        ]
        if any(given) and not all(given):
            missing = [
                name
                for name, ok in zip(
                    (
                        "GOVNOTIFY_TWILIO_ACCOUNT_SID",
                        "GOVNOTIFY_TWILIO_AUTH_TOKEN",
                        "GOVNOTIFY_TWILIO_FROM",
                    ),
                    given,
                    strict=True,
                )
                if not ok
            ]
            raise ValueError(f"Twilio needs all three credentials; missing {', '.join(missing)}")
        gateway = {
            "GOVNOTIFY_GATEWAY_URL": self.gateway_url,
            "GOVNOTIFY_GATEWAY_KEY_ID": self.gateway_key_id,
            "GOVNOTIFY_GATEWAY_SECRET": self.gateway_secret,
        }
        if any(gateway.values()) and not all(gateway.values()):
            missing = [name for name, value in gateway.items() if not value]
            raise ValueError(
                f"the SMS gateway needs all three settings; missing {', '.join(missing)}"
            )
        if self.gateway_url and not (self.gateway_templates or self.gateway_generic_template):
            raise ValueError(
                "the SMS gateway sends approved templates only: set GOVNOTIFY_GATEWAY_TEMPLATES "
                "or GOVNOTIFY_GATEWAY_GENERIC_TEMPLATE (with neither, nothing could be sent)"
            )
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                "GOVNOTIFY_KAFKA_MIN_INSYNC_REPLICAS must not exceed "
                "GOVNOTIFY_KAFKA_REPLICATION_FACTOR"
            )
        return self

    # ---- the production profile ---------------------------------------------------------------
    @model_validator(mode="after")
    def _production_profile(self) -> Settings:
        # Every fall-back at once, one line each: an operator fixes the environment file in one
        # go instead of restarting once per missing variable.
        if self.environment != "production":
            return self
        fallbacks = self.fallbacks()
        if fallbacks:
            lines = "\n".join(f"  {f.variable}: {f.problem}" for f in fallbacks)
            raise PydanticCustomError(
                "production_profile",
                "{summary}",
                {
                    "summary": f"GOVNOTIFY_ENV=production refuses to start with "
                    f"{len(fallbacks)} development fall-back{'s' if len(fallbacks) > 1 else ''}; "
                    f"set the variable named on each line:\n{lines}"
                },
            )
        return self

    def fallbacks(self) -> list[Fallback]:
        """What these settings fall back on that is fit for development only: sandboxes that
        look like sending, and places production cannot work from. Empty when none.

        ``GOVNOTIFY_ENV=production`` refuses to start with any; development starts and
        :func:`warn_sandboxes` names the sandboxes among them.
        """
        found: list[Fallback] = []
        if not (self.twilio_enabled or self.gateway_enabled):
            found.append(
                Fallback(
                    "GOVNOTIFY_TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _FROM or GOVNOTIFY_GATEWAY_URL, "
                    "_KEY_ID, _SECRET",
                    "no SMS provider is configured: every SMS would be written to the sandbox "
                    "outbox file and look sent",
                    "SMS go to the sandbox outbox",
                )
            )
        for flow, providers in sorted(self.sms_routes.items()):
            if "sandbox" in providers:
                found.append(
                    Fallback(
                        "GOVNOTIFY_SMS_ROUTES",
                        f"route {flow!r} names the sandbox, which only writes a file; name "
                        "configured providers only",
                        f"route {flow!r} sends SMS to the sandbox",
                    )
                )
        if not self.database_url or self.database_url.startswith("sqlite"):
            found.append(
                Fallback(
                    "GOVNOTIFY_DATABASE_URL",
                    "the database would be a SQLite file (one host, no concurrent writers); set "
                    "postgresql+psycopg://user:password@host:5432/govnotify",
                    "the database is SQLite",
                )
            )
        if self.kafka_embedded:
            found.append(
                Fallback(
                    "GOVNOTIFY_KAFKA_URL",
                    "empty means the embedded single-node Tansu on "
                    f"127.0.0.1:{EMBEDDED_KAFKA_PORT}; set kafka://host:port[;kafka://host2:port] "
                    "of the cluster",
                    "Kafka is the embedded Tansu",
                )
            )
        if self.staff_directory is None:
            found.append(
                Fallback(
                    "GOVNOTIFY_STAFF_DIRECTORY",
                    "empty means the bundled sample (fake staff, sandbox:// robots); set the path "
                    "of the city's staff directory JSON",
                    "staff alerts go to the bundled sample's sandbox robots",
                )
            )
        else:
            found.extend(self._staff_fallbacks(self.staff_directory))
        if not self.data_dir.is_absolute():
            found.append(
                Fallback(
                    "GOVNOTIFY_DATA_DIR",
                    f"{str(self.data_dir)!r} is relative to the folder each process starts in; "
                    "set an absolute path, e.g. /var/lib/govnotify",
                )
            )
        if is_loopback(self.metrics_host):
            found.append(
                Fallback(
                    "GOVNOTIFY_METRICS_HOST",
                    f"{self.metrics_host} is loopback: a Prometheus on another host cannot scrape "
                    "it; set this host's address (or 0.0.0.0)",
                )
            )
        if (urlsplit(self.amqp_url).username or "guest") == "guest":
            # No user in the URL is pika's default, guest as well. The URL is not echoed.
            found.append(
                Fallback(
                    "GOVNOTIFY_AMQP_URL",
                    "connects as RabbitMQ's guest user (well-known password, loopback only); set "
                    "amqps://user:password@host:5671/vhost with a user of govnotify's own",
                )
            )
        return found

    def _staff_fallbacks(self, path: Path) -> list[Fallback]:
        """Sandboxes inside a configured staff directory: ``sandbox://`` robots, and e-mail
        webhooks while no mail server is set."""
        # Read again: the field validator checked the file but keeps only its path. Webhook keys
        # are named, never their URLs (a robot URL carries its key).
        webhooks = load_staff_directory(path).webhooks
        found = []
        robots = sorted(k for k, w in webhooks.items() if w.url.startswith("sandbox:"))
        if robots:
            found.append(
                Fallback(
                    "GOVNOTIFY_STAFF_DIRECTORY",
                    f"webhooks {', '.join(robots)} are sandbox:// (written to a file, never "
                    "delivered); give them their robots' https:// URLs",
                    f"staff webhooks {', '.join(robots)} are sandboxes",
                )
            )
        mailboxes = sorted(k for k, w in webhooks.items() if w.format == "email")
        if mailboxes and not self.smtp_url:
            found.append(
                Fallback(
                    "GOVNOTIFY_SMTP_URL",
                    f"empty while webhooks {', '.join(mailboxes)} are e-mail: they would be "
                    "written to the sandbox file; set smtps://user:password@host:465",
                    "staff e-mail goes to the sandbox file",
                )
            )
        return found

    # ---- derived values -------------------------------------------------------------------
    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def kafka_embedded(self) -> bool:
        return not self.kafka_url

    @property
    def kafka_bootstrap(self) -> str:
        """``host:port[,host:port]`` for aiokafka, from the faust-style URL."""
        if self.kafka_embedded:
            return f"127.0.0.1:{EMBEDDED_KAFKA_PORT}"
        parts = [urlsplit(u.strip()).netloc for u in self.kafka_url.replace(",", ";").split(";")]
        return ",".join(p for p in parts if p)

    @property
    def topic_replication_factor(self) -> int:
        """Replicas per topic: the setting on a real cluster, 1 on the embedded broker."""
        return 1 if self.kafka_broker_kind == "tansu" else self.kafka_replication_factor

    @property
    def stream_session_timeout_s(self) -> float:
        """The stream's group session timeout: the setting, else 4 s on Tansu, 10 on Kafka."""
        if self.kafka_session_timeout_s is not None:
            return self.kafka_session_timeout_s
        return 4.0 if self.kafka_broker_kind == "tansu" else 10.0

    @property
    def topic_min_insync_replicas(self) -> int:
        """``min.insync.replicas`` per topic: the setting on a real cluster, 1 on Tansu."""
        return 1 if self.kafka_broker_kind == "tansu" else self.kafka_min_insync_replicas

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{hp}" for hp in self.kafka_bootstrap.split(","))

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'govnotify.db').resolve()}"

    @property
    def twilio_enabled(self) -> bool:
        return bool(self.twilio_account_sid)

    @property
    def gateway_enabled(self) -> bool:
        return bool(self.gateway_url)

    @property
    def api_public_url(self) -> str:
        """Base URL providers use to reach the api (what Twilio signs)."""
        return self.public_base_url or f"http://{self.api_host}:{self.api_port}"

    def route(self, flow: str) -> list[str]:
        """Providers for ``flow``, primary first."""
        if flow in self.sms_routes:
            return list(self.sms_routes[flow])
        if "default" in self.sms_routes:
            return list(self.sms_routes["default"])
        configured = [
            name
            for name, on in (("twilio", self.twilio_enabled), ("gateway", self.gateway_enabled))
            if on
        ]
        return configured or ["sandbox"]

    # ---- names ----------------------------------------------------------------------------
    @property
    def exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def relay_queue(self) -> str:
        return f"{self.namespace}.relay"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.events.dead"

    def topic(self, name: str) -> str:
        """Kafka topic: ``licenses``, ``cases``, ``evaluations`` (ingest), ``ratings`` or
        ``epoch``."""
        return f"{self.namespace}.{name}"

    @property
    def stream_topics(self) -> list[str]:
        """The topics the stream consumes; ``ratings`` re-keys evaluations by department/point."""
        return [self.topic(n) for n in ("licenses", "cases", "evaluations", "ratings")]

    @property
    def epoch_topic(self) -> str:
        """Holds the relay's epoch marker: a broker that lost its data has none."""
        return self.topic("epoch")

    @property
    def topics(self) -> list[str]:
        """Every topic to pre-create."""
        return [*self.stream_topics, self.epoch_topic]

    def queue(self, name: str) -> str:
        """dramatiq queue name for one kind of work."""
        return f"{self.namespace}.{name}"

    @property
    def work_queues(self) -> list[str]:
        """Every dramatiq queue, each with its ``.DQ`` (delays) and ``.XQ`` (dead letters)."""
        return [
            f"{self.queue(q)}{suffix}"
            for q in (
                "alerts",
                "registry",
                "reminders",
                "delivery",
                "delivery-retry",
                "surveys",
                "callbacks",
                "evaluations",
            )
            for suffix in ("", ".DQ", ".XQ")
        ]

    def env(self) -> dict[str, str]:
        """These settings as GOVNOTIFY_* variables, for a child process to load them exactly."""
        out = {}
        for name, value in self.model_dump(by_alias=False).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()  # the child needs the real value
            if value is None or value == "":
                continue
            if isinstance(value, list | dict):
                value = json.dumps(value, ensure_ascii=False)
            out[env_name(name)] = str(value)
        return out


def env_name(field: str) -> str:
    """The environment variable setting ``field`` is read from (``GOVNOTIFY_`` + its name in
    capitals, or its alias: ``environment`` is ``GOVNOTIFY_ENV``)."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"GOVNOTIFY_{field.upper()}"


def warn_sandboxes(settings: Settings, log: logging.Logger | None = None) -> str | None:
    """Log one warning line naming the sandboxes a development start falls back on, so that a
    message written to a sandbox file is not mistaken for one sent. Returns the line, or
    ``None`` when there is nothing to say (nothing falls back, or the production profile,
    which refuses to start with any).

    Components call it once at start, after logging is configured.
    """
    if settings.environment != "development":
        return None
    sandboxes = [f for f in settings.fallbacks() if f.sandbox]
    if not sandboxes:
        return None
    line = (
        "development fall-backs, nothing reaches a real recipient through them: "
        + "; ".join(f"{f.sandbox} (set {f.variable})" for f in sandboxes)
        + ". GOVNOTIFY_ENV=production refuses to start with them."
    )
    (log or logging.getLogger("govnotify.settings")).warning("%s", line)
    return line


def _whitespace_note(value: str) -> str:
    """A hint for a value pasted with a space or line break around it (never the value)."""
    return "; it has leading or trailing whitespace" if value != value.strip() else ""


def _is_token(value: str) -> bool:
    """Non-blank, with no whitespace anywhere: ids and keys as providers issue them."""
    return bool(value) and not any(c.isspace() for c in value)


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: traffic that never leaves the machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _field_env_name(loc: tuple[object, ...]) -> str:
    if not loc:
        return "GOVNOTIFY_*"
    name = str(loc[0])
    # An aliased field's error is located at its alias (GOVNOTIFY_ENV) when read from there.
    return name if name.startswith("GOVNOTIFY_") else env_name(name)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise :class:`SettingsError` naming what is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            if err["type"] == "production_profile":
                lines.append(err["msg"])  # names its variables, one line each
                continue
            name = _field_env_name(err["loc"])
            lines.append(f"invalid setting {name}: {err['msg']}")
        raise SettingsError("; ".join(lines)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
