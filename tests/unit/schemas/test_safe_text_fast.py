"""The fast path of sms_text_problem against the character-by-character check it stands in for:
the same answer, word for word, on every string of a generated corpus.

The corpus: every string constant of the tests and fixtures that feed hostile or genuine text
(issue 11's hostile inputs, the safe-text tables, the generator's bad events), each alone and
inside a sentence; and seeded random strings drawn from allowed characters, refused ones, and
fragments of links and phone numbers, so the fast path meets both verdicts and the slow one
every reason.
"""

from __future__ import annotations

import ast
import random
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas.events import (
    PLAIN_RANGES,
    SMS_PUNCTUATION,
    sms_text_problem,
    sms_text_problem_detailed,
)

ROOT = Path(__file__).resolve().parents[3]
#: Files whose string constants are the hostile (and genuine) inputs the project tests with.
SOURCES = (
    "tests/unit/schemas/test_safe_text.py",
    "tests/unit/schemas/test_events.py",
    "tests/unit/schemas/test_phone.py",
    "tests/integration/ingest/test_hostile_inputs.py",
    "tests/integration/ingest/test_publisher_identity.py",
    "tests/support/hostile.py",
    "producers/generator.py",
)
#: Random strings per family; with the harvested ones, ~25,000 comparisons (about a second).
PER_FAMILY = 5_000
SEED = 20261206

# ---- the alphabets ------------------------------------------------------------------------------
ASCII_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
CJK = (
    "张王李赵刘陈杨黄周吴长安区政务服务中心市场监督管理局"
    "食品经营许可证核发便民站街道社保卡补办䶵丂龥"
)
#: Allowed, but not on the fast path: accented and other letters, combining marks on letters,
#: full-width forms NFKC turns into plain ones.
ALLOWED_SLOW = "éüÖçñßøåΩжЯ\u0f40\u0f72\u0301\u0308ａＺ０９，（）：；！？\u3000"
#: Refused one way or another (or changed by NFKC into something refused or plain).
REFUSED = (
    "\n\r\t\x00\x1b\x7f\x85\u200b\u200d\u200e\u202e\u2028\u2029\ufeff"
    "【】〖〗\u115f\u1160\u3164\uffa0"
    "<>@#$%/\\_=+*~^|`{}[]😀€¥©®™"
    "．｡・·\u212a\u017f\u0131\u0130²①٣½ﬁ豈\ufe52\u2024"
)
#: Pieces of links and phone numbers, plain and disguised.
FRAGMENTS = (
    "http://", "https://", "ftp:", "tel:", "sms:", "weixin://", "www.", "WWW。", "xn--", "XN--",
    ".cn", ".com", ".ru", "。cn", "·com", "・net", ".中国", "。中国", ".abc", "10.1.2.3", "1.2",
    "+86 ", "+1 ", "138 0013 8000", "13800138000", "400-820-8820", "029-8888", "8888 6666",
    "12345", "95588", "610116199001011234", "12.5", "SX-", "-2024-", "JY", "e.g.", "Mr.Smith",
    ":", ".", "。", "-", " ", "  ",
)  # fmt: skip


def _harvested() -> list[str]:
    """Every string constant of :data:`SOURCES` (short enough to be a field)."""
    found: set[str] = set()
    for name in SOURCES:
        tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if 0 < len(node.value) <= 2_000:
                    found.add(node.value)
    return sorted(found)


def _random(rng: random.Random, pools: list[str | tuple[str, ...]]) -> str:
    pieces = []
    for _ in range(rng.randint(1, 24)):
        pool = rng.choice(pools)
        pieces.append(rng.choice(pool))
    return "".join(pieces)


PLAIN_PUNCT = "".join(sorted(SMS_PUNCTUATION))


def _family(pools: list[str | tuple[str, ...]]) -> Callable[[], Iterator[str]]:
    def strings() -> Iterator[str]:
        rng = random.Random(f"{SEED}:{pools!r}")
        for _ in range(PER_FAMILY):
            yield _random(rng, pools)

    return strings


