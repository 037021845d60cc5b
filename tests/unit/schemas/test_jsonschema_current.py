"""The committed JSON Schema files match the models, and they accept and refuse what we do."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from schemas.events import parse_event
from schemas.jsonschema_gen import SCHEMA_DIR, render_all, write_all

REGENERATE = "schema files are stale: run `python -m schemas.jsonschema_gen` and commit the result"
RENDERED = render_all()


def test_files_on_disk_match_the_models() -> None:
    # Given the schemas rendered from the models
    # When they are compared with the committed files
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in SCHEMA_DIR.glob("*.schema.json")}
    # Then the same files exist, with the same text
    assert sorted(on_disk) == sorted(RENDERED), REGENERATE
    for name, text in RENDERED.items():
        assert on_disk[name] == text, f"{name}: {REGENERATE}"


def test_render_is_deterministic() -> None:
    # Given one rendering
    # When the schemas are rendered again
    again = render_all()
    # Then the text is identical
    assert again == RENDERED


def test_write_all_removes_stale_files(tmp_path: Any) -> None:
    # Given a folder with a schema of an event that no longer exists
    stale = tmp_path / "gone.v1.schema.json"
    stale.write_text("{}", encoding="utf-8")
    # When the schemas are written there
    written = write_all(tmp_path)
    # Then the stale file is gone and every rendered one is present
    assert not stale.exists()
    assert sorted(p.name for p in written) == sorted(RENDERED)


def _example(schema: dict[str, Any]) -> dict[str, Any]:
    examples = schema.get("examples") or []
    assert examples, f"{schema['$id']} has no example event"
    return copy.deepcopy(examples[0])


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_schema_accepts_its_example_and_refuses_a_missing_field(name: str) -> None:
    # Given one generated schema and its example event
    schema = json.loads(RENDERED[name])
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    event = _example(schema)
    broken = copy.deepcopy(event)
    required = schema["$defs"][schema["properties"]["payload"]["$ref"].split("/")[-1]]["required"]
    del broken["payload"][required[0]]
    # When the example and a copy missing a required payload field are validated
    errors_valid = list(validator.iter_errors(event))
    errors_broken = list(validator.iter_errors(broken))
    # Then the example passes both the schema and parse_event; the broken copy fails the schema
    assert errors_valid == []
    assert parse_event(json.dumps(event).encode()).event_type == event["event_type"]
    assert errors_broken, f"{name} accepted an event without payload.{required[0]}"


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("case.submitted.v1.schema.json", {"project_steward": None}),
        ("evaluation.submitted.v1.schema.json", {"citizen_mobile": None}),
        ("license.issued.v1.schema.json", {"holder_mobile": "029-8888-6666"}),
        ("license.issued.v1.schema.json", {"category": "fishing"}),
        ("license.issued.v1.schema.json", {"unknown": 1}),
    ],
)
def test_schema_carries_conditional_and_enum_rules(name: str, change: dict[str, Any]) -> None:
    # Given a valid example event
    schema = json.loads(RENDERED[name])
    event = _example(schema)
    # When a payload field is changed to break a rule
    event["payload"].update(change)
    # Then the JSON Schema refuses it, as parse_event does
    assert list(Draft202012Validator(schema).iter_errors(event))
