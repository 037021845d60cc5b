"""Template validation at load time and rendering (notifiers.templates)."""

from __future__ import annotations

import pytest

from notifiers.templates import REQUIRED_PLACEHOLDERS, SmsTemplate, TemplateError, load_templates

SIGNATURE = "【长安政务】"


@pytest.mark.parametrize(
    ("text", "required", "match"),
    [
        ("您的{a}到期", {"a", "b"}, r"missing placeholders \['b'\]"),
        ("您的{a}{c}到期", {"a"}, r"unknown placeholders \['c'\]"),
        ("详情见 https://example.com/{a}", {"a"}, "URL"),
        ("登录t.cn/abc查看{a}", None, "URL"),
        ("您的{a到期", None, "syntax"),
        ("您的}到期", None, "syntax"),
        ("您的{}到期", None, "plain name"),
        ("您的{0}到期", None, "plain name"),
        ("您的{a.b}到期", None, "plain name"),
        ("您的{a[0]}到期", None, "plain name"),
        ("您的{a:{b}}到期", None, "nested"),
        ("   ", None, "empty"),
    ],
)
def test_parse_rejects_bad_templates(text: str, required: set[str] | None, match: str) -> None:
    # When / Then
    with pytest.raises(TemplateError, match=match):
        SmsTemplate.parse("t", text, required=required)


def test_parse_collects_placeholders() -> None:
    # When
    template = SmsTemplate.parse("t", "{a}和{b}，再一次{a}", required={"a", "b"})

    # Then
    assert template.placeholders == frozenset({"a", "b"})
    assert template.name == "t"


def test_render_adds_signature_and_hint() -> None:
    # Given
    template = SmsTemplate.parse("t", "您的{item}还有{days}天到期。")

    # When
    text = template.render({"item": "证件", "days": 7}, signature=SIGNATURE, opt_out_hint="回T退订")

    # Then
    assert text == "【长安政务】您的证件还有7天到期。回T退订"


def test_render_ignores_extra_values() -> None:
    # Given
    template = SmsTemplate.parse("t", "您好{name}")

    # When
    text = template.render({"name": "张三", "unused": "x"}, signature=SIGNATURE)

    # Then
    assert text == "【长安政务】您好张三"


def test_render_missing_value_names_it() -> None:
    # Given
    template = SmsTemplate.parse("t", "{a}{b}")

    # When / Then
    with pytest.raises(TemplateError, match="no value for b"):
        template.render({"a": 1}, signature=SIGNATURE)


@pytest.mark.parametrize(
    ("template_text", "value"),
    [
        ("详情{link}", "https://example.com"),
        ("详情{link}", "t.cn/abc"),
        ("登录{host}.cn/x办理", "gov"),  # a domain formed by literal text and a value
    ],
)
def test_render_refuses_urls(template_text: str, value: str) -> None:
    # Given
    template = SmsTemplate.parse("t", template_text)

    # When / Then
    with pytest.raises(TemplateError, match="URL"):
        template.render({"link": value, "host": value}, signature=SIGNATURE)


def test_render_requires_a_signature() -> None:
    # Given
    template = SmsTemplate.parse("t", "您好")

    # When / Then
    with pytest.raises(TemplateError, match="signature"):
        template.render({}, signature=" ")


def test_template_error_is_a_value_error() -> None:
    # Then
    assert issubclass(TemplateError, ValueError)


def test_shipped_templates_all_load() -> None:
    # When
    templates = load_templates()

    # Then
    assert set(REQUIRED_PLACEHOLDERS) <= set(templates)
    for name, required in REQUIRED_PLACEHOLDERS.items():
        assert templates[name].placeholders == required
    renewal = templates["renewal_reminder"]
    assert not renewal.text.endswith("\n")
    assert renewal.text.startswith("您的{category_name}（证号{license_id}）")


# ---- the case-flow templates -----------------------------------------------------------------
NEW_TEMPLATES = {
    "survey_invitation": {"service_item", "service_point_name", "completed_on"},
    "callback_notice": {"service_item", "steward_name", "callback_date"},
    "rectification_closed": {"service_item", "department", "outcome"},
}
SURVEY_VALUES = {
    "service_item": "食品经营许可证核发",
    "service_point_name": "长安区政务服务中心",
    "completed_on": "03月03日",
}
# The default of settings.opt_out_hint: no reply keyword, Twilio allows no replies to China.
OPT_OUT_HINT = "退订请致电12345"


@pytest.mark.parametrize(("name", "required"), sorted(NEW_TEMPLATES.items()))
def test_case_flow_templates_load_with_their_placeholders(name: str, required: set[str]) -> None:
    # When
    templates = load_templates()

    # Then
    assert REQUIRED_PLACEHOLDERS[name] == required
    assert templates[name].placeholders == required
    assert not templates[name].text.endswith("\n")


def test_survey_invitation_says_how_to_rate_without_a_link() -> None:
    # Given
    from notifiers.sms.text import contains_url, count_segments

    template = load_templates()["survey_invitation"]

    # When
    text = template.render(SURVEY_VALUES, signature=SIGNATURE, opt_out_hint=OPT_OUT_HINT)

    # Then
    assert text.startswith("【长安政务】") and text.endswith(OPT_OUT_HINT)
    assert not contains_url(text)
    for channel in ("“秦务员”APP", "政务服务网", "大厅评价器"):
        assert channel in text
    for rating in ("5非常满意", "4满意", "3基本满意", "2不满意", "1非常不满意"):
        assert rating in text
    # UCS-2: over 70 units it is split in parts of 67
    units = len(text)
    expected = 1 if units <= 70 else -(-units // 67)
    assert count_segments(text) == expected == 2


@pytest.mark.parametrize(
    ("name", "values"),
    [
        (
            "callback_notice",
            {
                "service_item": "秦岭生态产业园项目",
                "steward_name": "王建国",
                "callback_date": "03月06日",
            },
        ),
        (
            "rectification_closed",
            {
                "service_item": "社保卡补办",
                "department": "人力资源和社会保障局",
                "outcome": "x" * 60,
            },
        ),
    ],
)
def test_case_flow_templates_render_without_a_link(name: str, values: dict[str, str]) -> None:
    # Given
    from notifiers.sms.text import contains_url, count_segments

    template = load_templates()[name]

    # When
    text = template.render(values, signature=SIGNATURE, opt_out_hint=OPT_OUT_HINT)

    # Then
    assert not contains_url(text)
    assert all(value in text for value in values.values())
    assert count_segments(text) <= 3
