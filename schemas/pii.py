"""Personal data masked in text: mobile and ID-card numbers, personal names.

Mobile numbers become ``138****8000``, ID-card numbers ``110105********0123`` (18 digits) or
``110105******123`` (the old 15-digit cards) and personal names ``张*`` / ``欧阳**``. Pure text
work, so every floor may use it: event errors mask their detail here, and :mod:`infra.logging`
masks every log line with it.
"""

from __future__ import annotations

import re

__all__ = [
    "COMPOUND_SURNAMES",
    "SINGLE_SURNAMES",
    "mask_mobile",
    "mask_name",
    "mask_numbers",
    "mask_pii",
]

# ---- numbers ----------------------------------------------------------------------------------
# 18-digit resident ID (last may be X); masked before mobiles so its digits are not taken as one.
_ID_CARD = re.compile(r"(?<![0-9])([1-9][0-9]{5})[0-9]{8}([0-9]{3}[0-9Xx])(?![0-9])")
# 15-digit resident ID (issued until 2004): area code, YYMMDD birth date, 3-digit sequence.
# Fifteen digits alone are too common (order numbers, offsets, fractions), so a real birth date
# is required and the number must stand alone: not inside an identifier (``JY161011600123456``),
# a hex id or after a decimal point.
_OLD_ID_CARD = re.compile(
    r"(?<![0-9A-Za-z.])([1-9][0-9]{5})"
    r"[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    r"([0-9]{3})(?![0-9A-Za-z])"
)
# Mainland mobiles with optional +86 / 86 prefix, with or without separators.
_MOBILE = re.compile(r"(?<![0-9])((?:\+?86[- ]?)?1[3-9][0-9])[- ]?[0-9]{4}[- ]?([0-9]{4})(?![0-9])")

# ---- names ------------------------------------------------------------------------------------
_HAN = r"[\u3400-\u4dbf\u4e00-\u9fff]"
_DOT = r"[·•・]"  # the separator of transliterated (e.g. Uyghur) names: 阿卜杜拉·买买提
#: A Chinese name-like run: Han characters, possibly with a name separator dot.
_HAN_RUN = rf"{_HAN}(?:{_HAN}|{_DOT}(?={_HAN})){{0,24}}"

#: Two-character surnames: the whole surname stays visible (欧阳娜娜 → 欧阳**).
COMPOUND_SURNAMES = frozenset(
    "欧阳 司马 诸葛 上官 东方 皇甫 尉迟 公孙 慕容 令狐 司徒 夏侯 长孙 宇文 轩辕 端木 独孤 "
    "南宫 西门 百里 呼延 澹台 公冶 太史 申屠 闻人 万俟 濮阳 淳于 单于 赫连 钟离 宗政 "
    "爱新觉罗".split()
)
#: Common single-character surnames, the anchor of "X先生 / X女士" forms (Chinese has no word
#: boundaries, so a surname is what tells where a name begins). Characters that are far more
#: often a function word than a surname (和, 于, 向, 由 …) are left out on purpose.
SINGLE_SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程"
    "苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方邹熊白孟秦邱侯江尹薛闫段雷黎史龙陶贺顾毛郝"
    "龚邵万钱严覃武戴莫孔汤易常乔赖文庞樊兰殷施洪翟安颜倪严牛温芦季俞章鲁葛伍申尤毕聂焦"
    "柴邢祝岳齐梅莫庄辛管祁左涂谷时柳耿关苗凌费纪靳盛童欧甄项曲成游阮"
)
_SURNAME = (
    "(?:"
    + "|".join(sorted(COMPOUND_SURNAMES, key=len, reverse=True))
    + "|["
    + "".join(sorted(SINGLE_SURNAMES))
    + "])"
)

