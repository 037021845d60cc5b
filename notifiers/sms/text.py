"""SMS text rules: encoding, segment counting, and the no-URL rule for mainland China.

Segments are what the provider bills and what the citizen's phone stitches together, so every
notification records its count. A message is GSM-7 only when every character is in the GSM 03.38
basic set or its extension table; one Chinese character makes the whole message UCS-2.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata

from schemas.events import LINK_HINT, LINK_PATTERN

__all__ = [
    "GSM7_SEGMENT",
    "UCS2_SEGMENT",
    "URL_PATTERN",
    "contains_url",
    "count_segments",
    "is_gsm7",
]

#: (characters in a single GSM-7 SMS, characters per part once split); the 7 lost septets
#: carry the concatenation header.
GSM7_SEGMENT = (160, 153)
#: (UTF-16 code units in a single UCS-2 SMS, code units per part once split).
UCS2_SEGMENT = (70, 67)

# GSM 03.38 basic character set, without ESC (0x1B), which only introduces the extension table.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each costs two septets (ESC + the character).
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


def is_gsm7(text: str) -> bool:
    """True when ``text`` can be sent in the GSM 03.38 alphabet (basic set + extension table)."""
    return all(ch in _GSM7_BASIC or ch in _GSM7_EXTENSION for ch in text)


def _utf16_units(text: str) -> int:
    # Characters outside the BMP (emoji, rare CJK) are a surrogate pair: two UCS-2 units. The
    # codec counts them in C (a Python loop over the characters was ~3% of a worker's CPU).
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def count_segments(text: str) -> int:
    """Number of SMS parts ``text`` is sent as.

    Parameters:
      text: the full body, signature included.

    Raises:
      ValueError: when ``text`` is empty (an empty SMS is a bug upstream, not one segment).

    Returns:
      1 when it fits one SMS, else the number of concatenated parts. This ignores the rule that
      a part boundary never splits an escape sequence or a surrogate pair, which can add one
      part in rare edge cases; providers' counts (Twilio's ``num_segments``) win when known.
    """
    if not text:
        raise ValueError("an SMS body cannot be empty")
    if is_gsm7(text):
        single, multi = GSM7_SEGMENT
        units = len(text) + sum(1 for ch in text if ch in _GSM7_EXTENSION)
    else:
        single, multi = UCS2_SEGMENT
        units = _utf16_units(text)
    if units <= single:
        return 1
    return math.ceil(units / multi)


# Top-level domains that count as a link even without a path ("t.cn", "abc.gov.cn"). Kept short
# on purpose: with a path ("xyz.ab/x") any alphabetic TLD counts, so only bare domains need it,
# and a long list would flag English abbreviations.
_BARE_TLDS = (
    "cn|com|net|org|gov|edu|info|biz|io|cc|me|tv|top|xyz|vip|site|online|app|link|ly|gl|to"
    "|shop|club|wang|ink|mobi|asia|hk|mo|tw|us|uk|jp|de"
)

#: Anything a carrier would treat as a link: ``http(s)://``, ``www.``, or a bare domain such as
#: ``t.cn/abc`` or ``zwfw.gov.cn``. Dotted numbers ("2026.12.01", "12.5元") are not matched:
#: a top-level domain must be letters.
URL_PATTERN = re.compile(
    rf"""
      [a-z][a-z0-9+.-]*://\S*                      # any scheme: http://, https://, ftp:// …
    | (?<![a-z0-9])www\.\S*                         # www.example (no scheme)
    | (?<![a-z0-9@.-])                              # a bare domain starts here, not mid-word
      (?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.)+  # one or more labels
      (?:
          [a-z]{{2,24}}(?=[/:?#])                   # any TLD followed by a path, port or query
        | (?:{_BARE_TLDS})(?![a-z0-9-])             # or a common TLD on its own
      )
    """,
    re.IGNORECASE | re.VERBOSE | re.ASCII,
)


# Remembered: every SMS is checked when its template is rendered and again by the notifier
# before it is sent (the same text), ~30 µs each for a reminder. Verdicts only, bounded.
@functools.lru_cache(maxsize=1024)
def contains_url(text: str) -> bool:
    """True when ``text`` holds a link; Twilio refuses URLs in SMS to mainland China.

    Checked on the NFKC form, so full-width letters and dots (``ｅｖｉｌ．ｃｏｍ``) are seen as
    what a phone shows them as, with both :data:`URL_PATTERN` and the ingest rule's
    :data:`schemas.events.LINK_PATTERN` (ideographic dots ``gov-check。cn``, any country-code
    TLD ``evil.ru``, IPv4 ``10.1.2.3:8080/a``, punycode ``xn--``, IDN ``例子.中国``).
    """
    text = unicodedata.normalize("NFKC", text)
    # Every match of URL_PATTERN or LINK_PATTERN holds a hint of LINK_HINT: text without one
    # holds no link (most SMS) and is not searched.
    if LINK_HINT.search(text) is None:
        return False
    return URL_PATTERN.search(text) is not None or LINK_PATTERN.search(text) is not None
