"""Guards every request to ``govnotify api`` passes: bounded bodies, bounded parsers, safe logs.

The api faces the internet (provider callbacks) and upstream systems (HTTP ingest), so nothing
a request carries is trusted before it is checked, and every check is cheap and bounded:

- :func:`read_body` reads at most a route's cap, judged by ``Content-Length`` before a byte is
  read (waitress has buffered the body already, chunked or not, and set ``CONTENT_LENGTH``);
- :func:`parse_form` parses form bodies with a cap on the number of fields
  (:func:`urllib.parse.parse_qsl`'s ``max_num_fields``: a 256 KiB body of 34,000 fields would
  otherwise cost ~150 ms of CPU before its signature is even checked) and refuses repeated
  names, which no provider sends;
- :func:`split_json_events` cuts a JSON array into its elements' exact bytes, so each event is
  validated from the bytes the sender sent (as the relay validates an AMQP message), with the
  decoder's own recursion guard turned into a refusal instead of a 500;
- :func:`printable` escapes what goes into a log line: no newline or ANSI escape from a request
  may forge a line or repaint a terminal, whatever the formatter does after.

Every refusal is a :class:`Refusal`: an HTTP status, a short outcome word and a detail that
never echoes request text unescaped.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

__all__ = [
    "Refusal",
    "content_type",
    "parse_form",
    "printable",
    "read_body",
    "split_json_events",
]

#: What a ``Content-Length`` may look like: digits, no sign, no spaces, a sane length.
_LENGTH = re.compile(r"[0-9]{1,12}")
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class Refusal(Exception):
    """Raised when a request is refused: answered at once with ``status`` and ``outcome``."""

    def __init__(self, status: int, outcome: str, detail: str = "") -> None:
        super().__init__(detail or outcome)
        self.status = status
        self.outcome = outcome
        self.detail = detail or outcome


def printable(value: object, limit: int = 120) -> str:
    """``value`` as text safe for one log line: every character that is not printable (line
    breaks, ANSI escapes, C0/C1 controls, U+2028/2029, bidi overrides) as its ``\\x``/``\\u``
    escape, cut to ``limit`` characters with ``…``."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def content_type(environ: dict[str, Any]) -> str:
    """The request's media type, lowercased, without parameters (``charset=…``)."""
    return str(environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, at most ``limit`` bytes.

    Raises:
      Refusal: 400 for a ``Content-Length`` that is not a number, 413 over ``limit`` (judged
        before anything is read), 400 for a body shorter than it claimed.
    """
    raw_length = str(environ.get("CONTENT_LENGTH") or "0").strip()
    if not _LENGTH.fullmatch(raw_length):
        raise Refusal(400, "malformed", "Content-Length is not a number")
    length = int(raw_length)
    if length > limit:
        raise Refusal(413, "too_large", f"body of {length} bytes; at most {limit}")
    if length == 0:
        return b""
    body = environ["wsgi.input"].read(length)
    if len(body) != length:
        raise Refusal(400, "malformed", "body shorter than its Content-Length")
    return bytes(body)


def parse_form(raw: bytes, max_fields: int) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict, with at most ``max_fields``.

    Raises:
      Refusal: 400 when the body is not UTF-8, not form-encoded, has more than ``max_fields``
        fields, or names a field twice.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "malformed", "body is not UTF-8") from None
    if not text:
        return {}
    try:
        # parse_qsl counts the separators first and refuses before building anything.
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, max_num_fields=max_fields
        )
    except ValueError as exc:
        too_many = "max_num_fields" in str(exc) or "Max number" in str(exc)
        detail = f"more than {max_fields} form fields" if too_many else "body is not form-encoded"
        raise Refusal(400, "malformed", detail) from None
    params = dict(pairs)
    if len(params) != len(pairs):
        # A repeated name: which copy a validator and a reader each take is exactly the kind of
        # ambiguity a signature scheme over a sorted concatenation does not protect.
        raise Refusal(400, "malformed", "a form field is repeated")
    return params


def split_json_events(raw: bytes, *, max_events: int) -> tuple[list[bytes], bool]:
    """The events of a JSON body, each as its own exact bytes, and whether it was a batch.

    A body is one event (a JSON object) or a batch (a JSON array of at least one element). The
    elements' boundaries are found with the standard decoder (C speed), and each element's
    bytes are returned untouched, so the caller validates exactly what the sender sent
    (repeated keys, ``NaN``, oversize: :func:`schemas.events.parse_event` judges each).

    Raises:
      Refusal: 400 when the body is not UTF-8 JSON, is neither an object nor a non-empty array,
        or nests deeper than the decoder allows; 413 for more than ``max_events`` elements.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "malformed", "body is not UTF-8") from None
    start = _skip(text, 0)
    if text.startswith("{", start):
        if _skip(text, _value_end(text, start)) != len(text):
            raise Refusal(400, "malformed", "text after the JSON object")
        return [raw], False
    if not text.startswith("[", start):
        raise Refusal(400, "malformed", "body must be a JSON object (an event) or array (a batch)")
    events: list[bytes] = []
    index = _skip(text, start + 1)
    if text.startswith("]", index):
        raise Refusal(400, "malformed", "empty batch")
    while True:
        if len(events) == max_events:
            raise Refusal(413, "too_large", f"more than {max_events} events in one batch")
        end = _value_end(text, index)
        events.append(text[index:end].encode("utf-8"))
        index = _skip(text, end)
        if text.startswith(",", index):
            index = _skip(text, index + 1)
            continue
        if text.startswith("]", index):
            break
        raise Refusal(400, "malformed", f"element {len(events) - 1} is not followed by , or ]")
    if _skip(text, index + 1) != len(text):
        raise Refusal(400, "malformed", "text after the JSON array")
    return events, True


def _skip(text: str, index: int) -> int:
    """The first index at or after ``index`` that is not JSON whitespace."""
    match = _JSON_WHITESPACE.match(text, index)
    return match.end() if match else index


def _value_end(text: str, index: int) -> int:
    """Where the JSON value starting at ``index`` ends."""
    try:
        _, end = _DECODER.raw_decode(text, index)
    except json.JSONDecodeError as exc:
        raise Refusal(400, "malformed", f"not JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        # The C decoder guards its own recursion; it only has to become a refusal, not a 500.
        raise Refusal(400, "malformed", "not JSON: nested too deeply") from None
    return end
