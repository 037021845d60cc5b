"""Segment counting and the no-URL rule (notifiers.sms.text)."""

from __future__ import annotations

import random

import pytest

from notifiers.sms.text import (
    GSM7_SEGMENT,
    UCS2_SEGMENT,
    URL_PATTERN,
    contains_url,
    count_segments,
    is_gsm7,
)
from notifiers.templates import load_templates
from schemas.events import _CJK_TLDS, _DOMAIN_DOT, LINK_HINT, LINK_PATTERN

RENEWAL_VALUES = {
    "category_name": "食品经营许可证",
    "license_id": "JY16101160012345",
    "expires_on": "2026年12月31日",
    "days_left": 30,
    "issuing_department": "长安区市场监督管理局",
}


def test_segment_sizes_are_the_standard_ones() -> None:
    # Then
    assert GSM7_SEGMENT == (160, 153)
    assert UCS2_SEGMENT == (70, 67)


def test_empty_text_raises() -> None:
    # When / Then
    with pytest.raises(ValueError, match="empty"):
        count_segments("")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # GSM-7: 160 in one, then 153 per part
        ("a", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        # extension characters cost two septets: 80 × "€" = 160 septets, 81 = 162
        ("€" * 80, 1),
        ("€" * 81, 2),
        ("a" * 159 + "[", 2),
        # UCS-2: 70 in one, then 67 per part
        ("中" * 70, 1),
        ("中" * 71, 2),
        ("中" * 134, 2),
        ("中" * 135, 3),
        # one Chinese character turns 160 ASCII characters into UCS-2
        ("a" * 69 + "中", 1),
        ("a" * 70 + "中", 2),
        # outside the BMP: two UTF-16 units each
        ("😀" * 35, 1),
        ("😀" * 36, 2),
        ("中" * 69 + "😀", 2),
    ],
)
def test_count_segments(text: str, expected: int) -> None:
    # When
    segments = count_segments(text)

    # Then
    assert segments == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello @ £5, {ok}?", True),
        ("ÄÖÑÜ§¿äöñüà", True),
        ("中文", False),
        ("naïve", False),  # ï is not in GSM 03.38
        ("\x1b", False),  # ESC alone is not a character
        ("😀", False),
    ],
)
def test_is_gsm7(text: str, expected: bool) -> None:
    # Then
    assert is_gsm7(text) is expected


def test_realistic_renewal_sms_is_two_segments() -> None:
    # Given
    template = load_templates()["renewal_reminder"]

    # When
    text = template.render(RENEWAL_VALUES, signature="【长安政务】", opt_out_hint="回T退订")

    # Then: 101 UCS-2 characters → ceil(101 / 67) = 2
    assert len(text) == 101
    assert not is_gsm7(text)
    assert count_segments(text) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("详情见 http://example.com", True),
        ("详情见https://zwfw.shaanxi.gov.cn/x?a=1", True),
        ("请登录www.gov.cn办理", True),
        ("WWW.GOV.CN", True),
        ("点击t.cn/abc查看", True),
        ("gov.cn/x", True),
        ("访问abc.gov.cn/x", True),
        ("访问zwfw.gov.cn办理", True),
        ("t.cn", True),
        ("您的证件将于2026.12.01到期", False),
        ("应缴费用12.5元", False),
        ("请到政务服务中心或登录政务服务网办理。", False),
        ("证号AB.12345", False),
        ("版本v1.2.3", False),
        ("e.g. Mr.Smith", False),
        ("", False),
    ],
)
def test_contains_url(text: str, expected: bool) -> None:
    # Then
    assert contains_url(text) is expected


def test_text_without_a_link_hint_matches_no_link_pattern() -> None:
    # contains_url and the ingest rule skip the searches on text without a LINK_HINT: no
    # pattern may match any of it.
    # Given 20,000 seeded random texts of letters, digits, CJK (TLD words among them), SMS
    # punctuation, "/", "@", "-", "xn-", and every dot and the colon, short and long
    rng = random.Random(12)
    alphabet = list("abcdefghijklmnopqrstuvwxyzWWW0123456789/@-_?#=&%，、（）【】 政务中国网址公司")
    alphabet += [*".。·・:", "xn-", "ww", "http", "cn", "com", "t", "gov", "。", "."]
    alphabet += _CJK_TLDS.split("|")
    texts = ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(20000)]
    unhinted = [text for text in texts if LINK_HINT.search(text) is None]
    assert len(unhinted) > 2000  # the property is tried on many texts, dots among them
    assert sum(any(dot in text for dot in ".。·・") for text in unhinted) > 1000

    # When / Then
    for text in unhinted:
        assert URL_PATTERN.search(text) is None, text
        assert LINK_PATTERN.search(text) is None, text
        assert _DOMAIN_DOT.search(text) is None, text
        assert contains_url(text) is False


@pytest.mark.parametrize("tld", _CJK_TLDS.split("|"))
def test_a_dot_before_any_ideographic_tld_is_a_hint(tld: str) -> None:
    # Given an ideographic domain ("例子.中国")
    text = f"请访问例子.{tld}办理"

    # Then the hint sees it, and the link is found
    assert LINK_HINT.search(text) is not None
    assert contains_url(text) is True


def test_a_chinese_sms_s_sentence_stops_are_no_hint() -> None:
    # Given the renewal reminder as rendered ("。" between sentences, full-width punctuation)
    body = load_templates()["renewal_reminder"].render(
        RENEWAL_VALUES, signature="【长安政务】", opt_out_hint="回T退订"
    )

    # Then no link search is needed, and none would find one
    assert "。" in body
    assert LINK_HINT.search(body) is None
    assert LINK_PATTERN.search(body) is None and URL_PATTERN.search(body) is None
