"""Text that may reach an SMS (schemas.events.SmsName / sms_text_problem), the clock-skew bound
of parse_event, and the same rule at render time (notifiers.templates) and on the final text
(notifiers.sms.text.contains_url)."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import uuid
from typing import Any

import pytest

from notifiers.errors import PermanentDeliveryError, UnsafeTextError
from notifiers.sms.text import contains_url
from notifiers.templates import SmsTemplate, TemplateError, UnsafeValueError, load_templates
from schemas.errors import EventRejected
from schemas.events import contains_phone, parse_event, sms_text_problem

SIGNATURE = "【长安政务】"
NOW = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)

# ---- the tables -------------------------------------------------------------------------------
#: Values upstream systems really send, in the fields that may reach an SMS: they all pass.
GENUINE = [
    "张三",
    "王秀英",
    "欧阳娜娜",
    "阿卜杜拉·买买提",
    "爱新觉罗·玄烨",
    "玛丽・居里",
    "John Smith",
    "Mary-Jane O'Neil",
    "Zoë Müller",
    "西安市长安区悦来宾馆",
    "西安某某科技有限公司（长安分公司）",
    "H&M商贸有限公司",
    "长安区住房和城乡建设局",
    "人力资源和社会保障局",
    "长安区政务服务中心",
    "长安区第16便民服务站",
    "韦曲街道便民服务站",
    "建筑工程施工许可证核发",
    "《食品经营许可证》核发",
    "个体工商户设立、变更登记",
    "医疗机构执业登记：变更",
    "居民身份证换领—加急",
    "“秦务员”APP帮办",
    "应缴12.5元",
    "第3.5期工程",
    "社保卡补办。",
    "SX-WS-2024-000123",
    "SX-SP-2023-0456",
    "JY16101160012345",
    "陕卫公证字〔2024〕第610116000123号",
    "LIC-FOOD-000123",
    "95588",
    "拨打12345咨询",
    "2027年01月15日",
]

#: Hostile values, each refused with the problem it shows (never the text itself).
HOSTILE = [
    # phishing with a phone number, in every dialable shape
    ("您的证照已冻结，请致电4008208820解冻", "phone number"),
    ("请致电400-820-8820核实", "phone number"),
    ("请致电800 820 8820", "phone number"),
    ("联系13800138000办理", "phone number"),
    ("联系138 0013 8000办理", "phone number"),
    ("联系+86 138 0013 8000", "phone number"),
    ("电话8613800138000", "phone number"),
    ("请回电029-88886666", "phone number"),
    ("请回电(029)88886666", "phone number"),
    ("请回电8888 6666", "phone number"),
    ("请拨００８６１３８００１３８０００", "phone number"),  # full-width digits
    ("国际长途+1 202 555 0100", "phone number"),
    # a second message under a fake signature
    ("食品经营许可\n【公安局】您涉嫌洗钱", "line break"),
    ("食品经营许可\r\n请速回电", "line break"),
    ("办结\u2028【公安局】", "line break"),
    ("【公安局】您涉嫌违法", "brackets"),
    ("〖长安政务〗通知", "brackets"),
    # links, in every form the no-URL rule missed
    ("请登录gov-check。cn核验", "link"),
    ("请访问ｅｖｉｌ．ｃｏｍ", "link"),
    ("请访问evil.ru", "link"),
    ("详见10.1.2.3:8080/a", "link"),
    ("详见10。1。2。3", "link"),
    ("访问例子.中国办理", "link"),
    ("访问例子．中国办理", "link"),
    ("访问政务。cn办理", "link"),
    ("访问xn--fiqs8s", "link"),
    ("详见https://x.cn/a", "link"),
    ("详见ｈｔｔｐｓ：／／x", "link"),
    ("请访问www.gov-check", "link"),
    ("tel:110", "link"),
    ("办理点t.cn", "link"),
    ("请访问长安.abc", "link"),
    ("evil·com", "link"),
    # hidden or foreign characters
    ("张\u200b三", "control"),
    ("张三\u202e", "control"),
    ("张三\x00", "control"),
    ("张三\x1b[31m", "control"),
    ("张三😀", "not allowed"),
    ("张三<b>", "not allowed"),
    ("张三@qq", "not allowed"),
    ("张三\u3164", "not allowed"),
    ("张三#1", "not allowed"),
]


@pytest.mark.parametrize("value", GENUINE)
def test_genuine_values_pass(value: str) -> None:
    # When / Then
    assert sms_text_problem(value) is None


@pytest.mark.parametrize(("value", "problem"), HOSTILE)
def test_hostile_values_are_refused_with_what_they_show(value: str, problem: str) -> None:
    # When
    found = sms_text_problem(value)

    # Then
    assert found is not None and problem in found


def test_the_tables_are_big_enough() -> None:
    # Then: the brief asks for at least 25 of each
    assert len(GENUINE) >= 25 and len(HOSTILE) >= 25


@pytest.mark.parametrize(
    ("text", "dialable"),
    [
        ("13800138000", True),
        ("4008208820", True),
        ("029-88886666", True),
        ("88886666", True),
        ("JY16101160012345", False),  # part of a code: touches letters
        ("SX-SP-2023-0456", False),  # joined to letters by hyphens
        ("610116202406030001", False),  # 18 digits: not a number anyone dials
        ("12345", False),  # the government service hotline is fine
    ],
)
def test_phone_shapes_follow_the_numbering_plan(text: str, dialable: bool) -> None:
    # Then
    assert contains_phone(text) is dialable


# ---- at ingest --------------------------------------------------------------------------------
def _case_raw(*, occurred_at: dt.datetime = NOW, **changes: Any) -> bytes:
    payload: dict[str, Any] = {
        "case_id": "CA-SAFE-1",
        "service_item": "食品经营许可证核发",
        "department": "市场监督管理局",
        "service_point": {
            "id": "SC-CHANGAN",
            "name": "长安区政务服务中心",
            "level": "service_centre",
        },
        "applicant": {"kind": "citizen", "name": "王秀英", "mobile": "13900000001"},
        "key_project": True,
        "project_steward": {"staff_id": "S-1", "name": "刘管家", "department": "市场监督管理局"},
        "submitted_at": "2026-11-26T09:00:00+08:00",
    }
    for path, value in changes.items():
        target = payload
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "case.submitted",
            "schema_version": 1,
            "occurred_at": occurred_at.isoformat(),
            "source": "case-system",
            "payload": payload,
        },
        ensure_ascii=False,
    ).encode()


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("service_item", "payload.service_item"),
        ("department", "payload.department"),
        ("service_point__name", "payload.service_point.name"),
        ("applicant__name", "payload.applicant.name"),
        ("project_steward__name", "payload.project_steward.name"),
        ("project_steward__department", "payload.project_steward.department"),
    ],
)
@pytest.mark.parametrize(("value", "problem"), HOSTILE[::6])
def test_parse_event_refuses_unsafe_text_naming_the_field(
    field: str, path: str, value: str, problem: str
) -> None:
    # Given
    raw = _case_raw(**{field: value})

    # When
    with pytest.raises(EventRejected) as caught:
        parse_event(raw)

    # Then: its own reason, the field named, the text not echoed back
    assert caught.value.reason == "unsafe_text"
    assert caught.value.detail.startswith(f"{path}: unsafe text:")
    assert problem in caught.value.detail
    assert value not in caught.value.detail


def test_license_fields_that_reach_the_reminder_are_checked_too() -> None:
    # Given: a license whose id and issuing department carry an attack
    base = {
        "license_id": "SX-WS-2024-000123",
        "category": "food_business",
        "holder_name": "爱新觉罗·玄烨",
        "holder_mobile": "13800138000",
        "issuing_department": "长安区市场监督管理局",
        "issued_on": "2024-07-01",
        "expires_on": "2028-06-30",
    }
    for field, value in (
        ("license_id", "请致电4008208820"),
        ("issuing_department", "市场局\n【公安局】"),
        ("holder_name", "evil.ru"),
    ):
        raw = json.dumps(
            {
                "event_id": str(uuid.uuid4()),
                "event_type": "license.issued",
                "schema_version": 1,
                "occurred_at": NOW.isoformat(),
                "source": "license-registry",
                "payload": {**base, field: value},
            },
            ensure_ascii=False,
        ).encode()

        # When / Then
        with pytest.raises(EventRejected, match=f"unsafe_text: payload.{field}"):
            parse_event(raw)


def test_genuine_text_is_accepted_and_normalised() -> None:
    # Given: full-width punctuation and an ideographic space, as some systems send them
    raw = _case_raw(service_item="食品经营许可（新办）", service_point__name="长安区　政务服务中心")

    # When
    event = parse_event(raw)

    # Then: NFKC, in the payload and in what goes on to Kafka
    assert event.payload.service_item == "食品经营许可(新办)"  # type: ignore[attr-defined]
    assert event.payload.service_point.name == "长安区 政务服务中心"  # type: ignore[attr-defined]
    assert "食品经营许可(新办)" in event.to_json_bytes().decode()


# ---- occurred_at against the receiver's clock ---------------------------------------------------
@pytest.mark.parametrize(
    ("occurred_at", "max_skew", "accepted"),
    [
        (NOW, 300, True),
        (NOW - dt.timedelta(days=400), 300, True),  # late events are fine
        (NOW + dt.timedelta(seconds=299), 300, True),  # a drifting upstream clock
        (NOW + dt.timedelta(seconds=301), 300, False),
        (dt.datetime(9999, 12, 31, tzinfo=dt.UTC), 300, False),
        (NOW + dt.timedelta(minutes=10), dt.timedelta(minutes=15), True),
        (NOW + dt.timedelta(seconds=61), 60, False),
    ],
)
def test_parse_event_with_now_refuses_events_from_the_future(
    occurred_at: dt.datetime, max_skew: float | dt.timedelta, accepted: bool
) -> None:
    # Given
    raw = _case_raw(occurred_at=occurred_at)

    # When / Then
    if accepted:
        assert parse_event(raw, now=NOW, max_skew=max_skew).event_type == "case.submitted"
    else:
        with pytest.raises(EventRejected) as caught:
            parse_event(raw, now=NOW, max_skew=max_skew)
        assert caught.value.reason == "occurred_in_future"
        assert "ahead of the receiver's clock" in caught.value.detail
        assert caught.value.event_type == "case.submitted"


def test_a_revocation_dated_9999_is_refused_by_the_default_bound() -> None:
    # Given: the attack of issue 11, with the default skew
    raw = json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "license.revoked",
            "schema_version": 1,
            "occurred_at": "9999-12-31T00:00:00+00:00",
            "source": "license-registry",
            "payload": {"license_id": "SX-WS-2024-000123", "revoked_on": "2026-11-26"},
        }
    ).encode()

    # When / Then
    with pytest.raises(EventRejected, match="occurred_in_future"):
        parse_event(raw, now=NOW)
    # and without a clock (tests, make_event) the time is not judged
    assert parse_event(raw).event_type == "license.revoked"


def test_now_must_be_timezone_aware() -> None:
    # When / Then
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_event(_case_raw(), now=dt.datetime(2026, 11, 26))


# ---- at render time ---------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "problem"), HOSTILE)
def test_render_refuses_an_unsafe_value_naming_the_parameter(value: str, problem: str) -> None:
    # Given: a value that came from the database or a job, not through ingest
    template = load_templates()["survey_invitation"]
    values = {
        "service_item": "食品经营许可",
        "service_point_name": value,
        "completed_on": "11月26日",
    }

    # When
    with pytest.raises(UnsafeValueError) as caught:
        template.render(values, signature=SIGNATURE)

    # Then: permanent (never retried), a template error to existing callers, the parameter named
    error = caught.value
    assert isinstance(error, PermanentDeliveryError) and isinstance(error, TemplateError)
    assert isinstance(error, UnsafeTextError)
    assert error.field == "service_point_name" and error.reason == "unsafe_text"
    assert "service_point_name" in str(error) and problem in str(error)
    assert value not in str(error)


def test_render_sends_genuine_values_normalised() -> None:
    # Given
    template = SmsTemplate.parse("t", "{item}将于{days}天后到期。")

    # When
    text = template.render({"item": "卫生许可证（公共场所）", "days": 30}, signature=SIGNATURE)

    # Then
    assert text == "【长安政务】卫生许可证(公共场所)将于30天后到期。"


def test_unsafe_text_errors_survive_pickling() -> None:
    # Given: workers pickle errors into results and dead letters
    error = UnsafeValueError("template 't': value of item contains a link", field="item")

    # When
    again = pickle.loads(pickle.dumps(error))  # noqa: S301  (our own bytes)

    # Then
    assert type(again) is UnsafeValueError
    assert (again.field, again.reason, str(again)) == ("item", "unsafe_text", str(error))


# ---- the link filter on the final text ----------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "【长安政务】请登录gov-check。cn核验",
        "【长安政务】请访问ｅｖｉｌ．ｃｏｍ",
        "【长安政务】请访问evil.ru",
        "【长安政务】详见10.1.2.3:8080/a",
        "【长安政务】访问例子.中国",
        "【长安政务】访问xn--fiqs8s.xn--55qx5d",
        "【长安政务】详见ｈｔｔｐ：／／x",
    ],
)
def test_the_link_filter_catches_every_form_on_the_final_text(text: str) -> None:
    # Then
    assert contains_url(text)


def test_the_shipped_templates_still_render_without_a_link() -> None:
    # Given
    templates = load_templates()

    # When
    text = templates["renewal_reminder"].render(
        {
            "category_name": "食品经营许可证",
            "license_id": "SX-WS-2024-000123",
            "expires_on": "2027年01月15日",
            "days_left": 30,
            "issuing_department": "长安区市场监督管理局",
        },
        signature=SIGNATURE,
        opt_out_hint="退订请致电12345",
    )

    # Then
    assert not contains_url(text)
    assert "SX-WS-2024-000123" in text
