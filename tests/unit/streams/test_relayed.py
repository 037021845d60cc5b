"""streams.relayed: a record the journal vouches for is read as the relay wrote it, and gives
the very job validating it again gives; anything else is validated again. The path through the
real stream, with records a foreign producer wrote, is tests/integration/test_stream_relayed.py.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from infra.journal import Journaled, fingerprint
from producers.generator import generate_case_day, generate_registry, license_event
from schemas.errors import EventRejected
from schemas.events import parse_event
from streams import relayed
from streams.agents.licenses import license_job

TOPIC = "t.licenses"
MAX_BYTES = 65_536
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def _validated() -> float:
    return relayed.VALIDATED.labels(topic=TOPIC)._value.get()


def _read(raws: list[bytes], journal: dict[str, Journaled]) -> list[relayed.Fields | EventRejected]:
    peeked = [relayed.peek(raw, MAX_BYTES) for raw in raws]
    return relayed.read(TOPIC, peeked, journal, max_bytes=MAX_BYTES)


def _journaled(raws: list[bytes]) -> dict[str, Journaled]:
    """The journal's entries for records the relay wrote (none applied yet)."""
    return {json.loads(raw)["event_id"]: Journaled(fingerprint(raw), applied=False) for raw in raws}


def _relay_bytes(raw: bytes) -> bytes:
    """What the relay writes to Kafka (and journals) for an upstream's ``raw``."""
    return parse_event(raw).to_json_bytes()


def test_a_journaled_record_gives_the_job_that_validating_it_gives() -> None:
    # Given every event of a generated registry as the relay writes it, upstream times in UTC
    # and in Shanghai time, with and without microseconds, each journaled with its fingerprint
    events = list(generate_registry(300, dt.date(2026, 6, 1)).events)
    assert {"license.issued", "license.revoked"} <= {e.event_type for e in events}
    shanghai = license_event(
        "license.renewed",
        "SX-SP-2024-0001",
        category="food_business",
        issued_on=dt.date(2024, 6, 1),
        expires_on=dt.date(2029, 5, 31),
        occurred_at=dt.datetime(2026, 5, 1, 17, 0, 0, 123456, SHANGHAI),
    )
    raws = [_relay_bytes(e.to_json_bytes()) for e in [*events, shanghai]]
    journal = _journaled(raws)
    before = _validated()

    # When the stream reads them
    read_back = _read(raws, journal)

    # Then none was validated again; each has the fields validating it gives, and so the job
    assert _validated() == before
    for raw, fields in zip(raws, read_back, strict=True):
        assert isinstance(fields, relayed.Fields)
        expected = relayed.Fields.of_event(parse_event(raw))
        assert fields == expected
        assert license_job(fields) == license_job(expected)
        assert list(license_job(fields)) == list(license_job(expected))


def test_journaled_case_and_evaluation_records_read_as_their_validated_events() -> None:
    # Given a day of cases (submitted, completed, special groups, key projects, ratings) as the
    # relay writes them, each journaled with its fingerprint
    day = generate_case_day(200, dt.datetime(2026, 11, 26, 10, 0, tzinfo=SHANGHAI))
    raws = [_relay_bytes(e.to_json_bytes()) for e in day.events]
    assert {"case.submitted", "case.completed", "evaluation.submitted"} <= {
        json.loads(raw)["event_type"] for raw in raws
    }
    journal = _journaled(raws)
    before = _validated()

    # When the stream reads them
    read_back = _read(raws, journal)

    # Then none was validated again, and each has the fields (key and payload included) that
    # validating it gives
    assert _validated() == before
    for raw, fields in zip(raws, read_back, strict=True):
        assert fields == relayed.Fields.of_event(parse_event(raw))


def _good() -> bytes:
    event = generate_registry(1, dt.date(2026, 6, 1)).events[0]
    return _relay_bytes(event.to_json_bytes())


def _edited(raw: bytes, **changes: object) -> bytes:
    data = json.loads(raw)
    data["payload"].update(changes)
    return json.dumps(data, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("case", "make", "journaled", "outcome"),
    [
        # a valid event the relay never wrote (a foreign producer, or a purged journal row)
        ("not journaled", lambda raw: raw, False, "fields"),
        # other bytes under a journaled id: the same content re-encoded ...
        ("re-encoded", lambda raw: _edited(raw), True, "fields"),
        # ... a forged mobile (validated: it is one) ...
        ("edited", lambda raw: _edited(raw, holder_mobile="+8613912345678"), True, "fields"),
        # ... and text no citizen may receive (refused by validation)
        ("hostile", lambda raw: _edited(raw, holder_name="<script>x</script>"), True, "rejected"),
        ("not JSON", lambda raw: b"\xff" + raw, True, "rejected"),
        ("not an object", lambda raw: b"[1, 2]", True, "rejected"),
        ("oversize", lambda raw: raw + b" " * MAX_BYTES, True, "rejected"),
    ],
)
def test_a_record_the_journal_does_not_vouch_for_is_validated_again(
    case: str, make, journaled: bool, outcome: str
) -> None:
    # Given a record under an id whose relayed bytes the journal holds (or not at all)
    original = _good()
    event_id = json.loads(original)["event_id"]
    journal = {event_id: Journaled(fingerprint(original), applied=False)} if journaled else {}
    raw = make(original)
    before = _validated()

    # When the stream reads it
    (fields,) = _read([raw], journal)

    # Then it was validated again: its fields are what parse_event says, or its rejection
    assert _validated() == before + 1, case
    if outcome == "fields":
        assert isinstance(fields, relayed.Fields), case
        assert license_job(fields) == license_job(relayed.Fields.of_event(parse_event(raw)))
    else:
        assert isinstance(fields, EventRejected), case


def test_ids_validated_but_not_asked_about_are_named() -> None:
    # Given a foreign record whose id the JSON gives in upper case beside a journaled record:
    # the journal was asked about the ids as the JSON gave them
    good = _good()
    data = json.loads(_good())
    data["event_id"] = data["event_id"].upper()
    foreign = json.dumps(data, ensure_ascii=False).encode()
    journal = {json.loads(good)["event_id"]: Journaled(fingerprint(good), applied=True)}
    asked = {json.loads(good)["event_id"], data["event_id"]}

    # When they are read
    read_back = _read([good, foreign], journal)

    # Then the foreign one's id as validated (a UUID's text is lower case) is still to be asked
    assert relayed.unasked(read_back, asked) == [data["event_id"].lower()]