def _harvested_family() -> Iterator[str]:
    for text in _harvested():
        yield text
        yield f"请{text}办理"
        yield f"{text} 12345"


#: (name, strings): each family of the corpus.
CORPUS: list[tuple[str, Callable[[], Iterator[str]]]] = [
    ("harvested", _harvested_family),
    ("plain", _family([ASCII_LETTERS, DIGITS, CJK, PLAIN_PUNCT])),
    ("plain-and-fragments", _family([ASCII_LETTERS, DIGITS, CJK, PLAIN_PUNCT, FRAGMENTS])),
    ("allowed", _family([ASCII_LETTERS, CJK, PLAIN_PUNCT, ALLOWED_SLOW])),
    ("refused", _family([CJK, REFUSED, FRAGMENTS])),
    (
        "everything",
        _family(
            [
                ASCII_LETTERS,
                DIGITS,
                CJK,
                PLAIN_PUNCT,
                ALLOWED_SLOW,
                REFUSED,
                FRAGMENTS,
                tuple(_harvested()),
            ]
        ),
    ),
]


def _plain(text: str) -> bool:
    """Whether ``text`` takes the fast path (after NFKC, as sms_text_problem reads it)."""
    return all(
        ch in SMS_PUNCTUATION or any(lo <= ch <= hi for lo, hi in PLAIN_RANGES)
        for ch in unicodedata.normalize("NFKC", text)
    )


# ---- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "strings"), CORPUS, ids=[name for name, _ in CORPUS])
def test_fast_and_detailed_checks_agree_on_every_string(
    family: str, strings: Callable[[], Iterator[str]]
) -> None:
    # When
    disagreements = [
        (text, fast, slow)
        for text in strings()
        if (fast := sms_text_problem(text)) != (slow := sms_text_problem_detailed(text))
    ]

    # Then
    assert disagreements == [], f"{len(disagreements)} disagreements, e.g. {disagreements[:5]!r}"


def test_the_corpus_reaches_every_verdict_on_both_paths() -> None:
    # When: the verdicts of the whole corpus, by the path the fast check takes
    verdicts: Counter[tuple[bool, str]] = Counter()
    for _, strings in CORPUS:
        for text in strings():
            problem = sms_text_problem(text)
            verdicts[(_plain(text), "ok" if problem is None else problem.split(" (")[0])] += 1

    # Then: plain text passed and refused for a link and for a phone number; everything else
    # met every reason of the detailed check
    fast = {verdict for (plain, verdict) in verdicts if plain}
    slow = {verdict for (plain, verdict) in verdicts if not plain}
    assert fast == {"ok", "contains a link", "contains a phone number"}
    assert slow >= {
        "ok",
        "contains a line break or control character",
        "contains 【】 brackets, reserved for the SMS signature",
        "contains a link",
        "contains a phone number",
        "contains a character not allowed in an SMS",
    }


def test_the_harvest_holds_the_hostile_tables() -> None:
    # Then: the constants of issue 11's table and of the safe-text tables are in the corpus
    harvested = set(_harvested())
    assert {
        "王\u202e秀英",
        "〖公安局〗王伟",
        "访问例子.中国",
        "您的证照已冻结，请致电4008208820解冻",
    } <= harvested
    assert len(harvested) > 500


def test_every_plain_character_is_allowed_by_the_detailed_rule() -> None:
    # Given: every character the fast path lets through without a look at it
    plain = [chr(code) for lo, hi in PLAIN_RANGES for code in range(ord(lo), ord(hi) + 1)] + sorted(
        SMS_PUNCTUATION
    )

    # When
    refused = [
        f"U+{ord(ch):04X}"
        for ch in plain
        if sms_text_problem_detailed(ch) is not None or not unicodedata.is_normalized("NFKC", ch)
    ]

    # Then: none is a control character, a bracket, a combining mark (refused alone: it needs
    # a letter before it) or changed by NFKC
    assert refused == []
