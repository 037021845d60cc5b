"""The event contract: valid events round-trip, invalid ones are rejected with the right reason."""

from __future__ import annotations

import json
import pickle
import uuid
from typing import Any

import pytest

from schemas.categories import CATEGORY_CODES, load_categories
from schemas.errors import REJECT_REASONS, EventRejected
from schemas.events import (
    EVENT_REGISTRY,
    CaseCompletedPayload,
    LicensePayload,
    event_types,
    make_event,
    parse_event,
    register,
    spec_for,
)

EVENT_ID = "5f0c1e1a-8a3b-4d6e-9f00-1c2d3e4f5a6b"
RAW_MOBILE = "138 0013 8000"
DIGITS = "13800138000"


def _license() -> dict[str, Any]:
    return {
        "license_id": "SX-SP-2023-0456",
        "category": "food_business",
        "holder_name": "长安区某某餐饮店",
        "holder_mobile": RAW_MOBILE,
        "issuing_department": "长安区市场监督管理局",
        "issued_on": "2023-05-10",
        "expires_on": "2028-05-09",
    }


def _case(**changes: Any) -> dict[str, Any]:
    case = {
        "case_id": "CA-0001",
        "service_item": "食品经营许可",
        "department": "长安区市场监督管理局",
        "service_point": {"id": "ST-05", "name": "韦曲街道便民服务站", "level": "street_station"},
        "applicant": {
            "kind": "citizen",
            "name": "张三",
            "mobile": RAW_MOBILE,
            "age": 82,
            "special_groups": ["elderly", "veteran"],
        },
        "submitted_at": "2024-06-03T09:30:00+08:00",
    }
    case.update(changes)
    return case


def _steward() -> dict[str, Any]:
    return {
        "staff_id": "S-1",
        "name": "李管家",
        "mobile": "+86-139-0013-9000",
        "department": "中心",
    }


def _evaluation(**changes: Any) -> dict[str, Any]:
    evaluation = {
        "evaluation_id": "EV-1",
        "case_id": "CA-0001",
        "rating": 1,
        "real_name": True,
        "citizen_mobile": RAW_MOBILE,
        "comment": "办事慢",
        "department": "长安区市场监督管理局",
        "service_point_id": "ST-05",
        "evaluated_at": "2024-06-04T10:00:00+08:00",
    }
    evaluation.update(changes)
    return evaluation


VALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (event_type, payload, family, key)
    ("license.issued", _license(), "licenses", "SX-SP-2023-0456"),
    ("license.renewed", _license(), "licenses", "SX-SP-2023-0456"),
    (
        "license.revoked",
        {"license_id": "SX-SP-2023-0456", "revoked_on": "2024-01-02"},
        "licenses",
        "SX-SP-2023-0456",
    ),
    ("case.submitted", _case(), "cases", "CA-0001"),
    (
        "case.submitted",
        _case(key_project=True, project_steward=_steward()),
        "cases",
        "CA-0001",
    ),
    (
        "case.completed",
        _case(completed_at="2024-06-05T16:00:00+08:00"),
        "cases",
        "CA-0001",
    ),
    ("evaluation.submitted", _evaluation(), "evaluations", "CA-0001"),
    (
        "evaluation.submitted",
        _evaluation(real_name=False, citizen_mobile=None, rating=5),
        "evaluations",
        "CA-0001",
    ),
    (
        "greenchannel.acknowledged",
        {
            "case_id": "CA-0001",
            "service_point_id": "ST-05",
            "staff_id": "S-7",
            "acknowledged_at": "2024-06-03T09:33:00+08:00",
        },
        "cases",
        "CA-0001",
    ),
    (
        "callback.completed",
        {
            "case_id": "CA-0001",
            "callback_id": "CB-1",
            "staff_id": "S-1",
            "outcome": "已回访，企业满意",
            "completed_at": "2024-06-08T15:00:00+08:00",
        },
        "cases",
        "CA-0001",
    ),
]


def _raw(event_type: str = "license.issued", payload: Any = None, **envelope: Any) -> bytes:
    doc: dict[str, Any] = {
        "event_id": EVENT_ID,
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": "2024-06-03T09:30:00+08:00",
        "source": "license-registry",
        "payload": _license() if payload is None else payload,
    }
    doc.update(envelope)
    doc = {k: v for k, v in doc.items() if v is not _DROP}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


