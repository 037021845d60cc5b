"""Helpers of the hostile-input test (issue 11): raw events as an attacker writes them, and a
scan of everything a run wrote or sent for what must never be there.

The scan looks for a full mainland mobile number, an 18-digit ID number, a secret of the run
(passwords, tokens) and a raw control character. It reads log files line by line (split on
``\\n`` only: ``str.splitlines`` would also split on U+2028 and hide it), and JSON records (the
SMS and staff sandboxes, the fakes' received messages) value by value, leaving out the fields
that name a recipient (an outbox holds the number it sent to, on purpose).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import _FULL_MOBILE

__all__ = [
    "ADDRESS_KEYS",
    "Leak",
    "leaks_in_jsonl",
    "leaks_in_log",
    "leaks_in_records",
    "leaks_in_text",
    "post",
    "raw_event",
]

#: An 18-digit resident ID number (the last may be X), not inside a longer run or an identifier.
ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])[1-9][0-9]{16}[0-9Xx](?![0-9A-Za-z])")
#: Characters no log line and no message text may carry raw: C0 but tab and line feed, DEL,
#: C1, the Unicode line and paragraph separators, and the bidirectional controls (LRM/RLM,
#: ALM, embeddings, overrides, isolates), which reorder what a reader sees.
RAW_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]"
)
#: JSON keys whose values are addresses (a recipient, our sender number): they hold full
#: numbers by design.
ADDRESS_KEYS = frozenset({"to", "from", "mentioned_mobile_list", "atMobiles", "recipient"})


@dataclass(frozen=True)
class Leak:
    """One thing found where it must not be: where, what kind, and the text (escaped)."""

    where: str
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.text}"


def _escaped(text: str, limit: int = 300) -> str:
    shown = text if len(text) <= limit else text[:limit] + "…"
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in shown)


def leaks_in_text(text: str, where: str, secrets: Iterable[str] = ()) -> list[Leak]:
    """What ``text`` (one log line, or one value of a record) must not hold."""
    found = []
    if _FULL_MOBILE.search(text):
        found.append(Leak(where, "full mobile number", _escaped(text)))
    if ID_NUMBER.search(text):
        found.append(Leak(where, "ID number", _escaped(text)))
    for secret in secrets:
        if secret and secret in text:
            found.append(Leak(where, "secret", _escaped(text.replace(secret, "[SECRET]"))))
    control = RAW_CONTROL.search(text)
    if control is not None:
        found.append(
            Leak(where, f"raw control character U+{ord(control.group()):04X}", _escaped(text))
        )
    return found


def leaks_in_log(path: Path, secrets: Iterable[str] = ()) -> list[Leak]:
    """Every leak in the log file ``path``, line by line (lines split on ``\\n`` only)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    secrets = list(secrets)
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        found.extend(leaks_in_text(line, f"{path.name}:{number}", secrets))
    return found


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(JSON path, text) of every string in ``value``, keys included, addresses left out."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield f"{path}.{key}:key", str(key)
            if str(key) not in ADDRESS_KEYS:
                yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def leaks_in_records(
    records: Iterable[Any],
    where: str,
    secrets: Iterable[str] = (),
    *,
    lookup_keys: frozenset[str] = frozenset(),
) -> list[Leak]:
    """Every leak in the string values of ``records`` (parsed JSON), addresses left out.

    Under a key of ``lookup_keys`` (a staff message's structured ``data``: ids sent to a staff
    portal for lookup, on purpose unmasked) an 18-digit id is not counted as an ID number;
    everything else is still looked for there.
    """
    secrets = list(secrets)
    found = []
    for index, record in enumerate(records):
        for path, text in _strings(record):
            leaks = leaks_in_text(text, f"{where}[{index}]{path}", secrets)
            if any(f".{key}." in f"{path}." for key in lookup_keys):
                leaks = [leak for leak in leaks if leak.kind != "ID number"]
            found.extend(leaks)
    return found


def leaks_in_jsonl(
    path: Path, secrets: Iterable[str] = (), *, lookup_keys: frozenset[str] = frozenset()
) -> list[Leak]:
    """Every leak in a JSON-lines file: in each line as written (a raw control character) and
    in each record's values once decoded (what a reader of the message would get)."""
    secrets = list(secrets)
    found = []
    text = path.read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        control = RAW_CONTROL.search(line)
        if control is not None:
            kind = f"raw control character U+{ord(control.group()):04X}"
            found.append(Leak(f"{path.name}:{number}", kind, _escaped(line)))
        try:
            record = json.loads(line)
        except ValueError:
            found.extend(leaks_in_text(line, f"{path.name}:{number}", secrets))
            continue
        found.extend(
            leaks_in_records([record], f"{path.name}:{number}", secrets, lookup_keys=lookup_keys)
        )
    return found


def raw_event(
    event_type: str,
    payload: Mapping[str, Any],
    *,
    source: str,
    occurred_at: dt.datetime | str,
    event_id: str | None = None,
    version: int = 1,
    **envelope: Any,
) -> bytes:
    """An event's bytes as an upstream could send them: not validated, nothing normalised."""
    body = {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": version,
        "occurred_at": occurred_at if isinstance(occurred_at, str) else occurred_at.isoformat(),
        "source": source,
        "payload": dict(payload),
        **envelope,
    }
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


#: Bodies larger than this are expected to be refused before they are read (see :func:`post`).
EARLY_ANSWER_BYTES = 512 * 1024


def _post_refused_early(
    port: int, path: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> tuple[int, bytes]:
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        try:
            sock.sendall(body[:65536])
        except (BrokenPipeError, ConnectionResetError):
            pass  # already answered and closed: the answer is what counts
        answer = sock.makefile("rb")
        status_line = answer.readline()
    return int(status_line.split()[1]), status_line


def post(
    port: int, path: str, body: bytes, headers: Mapping[str, str], timeout: float = 30.0
) -> tuple[int, bytes]:
    """One HTTP POST to 127.0.0.1:``port`` on a connection of its own: (status, body).

    A body over :data:`EARLY_ANSWER_BYTES` is sent as a client that does not wait would: the
    headers and its first bytes, then the answer is read. A server that refuses it from its
    ``Content-Length`` answers and closes before the rest, which would otherwise break the
    pipe under the client's feet.
    """
    if len(body) > EARLY_ANSWER_BYTES:
        return _post_refused_early(port, path, body, headers, timeout)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers=dict(headers))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
