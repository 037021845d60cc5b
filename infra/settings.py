"""Configuration from ``GOVNOTIFY_*`` environment variables, validated at start.

Every number the product talks about (offsets, ports, partition counts) is a setting with a
documented default. A bad value fails at start with :class:`SettingsError`, whose message names
the environment variable to fix.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["EMBEDDED_KAFKA_PORT", "Settings", "SettingsError", "get_settings", "load_settings"]

#: Loopback port of the embedded Tansu broker when ``GOVNOTIFY_KAFKA_URL`` is not set.
EMBEDDED_KAFKA_PORT = 19092


class SettingsError(Exception):
    """Raised when a GOVNOTIFY_* setting is missing or invalid; the message names it."""


class Settings(BaseSettings):
    """All of govnotify's configuration. Field ``x`` is read from ``GOVNOTIFY_X``."""

    model_config = SettingsConfigDict(env_prefix="GOVNOTIFY_", extra="ignore", frozen=True)

    #: Prefix of every exchange, queue, topic and consumer group; tests use a unique one each.
    namespace: str = Field("govnotify", pattern=r"^[a-z][a-z0-9_-]{0,40}$")
    #: Folder for the SQLite default database, pid files, sandbox outbox and metrics files.
    data_dir: Path = Path(".govnotify")

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    #: Empty means the embedded Tansu broker on 127.0.0.1:EMBEDDED_KAFKA_PORT.
    kafka_url: str = ""
    kafka_partitions: int = Field(4, ge=1, le=256)
    #: "tansu" (the embedded broker; works around its ListOffsets answer) or "kafka".
    kafka_broker_kind: Literal["tansu", "kafka"] = "tansu"
    kafka_replication_factor: int = Field(3, ge=1, le=7)
    #: Empty means a SQLite file under data_dir.
    database_url: str = ""

    twilio_account_sid: str = ""
    # Secrets stay out of repr(): settings objects show up in test failures and tracebacks.
    twilio_auth_token: str = Field("", repr=False)
    twilio_from: str = ""
    #: Overrides https://api.twilio.com, for a sandbox or a test fake.
    twilio_api_base: str = ""

    #: The second SMS provider: a mainland-style HTTP gateway (template id + parameters + an
    #: HMAC-SHA256 signature). Enabled when its URL is set; key id and secret are then required.
    gateway_url: str = ""
    gateway_key_id: str = ""
    gateway_secret: str = Field("", repr=False)
    #: The registered signature (签名) the gateway puts in front of every message.
    gateway_sign_name: str = "长安政务"
    #: Our template name → the gateway's approved template id.
    gateway_templates: dict[str, str] = {}
    #: Template id for a message without a mapped template; its one parameter is ``content``.
    gateway_generic_template: str = ""

    #: Provider order per flow, e.g. {"default": ["twilio", "gateway"], "green_channel":
    #: ["gateway", "twilio"]}: the first is primary, the rest take over on transient failure.
    #: Empty: every configured provider, Twilio first; the sandbox when none is configured.
    sms_routes: dict[str, list[str]] = {}
    #: A provider whose error rate over this window passes the threshold leaves the rotation.
    circuit_window_s: float = Field(60.0, gt=0)
    circuit_min_requests: int = Field(10, ge=1)
    circuit_error_rate: float = Field(0.5, gt=0, le=1)
    #: … for this long, then one trial request decides whether it is back.
    circuit_cooldown_s: float = Field(30.0, gt=0)

    #: `govnotify api`: receives provider status callbacks (public) on this address.
    api_host: str = "127.0.0.1"
    api_port: int = Field(8400, ge=0, le=65535)
    #: The URL providers reach the api at (behind the city's proxy), e.g.
    #: https://notify.example.gov.cn. Twilio signs the full public URL, so validation needs it.
    #: Empty: http://api_host:api_port.
    public_base_url: str = ""

    #: Message bodies and recipients are purged after this many days; statistics are kept.
    retention_days: int = Field(30, ge=1, le=3650)

    timezone: str = "Asia/Shanghai"
    #: The settable clock: run "as of" this date (YYYY-MM-DD) instead of today.
    today: dt.date | None = None
    #: The settable clock, to the second: start at this instant (ISO 8601 with offset), then run.
    now: dt.datetime | None = None
    #: Unix time at which the settable clock read ``now``: processes started later join the same
    #: clock. Empty: each process's clock reads ``now`` when that process starts.
    now_epoch: float | None = Field(None, gt=0)

    sms_signature: str = "【长安政务】"
    #: Days before expiry at which the holder gets a renewal SMS.
    renewal_sms_offsets: list[int] = [30, 7]
    #: Days before expiry at which the issuing department gets a call-list entry.
    renewal_call_offsets: list[int] = [3]
    #: Local time of the daily call-list digest to each issuing department (working days).
    call_list_digest_at: dt.time = dt.time(9, 0)

    #: Non-critical citizen SMS are deferred out of these local hours ("" disables).
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
    #: Green-channel alerts not acknowledged within this escalate to the hall supervisor.
    green_escalate_after_s: int = Field(600, ge=1)
    #: Survey invitation this long after completion (then deferred out of quiet hours).
    survey_delay_s: int = Field(1800, ge=0)
    #: A key project's follow-up callback is due this long after completion.
    callback_due_after_s: int = Field(3 * 86400, ge=1)
    #: Rectification deadline, in Chinese working days after the negative review.
    rectification_workdays: int = Field(5, ge=1, le=60)
    #: Remind the department this many working days before the deadline.
    rectification_remind_workdays: int = Field(1, ge=0, le=30)
    #: Record 基本满意 (3) for cases not rated within default_rating_after_s (off by default).
    default_rating_enabled: bool = False
    default_rating_after_s: int = Field(7 * 86400, ge=1)
    #: The shorter tumbling window of the live satisfaction rates (the other is one day).
    satisfaction_window_s: int = Field(3600, ge=60)
    #: Staff directory (on-duty staff, supervisors, department heads, webhooks); empty: bundled.
    staff_directory: Path | None = None
    #: SMTP server for staff reached by e-mail (a ``mailto:`` entry among the staff directory's
    #: webhooks): ``smtp://user:password@host:587`` (STARTTLS) or ``smtps://…:465`` (TLS).
    #: Empty: e-mails are written to the sandbox file, like ``sandbox://`` webhooks.
    smtp_url: str = Field("", repr=False)
    #: The From address of those e-mails.
    smtp_from: str = "govnotify@localhost"
    #: JSON holiday notices for years the chinesecalendar package does not know yet (the State
    #: Council publishes next year's each November): {"2027": {"holidays": [...],
    #: "workdays": [...]}}. Empty: the package only.
    holidays_file: Path | None = None
    #: How often the scheduler hands due jobs to the work queues.
    scheduler_interval_s: float = Field(0.5, gt=0)

    relay_metrics_port: int = Field(9301, ge=0, le=65535)
    stream_metrics_port: int = Field(9302, ge=0, le=65535)
    scheduler_metrics_port: int = Field(9303, ge=0, le=65535)
    worker_metrics_port: int = Field(9191, ge=0, le=65535)
    api_metrics_port: int = Field(9304, ge=0, le=65535)
    #: RabbitMQ's own Prometheus endpoint (rabbitmq_prometheus plugin).
    rabbitmq_prometheus_port: int = Field(15692, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    worker_processes: int = Field(1, ge=1, le=64)
    worker_threads: int = Field(8, ge=1, le=256)
    #: Largest accepted event, in bytes, before it is dead-lettered as oversize.
    max_event_bytes: int = Field(64 * 1024, ge=1024)
    #: Transient provider errors are retried this many times, with exponential backoff.
    delivery_max_retries: int = Field(8, ge=0, le=50)
    delivery_min_backoff_ms: int = Field(1_000, ge=10)
    delivery_max_backoff_ms: int = Field(300_000, ge=10)
    #: How often the stream checks for a new local day (the scan itself runs once per day).
    stream_scan_interval_s: float = Field(30.0, gt=0)
    #: Stream state is forgotten this many days after a license expired or a case's last event.
    stream_state_keep_days: int = Field(90, ge=1, le=3650)
    #: The scheduler runs the reconciliation sweep this often (0: only `govnotify sweep`).
    sweep_interval_s: float = Field(60.0, ge=0)
    #: Rows in `sending` longer than this are resolved by the sweep.
    sweep_sending_after_s: int = Field(300, ge=1)
    #: Rows in `created` longer than this are re-queued by the sweep.
    sweep_created_after_s: int = Field(120, ge=1)
    #: Rows in `sent` with no final status from the provider after this are resolved by the
    #: sweep (asked of the provider, else `unknown-failure`). Twilio reports within hours.
    sweep_sent_after_s: int = Field(72 * 3600, ge=1)

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
        from workers.policy import QuietHours

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

    @field_validator("gateway_url", "public_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("sms_routes")
    @classmethod
    def _routes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for flow, providers in value.items():
            if not providers:
                raise ValueError(f"route {flow!r} names no provider")
            if len(set(providers)) != len(providers):
                raise ValueError(f"route {flow!r} names a provider twice")
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
        if self.gateway_url and not (self.gateway_key_id and self.gateway_secret):
            raise ValueError(
                "the SMS gateway needs GOVNOTIFY_GATEWAY_KEY_ID and GOVNOTIFY_GATEWAY_SECRET"
            )
        known = {"twilio", "gateway", "sandbox"}
        for flow, providers in self.sms_routes.items():
            unknown = [p for p in providers if p not in known]
            if unknown:
                raise ValueError(f"route {flow!r}: unknown provider {unknown[0]!r}")
        return self

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
        """Kafka topic: ``licenses``, ``cases``, ``evaluations`` (ingest) or ``ratings``."""
        return f"{self.namespace}.{name}"

    @property
    def topics(self) -> list[str]:
        """Every topic to pre-create; ``ratings`` re-keys evaluations by department/point."""
        return [self.topic(n) for n in ("licenses", "cases", "evaluations", "ratings")]

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
        for name, value in self.model_dump().items():
            if value is None or value == "":
                continue
            if isinstance(value, list | dict):
                value = json.dumps(value, ensure_ascii=False)
            out[f"GOVNOTIFY_{name.upper()}"] = str(value)
        return out


def _field_env_name(loc: tuple[object, ...]) -> str:
    return "GOVNOTIFY_" + str(loc[0]).upper() if loc else "GOVNOTIFY_*"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise :class:`SettingsError` naming what is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = _field_env_name(err["loc"])
            lines.append(f"invalid setting {name}: {err['msg']}")
        raise SettingsError("; ".join(lines)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