# 姓名：张三 / 申请人: 王秀英 / 联系人（李四） / "持证人": "赵六". A separator is required:
# without one, "申请人在长安区办理" and "姓名不能为空" would lose their words.
_NAME_LABELS = (
    "姓名|申请人|联系人|持证人|法定代表人|法人代表|负责人|经办人|办事人|代办人|户主|当事人"
    "|收件人|收货人|投诉人|评价人|举报人|被访人|患者|家属"
)
_LABELLED_NAME = re.compile(
    rf"(?P<label>{_NAME_LABELS})"
    r"(?P<sep>[\"'”’」』]?\s*[:：=]\s*[\"'“‘「『]?|\s*[（(]\s*|\s+)"
    rf"(?P<name>{_HAN_RUN})"
)
# 王秀英女士 / 欧阳娜娜先生 → 王**女士 / 欧阳**先生 (a bare surname, 张先生, says nothing).
_HONORIFIC_NAME = re.compile(
    rf"(?P<surname>{_SURNAME})(?P<given>{_HAN}{{1,2}})(?=先生|女士|同志|小姐)"
)
# key=value and JSON / repr forms of any key ending in "name": holder_name=张三, "name": "张三",
# 'applicant_name': '王秀英', holderName: "\u5f20\u4e09", b'..."name": "\xe5\xbc\xa0..."'.
_KEYED_NAME = re.compile(
    r"(?<![A-Za-z0-9_])(?P<key>[A-Za-z0-9_]*(?i:name))(?![A-Za-z0-9_])"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    rf"(?P<value>{_HAN_RUN}"
    r"|(?:\\u[0-9a-fA-F]{4}){2,25}"
    r"|(?:\\x[0-9a-fA-F]{2}){6,75})"
)
#: Keys ending in "name" that name things, not people, by the word before "name"
#: (service_point_name, department_name, actorName, topicname) or as a whole (the fused keys
#: below). Their values stay readable; every other "*name" key is taken for a person's.
_NON_PERSONAL_NAME_WORDS = frozenset(
    """
    department dept service item point station centre center hall window building site office
    bureau agency institution queue actor topic exchange route channel flow stage file host path
    dir base table column field schema index db database event category type class module func
    function method logger level thread process task job node server domain bucket key app
    template company enterprise org organization organisation unit project license licence bank
    brand product shop store hospital school street road district city county province region
    area town village community address group metric label status reason provider tag
    """.split()
)
_NON_PERSONAL_NAME_KEYS = frozenset(
    """
    filename hostname pathname dirname basename modulename funcname classname typename
    tablename queuename nodename servername domainname levelname threadname processname
    taskname tagname keyname appname
    """.split()
)