_DROP = object()


def _phones(event_bytes: bytes) -> list[str]:
    found: list[str] = []

    def walk(node: Any, name: str = "") -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, key)
        elif isinstance(node, list):
            for item in node:
                walk(item, name)
        elif isinstance(node, str) and "mobile" in name:
            found.append(node)

    walk(json.loads(event_bytes))
    return found


@pytest.mark.parametrize(
    ("event_type", "payload", "family", "key"),
    VALID,
    ids=[f"{row[0]}-{i}" for i, row in enumerate(VALID)],
)
def test_valid_events_round_trip(
    event_type: str, payload: dict[str, Any], family: str, key: str
) -> None:
    # Given a valid event with a phone written with spaces
    raw = _raw(event_type, payload)
    # When it is parsed, serialised and parsed again
    event = parse_event(raw)
    again = parse_event(event.to_json_bytes())
    # Then both parses are equal, routed right, and every phone is E.164
    assert again == event
    assert (event.event_type, event.event_id) == (event_type, EVENT_ID)
    assert (event.family, event.key) == (family, key)
    assert event.to_json_bytes() == again.to_json_bytes()
    assert all(p.startswith("+86") and len(p) == 14 for p in _phones(event.to_json_bytes()))
    assert RAW_MOBILE not in event.to_json_bytes().decode("utf-8")


def test_every_registered_type_has_a_valid_sample() -> None:
    # Given the registry
    # When its types are compared with the samples above
    sampled = {row[0] for row in VALID}
    # Then no registered type goes untested
    assert sampled == set(event_types())
    assert {(t, 1) for t in sampled} == set(EVENT_REGISTRY)


def test_to_json_bytes_is_canonical() -> None:
    # Given a parsed event
    event = parse_event(_raw())
    # When it is serialised
    data = event.to_json_bytes()
    # Then it is compact, sorted, UTF-8 with Chinese kept as is
    text = data.decode("utf-8")
    assert ", " not in text and ": " not in text
    assert "长安区" in text
    assert list(json.loads(data)) == sorted(json.loads(data))
    assert json.loads(data)["payload"]["holder_mobile"] == "+8613800138000"


def test_make_event_validates_and_accepts_python_values() -> None:
    # Given a payload with python dates and a fixed id
    import datetime as dt

    payload = {**_license(), "issued_on": dt.date(2024, 1, 1), "expires_on": dt.date(2025, 1, 1)}
    event_id = uuid.UUID(EVENT_ID)
    # When an event is made
    event = make_event("license.issued", payload, source="license-registry", event_id=event_id)
    # Then it is the same as a parsed one, with the phone normalised
    assert event.event_id == EVENT_ID
    assert isinstance(event.payload, LicensePayload)
    assert event.payload.holder_mobile == "+8613800138000"
    assert event.envelope.occurred_at.tzinfo is not None


def test_make_event_rejects_naive_time() -> None:
    # Given a naive occurred_at
    import datetime as dt

    # When an event is made with it
    with pytest.raises(EventRejected) as caught:
        make_event("license.issued", _license(), source="x", occurred_at=dt.datetime(2024, 1, 1))
    # Then it is a schema violation on occurred_at
    assert caught.value.reason == "schema_violation"
    assert "occurred_at" in caught.value.detail


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


