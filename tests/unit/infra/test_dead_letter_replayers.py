"""The dead-letter store's replayer registry on SQLite: each stage's owner registers how its
letters go back, a replay claims the letter and asks the stage's replayer, and a stage nobody
registered is an error that names it, with the letter left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from dramatiq.message import Message
from sqlalchemy import select

from infra import deadletters
from infra.db import session, upgrade
from infra.deadletters import (
    STAGES,
    DeadLetterError,
    NoReplayerError,
    record_dead_letter,
    register_replayer,
    replay,
    replay_letter,
)
from infra.jobs import job_raw, replay_job
from infra.settings import Settings, load_settings
from schemas.models import DeadLetter


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(namespace="tunit", data_dir=tmp_path / "data", database_url="")
    upgrade(s)
    return s


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, deadletters.Replayer]:
    """An empty registry for the test; the process's own is back afterwards."""
    empty: dict[str, deadletters.Replayer] = {}
    monkeypatch.setattr(deadletters, "_REPLAYERS", empty)
    return empty


def letter_of(settings: Settings, stage: str, raw: bytes = b"raw") -> DeadLetter:
    with session(settings) as s:
        record_dead_letter(s, stage=stage, reason="r", detail="d", raw=raw)
        return s.execute(select(DeadLetter).where(DeadLetter.raw == raw)).scalars().one()


def reread(settings: Settings, letter: DeadLetter) -> DeadLetter:
    with session(settings) as s:
        row = s.get(DeadLetter, letter.id)
        assert row is not None
        return row


def test_a_registered_replayer_replays_its_stage(
    settings: Settings, registry: dict[str, deadletters.Replayer]
) -> None:
    # Given a replayer registered for ingest, and an ingest letter
    seen: list[bytes] = []

    def replayer(settings: Settings, letter: DeadLetter) -> str:
        seen.append(bytes(letter.raw))
        return "sent back"

    assert register_replayer("ingest", replayer) is replayer
    letter = letter_of(settings, "ingest")

    # When it is replayed twice
    first = replay_letter(settings, letter)
    second = replay_letter(settings, letter)

    # Then: replayed once, claimed once, and skipped the second time
    assert (first.result, first.detail) == ("replayed", "sent back")
    assert (second.result, second.detail) == ("skipped", "already replayed")
    assert seen == [b"raw"]
    again = reread(settings, letter)
    assert (again.status, again.replay_count) == ("replayed", 1)
    # … and `replay` asks the same replayer, without touching the row
    assert replay(settings, letter) == "sent back"
    assert reread(settings, letter).replay_count == 1


def test_registering_a_stage_again_replaces_its_replayer(
    registry: dict[str, deadletters.Replayer],
) -> None:
    # When a stage is registered twice (a module imported anew)
    register_replayer("job", lambda settings, letter: "old")
    register_replayer("job", lambda settings, letter: "new")

    # Then the last one replays it
    assert registry["job"](None, None) == "new"  # type: ignore[arg-type]


def test_a_stage_without_replayer_is_an_error_naming_it_and_the_letter_stays_open(
    settings: Settings, registry: dict[str, deadletters.Replayer]
) -> None:
    # Given a delivery letter, and no replayer registered for delivery
    letter = letter_of(settings, "delivery")

    # When / Then: both ways of replaying say which stage has none
    with pytest.raises(NoReplayerError, match="'delivery'"):
        replay(settings, letter)
    with pytest.raises(NoReplayerError, match="no replayer registered for dead-letter stage"):
        replay_letter(settings, letter)
    # … and the letter was not claimed
    again = reread(settings, letter)
    assert (again.status, again.replay_count) == ("open", 0)


def test_only_known_stages_take_a_replayer(registry: dict[str, deadletters.Replayer]) -> None:
    with pytest.raises(ValueError, match="'nope'"):
        register_replayer("nope", lambda settings, letter: "")
    assert registry == {}


def test_a_letter_of_an_unknown_stage_is_refused(
    settings: Settings, registry: dict[str, deadletters.Replayer]
) -> None:
    # Given a letter of a stage this version does not know (written by a newer one)
    letter = letter_of(settings, "future")

    # When
    outcome = replay_letter(settings, letter)

    # Then: refused, as before the registry, and left open
    assert (outcome.result, outcome.detail) == ("refused", "unknown stage future")
    assert reread(settings, letter).status == "open"


def test_a_refused_replay_leaves_the_letter_open_and_a_failed_one_too(
    settings: Settings, registry: dict[str, deadletters.Replayer]
) -> None:
    # Given a callback replayer that refuses and a job replayer whose broker is down
    def refuse(settings: Settings, letter: DeadLetter) -> str:
        raise DeadLetterError("the callback cannot be read")

    def broken(settings: Settings, letter: DeadLetter) -> str:
        raise ConnectionError("broker down")

    register_replayer("callback", refuse)
    register_replayer("job", broken)
    refused_letter = letter_of(settings, "callback", b"cb")
    failed_letter = letter_of(settings, "job", b"job")

    # When
    refused = replay_letter(settings, refused_letter)
    with pytest.raises(ConnectionError):
        replay_letter(settings, failed_letter)

    # Then: both open, as they were
    assert (refused.result, refused.detail) == ("refused", "the callback cannot be read")
    for letter in (refused_letter, failed_letter):
        again = reread(settings, letter)
        assert (again.status, again.replay_count) == ("open", 0)


def test_the_dead_letters_command_registers_every_stage() -> None:
    # When the roof's command module is imported, as `govnotify dead-letters` does
    import infra.cli.dead_letters  # noqa: F401

    # Then every stage has its owner's replayer
    assert {stage: deadletters._REPLAYERS[stage].__module__ for stage in STAGES} == {
        "ingest": "producers.replay",
        "job": "infra.jobs",
        "delivery": "workers.replay",
        "callback": "workers.replay",
        "outcome": "workers.outcomes",
    }


def test_the_job_replayer_refuses_what_it_cannot_enqueue(settings: Settings) -> None:
    # Given a job letter that is not a dramatiq message, and one of another namespace
    message = Message(
        queue_name="other.alerts", actor_name="a", args=(1,), kwargs={}, options={"retries": 3}
    )
    garbage = letter_of(settings, "job", b"not a message")
    foreign = letter_of(settings, "job", job_raw(message))

    # When / Then: refused before anything is sent
    with pytest.raises(DeadLetterError, match="not a dramatiq message"):
        replay_job(settings, garbage)
    with pytest.raises(DeadLetterError, match=r"belongs to queue other\.alerts"):
        replay_job(settings, foreign)
    # … and the kept job had dramatiq's own options dropped
    assert Message.decode(foreign.raw).options == {}
