"""Mainland mobile numbers: every accepted form normalises to E.164, everything else is refused."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from schemas.phone import MobileNumber, normalize_mobile

E164 = "+8613800138000"


@pytest.mark.parametrize(
    "raw",
    [
        "+8613800138000",
        "8613800138000",
        "008613800138000",
        "13800138000",
        "138 0013 8000",
        "138-0013-8000",
        "+86 138 0013 8000",
        "+86-138-0013-8000",
        "0086 13800138000",
        "  13800138000  ",
    ],
)
def test_accepted_forms_normalise_to_e164(raw: str) -> None:
    # Given a number in one of the forms upstream systems write
    # When it is normalised
    result = normalize_mobile(raw)
    # Then it is the one E.164 form
    assert result == E164


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("02988886666", id="xian-landline"),
        pytest.param("029-8888-6666", id="landline-with-dashes"),
        pytest.param("1380013800", id="too-short"),
        pytest.param("138001380001", id="too-long"),
        pytest.param("12800138000", id="second-digit-2"),
        pytest.param("23800138000", id="not-starting-1"),
        pytest.param("1380013800a", id="letter"),
        pytest.param("+14155550123", id="us-number"),
        pytest.param("+85261234567", id="hong-kong"),
        pytest.param("+87 13800138000", id="other-country-code"),
        pytest.param("138  0013  8000", id="double-space"),
        pytest.param("１３８００１３８０００", id="full-width-digits"),
        pytest.param("", id="empty"),
        pytest.param("1" * 200, id="huge"),
    ],
)
def test_rejected_forms(raw: str) -> None:
    # Given something that is not a mainland mobile number
    # When it is normalised
    with pytest.raises(ValueError) as caught:
        normalize_mobile(raw)
    # Then the error says so without repeating the input
    assert str(caught.value) == "not a mainland mobile number"


class _Holder(BaseModel):
    mobile: MobileNumber


def test_pydantic_type_stores_e164() -> None:
    # Given a model with a MobileNumber field
    # When it validates a spaced number
    holder = _Holder(mobile="138 0013 8000")
    # Then the stored value is E.164
    assert holder.mobile == E164


def test_pydantic_type_rejects_landline_without_echoing_it() -> None:
    # Given a landline
    # When a model validates it
    with pytest.raises(ValidationError) as caught:
        _Holder(mobile="02988886666")
    # Then the message names the problem
    assert "not a mainland mobile number" in caught.value.errors()[0]["msg"]


def test_json_schema_pattern_matches_accepted_forms() -> None:
    # Given the JSON schema of the MobileNumber type
    import re

    schema = _Holder.model_json_schema()["properties"]["mobile"]
    # When its pattern is applied to the accepted forms and to a landline
    pattern = re.compile(schema["pattern"])
    # Then it accepts exactly what normalize_mobile accepts
    assert schema["type"] == "string"
    assert schema["maxLength"] == 20
    assert pattern.search("+86 138 0013 8000")
    assert pattern.search("008613800138000")
    assert not pattern.search("02988886666")