REJECTS: list[Any] = [
    pytest.param(_raw() + b" " * (64 * 1024), "oversize", None, id="oversize"),
    pytest.param(b"\xff\xfe{}", "malformed_json", None, id="invalid-utf8"),
    pytest.param(b'{"event_id": ', "malformed_json", None, id="truncated-json"),
    pytest.param(b"[1, 2]", "malformed_json", "array", id="json-array"),
    pytest.param(b'"13800138000"', "malformed_json", "string", id="json-string"),
    pytest.param(b'{"a": NaN}', "malformed_json", None, id="nan"),
    pytest.param(b'{"a": 1, "a": 2}', "malformed_json", "duplicate", id="duplicate-key"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "oversize", None, id="deep-oversize"),
    pytest.param(b"[" * 30_000 + b"]" * 30_000, "malformed_json", None, id="deep-nesting"),
    pytest.param(_raw("license.expired"), "unknown_type", "license.issued", id="unknown-type"),
    pytest.param(_raw(schema_version=2), "unknown_version", "[1]", id="unknown-version"),
    pytest.param(_raw(event_type=_DROP), "schema_violation", "event_type", id="no-event-type"),
    pytest.param(_raw(schema_version=0), "schema_violation", "schema_version", id="version-zero"),
    pytest.param(
        _raw(schema_version="1"), "schema_violation", "schema_version", id="version-string"
    ),
    pytest.param(_raw(occurred_at=_DROP), "schema_violation", "occurred_at", id="missing-field"),
    pytest.param(
        _raw(occurred_at="2024-06-03T09:30:00"), "schema_violation", "occurred_at", id="naive"
    ),
    pytest.param(
        _raw(occurred_at=1717378200), "schema_violation", "occurred_at", id="unix-timestamp"
    ),
    pytest.param(_raw(event_id="not-a-uuid"), "schema_violation", "event_id", id="bad-uuid"),
    pytest.param(_raw(source="Case System"), "schema_violation", "source", id="bad-source"),
    pytest.param(_raw(extra="x"), "schema_violation", "extra", id="extra-envelope-field"),
    pytest.param(
        _raw(payload=_without(_license(), "holder_name")),
        "schema_violation",
        "payload.holder_name",
        id="missing-payload-field",
    ),
    pytest.param(
        _raw(payload={**_license(), "expires_on": "2023-05-10"}),
        "schema_violation",
        "expires_on must be after issued_on",
        id="expires-not-after-issue",
    ),
    pytest.param(
        _raw(payload={**_license(), "category": "fishing"}),
        "schema_violation",
        "payload.category",
        id="bad-category",
    ),
    pytest.param(
        _raw(payload={**_license(), "holder_mobile": "029-8888-6666"}),
        "schema_violation",
        "payload.holder_mobile: not a mainland mobile number",
        id="landline",
    ),
    pytest.param(
        _raw(payload={**_license(), "holder_name": "长" * 101}),
        "schema_violation",
        "payload.holder_name",
        id="too-long-string",
    ),
    pytest.param(
        _raw("case.submitted", _case(key_project=True)),
        "schema_violation",
        "project_steward is required",
        id="key-project-without-steward",
    ),
    pytest.param(
        _raw("case.completed", _case()),
        "schema_violation",
        "payload.completed_at",
        id="completed-without-completed-at",
    ),
    pytest.param(
        _raw(
            "case.submitted",
            _case(applicant={**_case()["applicant"], "special_groups": ["elderly", "elderly"]}),
        ),
        "schema_violation",
        "special_groups",
        id="repeated-special-group",
    ),
    pytest.param(
        _raw("case.submitted", _case(applicant={**_case()["applicant"], "age": 131})),
        "schema_violation",
        "payload.applicant.age",
        id="age-out-of-range",
    ),
    pytest.param(
        _raw("evaluation.submitted", _evaluation(citizen_mobile=None)),
        "schema_violation",
        "citizen_mobile is required",
        id="real-name-without-mobile",
    ),
    pytest.param(
        _raw("evaluation.submitted", _evaluation(rating=6)),
        "schema_violation",
        "payload.rating",
        id="rating-out-of-range",
    ),
    pytest.param(
        _raw("evaluation.submitted", _evaluation(real_name="yes")),
        "schema_violation",
        "payload.real_name",
        id="real-name-not-bool",
    ),
    pytest.param(
        _raw(payload={**_license(), "holder_id_card": "110105199001010123"}),
        "schema_violation",
        "payload.holder_id_card",
        id="extra-payload-field",
    ),
    pytest.param(
        _raw(payload={**_license(), DIGITS: 1}),
        "schema_violation",
        "Extra inputs",
        id="phone-as-field-name",
    ),
]