def _key_words(key: str) -> list[str]:
    """``service_point_name`` / ``servicePointName`` → ``["service", "point", "name"]``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return [w.lower() for w in spaced.split("_") if w]


def _is_personal_name_key(key: str) -> bool:
    if key.lower().replace("_", "") in _NON_PERSONAL_NAME_KEYS:
        return False
    words = _key_words(key)
    if words[-1] == "name":
        what = words[-2] if len(words) > 1 else ""
    else:
        # A fused key: realname, username, holdername are people; topicname is not.
        what = words[-1][: -len("name")]
    return what not in _NON_PERSONAL_NAME_WORDS


def mask_name(name: str) -> str:
    """``张三`` → ``张*``, ``欧阳娜娜`` → ``欧阳**``, ``阿卜杜拉·买买提`` → ``阿***·***``."""
    keep = 2 if len(name) > 2 and name[:2] in COMPOUND_SURNAMES else 1
    if name.startswith("爱新觉罗") and len(name) > 4:
        keep = 4
    return name[:keep] + "".join(c if re.fullmatch(_DOT, c) else "*" for c in name[keep:])


def _name_span(run: str, *, quoted: bool) -> int:
    """How much of a Han run after a label or key is the name; the rest is ordinary text.

    A quoted value is the name as a whole, and so is a run of at most four characters (Han
    names are 2–4) or one with a name dot. A longer unquoted run (``持证人：张三办理续证``) is cut
    after a plausible name: 4 with a compound surname, else 3; one character too many masked
    is the safe side.
    """
    if quoted or len(run) <= 4 or re.search(_DOT, run):
        return len(run)
    return 4 if run[:2] in COMPOUND_SURNAMES else 3


def _is_quoted(m: re.Match[str], group: str) -> bool:
    """The value of ``group`` sits between quotes (``"张三"``, ``'张三'``, ``“张三”``)."""
    sep, end = m.group("sep"), m.end(group)
    text = m.string
    return bool(sep) and sep[-1] in "\"'“‘「『" and end < len(text) and text[end] in "\"'”’」』"


#: What follows a label but is not a name: 申请人（电话138****8000）, 联系人：未填写, 姓名：匿名.
#: Single characters are function words that no common surname shares (于, 应 and 和 are
#: surnames, so they are not here).
_NOT_A_NAME = re.compile(
    r"(?:电话|手机|号码|身份|证件|地址|单位|信息|类型|编号|邮箱|性别|年龄|账号|签字|签名|本人|未知|"
    r"未填|匿名|不详|暂无|见附|同上|[已未需请须在的为是及或等无])"
)


def _mask_labelled(m: re.Match[str]) -> str:
    run = m.group("name")
    if _NOT_A_NAME.match(run):
        return m.group(0)
    span = _name_span(run, quoted=_is_quoted(m, "name"))
    return m.group("label") + m.group("sep") + mask_name(run[:span]) + run[span:]


def _mask_escaped(value: str) -> str | None:
    """A name written as JSON ``\\uXXXX`` or bytes-repr ``\\xHH`` escapes, masked; else None."""
    try:
        if value.startswith("\\u"):
            decoded = value.encode("ascii").decode("unicode_escape")
            if not re.fullmatch(f"{_HAN}{{2,25}}", decoded):
                return None
            return value[:6] + "*" * (len(decoded) - 1)
        raw = bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-fA-F]{2})", value))
        decoded = raw.decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return None
    if not re.fullmatch(f"{_HAN}{{2,25}}", decoded):
        return None
    first = len(decoded[0].encode("utf-8"))
    return value[: first * 4] + "*" * (len(decoded) - 1)


def _mask_keyed(m: re.Match[str]) -> str:
    key, value = m.group("key"), m.group("value")
    if not _is_personal_name_key(key):
        return m.group(0)
    if value.startswith("\\"):
        masked = _mask_escaped(value)
        return m.group(0) if masked is None else m.group("key") + m.group("sep") + masked
    if key.lower() == "name" and len(value) > 4 and not re.search(_DOT, value):
        # A bare "name" is also an enterprise's (西安长安科技有限公司): a person's name is 2–4.
        return m.group(0)
    span = _name_span(value, quoted=_is_quoted(m, "value"))
    return m.group("key") + m.group("sep") + mask_name(value[:span]) + value[span:]


def _mask_honorific(m: re.Match[str]) -> str:
    return m.group("surname") + "*" * len(m.group("given"))


#: Cheap pre-check: the name patterns only run on text that could hold one.
_NAME_HINT = re.compile(rf"(?i:name)|{_NAME_LABELS}|先生|女士|同志|小姐")


def mask_mobile(number: str) -> str:
    """``+8613800138000`` → ``+86138****8000``; anything short is fully starred."""
    digits = number.strip()
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{digits[:-8]}****{digits[-4:]}"


def mask_numbers(text: str) -> str:
    """Mask every ID-card (18 and 15 digits) and mobile number in ``text``; names stay."""
    text = _ID_CARD.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    text = _OLD_ID_CARD.sub(lambda m: f"{m.group(1)}******{m.group(2)}", text)
    return _MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)


def mask_pii(text: str) -> str:
    """Mask every ID-card number, mobile number and labelled personal name in ``text``."""
    text = mask_numbers(text)
    if _NAME_HINT.search(text):
        text = _KEYED_NAME.sub(_mask_keyed, text)
        text = _LABELLED_NAME.sub(_mask_labelled, text)
        text = _HONORIFIC_NAME.sub(_mask_honorific, text)
    return text