@pytest.mark.parametrize(("raw", "reason", "in_detail"), REJECTS)
def test_rejects_with_reason(raw: bytes, reason: str, in_detail: str | None) -> None:
    # Given an event that is wrong in one way
    # When it is parsed
    with pytest.raises(EventRejected) as caught:
        parse_event(raw)
    # Then the reason is right, the detail names the problem, and no phone number leaks
    err = caught.value
    assert err.reason == reason
    assert err.reason in REJECT_REASONS
    if in_detail is not None:
        assert in_detail in err.detail
    assert DIGITS not in err.detail and "0013 8000" not in err.detail
    assert "199001010123" not in err.detail
    assert len(err.detail) <= 500


def test_rejection_carries_type_and_id_when_readable() -> None:
    # Given a schema-violating license event
    raw = _raw(payload=_without(_license(), "license_id"))
    # When it is parsed
    with pytest.raises(EventRejected) as caught:
        parse_event(raw)
    # Then the exception names the event it could read
    assert (caught.value.event_type, caught.value.event_id) == ("license.issued", EVENT_ID)


def test_oversize_respects_custom_limit() -> None:
    # Given a valid event and a limit just below its size
    raw = _raw()
    # When it is parsed with that limit
    with pytest.raises(EventRejected) as caught:
        parse_event(raw, max_bytes=len(raw) - 1)
    # Then it is oversize, and the default limit accepts it
    assert caught.value.reason == "oversize"
    assert parse_event(raw).event_type == "license.issued"


def test_event_rejected_masks_detail_and_pickles() -> None:
    # Given a rejection whose detail carelessly contains a number
    err = EventRejected("schema_violation", f"bad {DIGITS}", event_type="t.x", event_id="e")
    # When it is pickled, as workers do
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own object
    # Then the number is masked and nothing is lost
    assert DIGITS not in err.detail
    assert (copy.reason, copy.detail, copy.event_type, copy.event_id) == (
        err.reason,
        err.detail,
        err.event_type,
        err.event_id,
    )
    assert str(err).startswith("schema_violation: ")


def test_event_rejected_refuses_unknown_reason() -> None:
    # Given a reason outside the contract
    # When a rejection is made with it
    # Then it is a programming error
    with pytest.raises(ValueError):
        EventRejected("nope", "x")


def test_spec_for_and_registry_rules() -> None:
    # Given the registry
    # When specs are looked up
    spec = spec_for("evaluation.submitted", 1)
    # Then evaluations are keyed by case so they share the case's partition
    assert (spec.family, spec.key_field) == ("evaluations", "case_id")
    assert spec_for("case.completed", 1).payload_model is CaseCompletedPayload
    with pytest.raises(EventRejected, match="unknown_type"):
        spec_for("nope.nope", 1)
    with pytest.raises(EventRejected, match="unknown_version"):
        spec_for("case.completed", 9)
    with pytest.raises(ValueError, match="already registered"):
        register("license.issued", 1, LicensePayload, family="licenses", key_field="license_id")
    with pytest.raises(ValueError, match="family"):
        register("x.y", 1, LicensePayload, family="other", key_field="license_id")


def test_categories_are_the_ten_from_data() -> None:
    # Given the category data file
    # When it is loaded
    categories = load_categories()
    # Then there are ten, with codes, Chinese names and a validity
    assert len(categories) == 10
    assert tuple(categories) == CATEGORY_CODES
    assert categories["road_transport"].name_zh == "道路运输经营许可证"
    assert all(c.issuing_department and c.validity_years > 0 for c in categories.values())


@pytest.mark.parametrize(
    ("detail", "shown"),
    [
        (
            "payload.\x1b[31mnote\n2026-01-01 INFO forged",
            "payload.\\x1b[31mnote\\n2026-01-01 INFO forged",
        ),
        ("id \u202egnp.exe", "id \\u202egnp.exe"),
        ("line\u2028break\rreturn\x00nul", "line\\u2028break\\rreturn\\x00nul"),
    ],
)
def test_a_rejection_detail_is_one_line_with_its_controls_visible(detail: str, shown: str) -> None:
    # Given a detail quoting what a sender chose (a field name, an id)
    # When the rejection is made
    rejected = EventRejected("schema_violation", detail)

    # Then it carries no control character: it goes to logs, headers and terminals
    assert rejected.detail == shown
