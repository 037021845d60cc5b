"""Personal-data masking: numbers, ID cards and names, false positives, and every way a line can
reach a log (filters, foreign formatters, raw streams, uncaught exceptions, warnings) with real
library exceptions."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.logging import (
    MaskingFilter,
    MaskingStream,
    install_masking,
    mask_name,
    mask_numbers,
    mask_pii,
)
from tests.support import _FULL_MOBILE

REPO = Path(__file__).resolve().parents[3]


# ---- numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # 15-digit (pre-2004) ID cards: area code and sequence kept, birth date starred
        ("110105900101123", "110105******123"),
        ("身份证号：110105900101123。", "身份证号：110105******123。"),
        ("id=610116851231002", "id=610116******002"),
        (
            "18 and 15: 110105199001010123 / 110105900101123",
            "18 and 15: 110105********0123 / 110105******123",
        ),
        # … and what only looks like one: no real birth date, inside an identifier, a fraction,
        # a longer run of digits
        ("110105901301123", "110105901301123"),
        ("110105900132123", "110105900132123"),
        ("JY16101160012345", "JY16101160012345"),
        ("JY161011600101123", "JY161011600101123"),
        ("0.110105900101123", "0.110105900101123"),
        ("SMa110105900101123b", "SMa110105900101123b"),
        ("1101059001011234", "1101059001011234"),
        ("offset 1764115200000", "offset 1764115200000"),
        # mobiles next to ID cards and in library shapes
        (
            "Key (recipient)=(+8613800138000) already exists.",
            "Key (recipient)=(+86138****8000) already exists.",
        ),
        ("To=%2B8613800138000&From=", "To=%2B86138****8000&From="),
        ('b\'{"holder_mobile": "13800138000"}\'', 'b\'{"holder_mobile": "138****8000"}\''),
    ],
)
def test_numbers_are_masked_and_lookalikes_are_not(text: str, masked: str) -> None:
    # Given / When / Then
    assert mask_pii(text) == masked


# ---- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "masked"),
    [
        # labels with a separator
        ("姓名：张三", "姓名：张*"),
        ("姓名: 王秀英", "姓名: 王**"),
        ("申请人: 王秀英，电话13800138000", "申请人: 王**，电话138****8000"),
        ("联系人（李四）", "联系人（李*）"),
        ("持证人 赵六", "持证人 赵*"),
        ('"持证人": "赵六"', '"持证人": "赵*"'),
        ("法定代表人：欧阳娜娜", "法定代表人：欧阳**"),
        # a name running into the sentence: the likely name, one character too many at worst
        ("持证人：张三办理续证", "持证人：张**理续证"),
        # honorifics
        ("王秀英女士", "王**女士"),
        ("请联系欧阳娜娜先生回电", "请联系欧阳**先生回电"),
        ("李明同志", "李*同志"),
        # key=value, JSON, dict repr, pydantic repr, camelCase, escaped forms
        ("holder_name=张三", "holder_name=张*"),
        (
            '{"holder_name": "张三", "holder_mobile": "+8613800138000"}',
            '{"holder_name": "张*", "holder_mobile": "+86138****8000"}',
        ),
        ("{'applicant_name': '王秀英'}", "{'applicant_name': '王**'}"),
        (
            "CaseJob(applicant_name='王秀英', case_id='C-1')",
            "CaseJob(applicant_name='王**', case_id='C-1')",
        ),
        ('holderName: "阿卜杜拉·买买提"', 'holderName: "阿***·***"'),
        ('"name": "欧阳娜娜"', '"name": "欧阳**"'),
        ("steward_name=刘管家", "steward_name=刘**"),
        ("realname=张三 username=李四", "realname=张* username=李*"),
        (
            "{'real_name': True, 'holdername': '王秀英'}",
            "{'real_name': True, 'holdername': '王**'}",
        ),
        ("department_head_name=李四", "department_head_name=李*"),
        ('{"name": "\\u5f20\\u4e09"}', '{"name": "\\u5f20*"}'),
        ('b\'{"name": "\\xe5\\xbc\\xa0\\xe4\\xb8\\x89"}\'', 'b\'{"name": "\\xe5\\xbc\\xa0*"}\''),
    ],
)
def test_personal_names_are_masked(text: str, masked: str) -> None:
    # Given / When / Then
    assert mask_pii(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        # labels followed by what is not a name
        "申请人（电话138****8000）已在长安区政务服务中心取号，请立即接待。",
        "联系人：未填写",
        "姓名：匿名",
        "持证人 已于3日前办理续证",
        # labels without a separator are ordinary words
        "申请人在长安区政务服务中心办理",
        "姓名不能为空",
        "联系人员已到岗",
        # a bare surname says nothing; a plural is no one
        "张先生您好",
        "女士们先生们",
        # things that are named, not people
        "department_name=市场监督管理局",
        '"service_point_name": "长安区政务服务中心"',
        "{'service_item_name': '食品经营许可证核发'}",
        "actor_name='deliver_notification'",
        "queue_name=t1234.delivery",
        "name=deliver_notification",
        "filename=张三.txt",
        "hostname=长安一号机",
        "topicname=长安区",
        "serviceName=长安区",
        '"enterprise_name": "西安长安科技"',
        '"company_name": "长安科技"',
        # a bare "name" of five or more characters is an enterprise's, not a person's
        '"name": "西安长安科技有限公司"',
        # ASCII names are not Chinese personal names (and are mostly identifiers in our logs)
        "holder_name=Alice",
        "levelname=INFO",
        '"name": "\\u0041\\u0042"',
        # our own masked output stays as it is
        "申请人（王**）在长安区政务服务中心",
        "holder_name=张*",
    ],
)
def test_look_alikes_of_names_are_left_alone(text: str) -> None:
    # Given / When / Then
    assert mask_pii(text) == text


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三", "张*"),
        ("王秀英", "王**"),
        ("欧阳娜娜", "欧阳**"),
        ("欧阳", "欧*"),
        ("司马光", "司马*"),
        ("爱新觉罗溥仪", "爱新觉罗**"),
        ("阿卜杜拉·买买提", "阿***·***"),
        ("张", "张"),
    ],
)
def test_mask_name(name: str, masked: str) -> None:
    # Given / When / Then
    assert mask_name(name) == masked


def test_mask_numbers_leaves_names_to_mask_pii() -> None:
    # Given
    text = "持证人：张三，电话13800138000，身份证110105900101123"

    # When / Then
    assert mask_numbers(text) == "持证人：张三，电话138****8000，身份证110105******123"
    assert mask_pii(text) == "持证人：张*，电话138****8000，身份证110105******123"


# ---- streams and handlers ---------------------------------------------------------------------
def test_masking_stream_sees_a_number_split_over_writes() -> None:
    # Given
    out = io.StringIO()
    stream = MaskingStream(out)

    # When: print() writes its arguments one by one; a line ends only with its newline
    print("sms to", "138001", end="", file=stream)
    print("38000 sent", file=stream)
    stream.write("tail 13900139000")
    before_flush = out.getvalue()
    stream.flush()

    # Then
    assert before_flush == "sms to 138****8000 sent\n"
    assert out.getvalue() == "sms to 138****8000 sent\ntail 139****9000"


class _ThirdPartyFormatter(logging.Formatter):
    """Formats ``exc_info`` itself every time, ignoring the cached (masked) ``exc_text``."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@pytest.fixture
def foreign_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with a handler and formatter we do not own, made masking by install_masking."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(_ThirdPartyFormatter())
    logger = logging.getLogger(f"govnotify.test.foreign.{id(buffer)}")
    logger.propagate = False  # these records hold numbers on purpose: not for the session log
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    install_masking(logger, process=False)
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)
        handler.close()


def _twilio_error() -> Exception:
    from twilio.base.exceptions import TwilioRestException

    # As Twilio answers a create for an invalid "To": its message quotes the number.
    return TwilioRestException(
        status=400,
        uri="/2010-04-01/Accounts/AC0000000000000000000000000000001/Messages.json",
        msg="Unable to create record: The 'To' number +8613800138000 is not a valid phone number.",
        code=21211,
        method="POST",
    )


def _pika_error() -> Exception:
    import pika
    from pika.adapters.blocking_connection import ReturnedMessage

    body = '{"holder_mobile": "13800138000", "holder_name": "张三"}'.encode()
    returned = ReturnedMessage(
        pika.spec.Basic.Return(
            reply_code=312, reply_text="NO_ROUTE", exchange="x", routing_key="k"
        ),
        pika.BasicProperties(),
        body,
    )
    error = pika.exceptions.UnroutableError([returned])
    # What a caller typically logs: the error with the body it could not route.
    return RuntimeError(f"publish failed: {error!r}: {returned.body!r}")


def _kafka_error() -> Exception:
    from aiokafka.structs import ConsumerRecord

    record = ConsumerRecord(
        topic="t.licenses",
        partition=0,
        offset=42,
        timestamp=1764115200000,
        timestamp_type=0,
        key=b"LIC-1",
        value='{"holder_mobile": "+8613800138000", "holder_name": "王秀英"}'.encode(),
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=60,
        headers=(),
    )
    return ValueError(f"cannot process {record!r}")


@pytest.mark.parametrize("make_error", [_twilio_error, _pika_error, _kafka_error])
def test_library_exceptions_are_masked_even_by_a_foreign_formatter(
    foreign_logger: tuple[logging.Logger, io.StringIO], make_error
) -> None:
    # Given a real library exception that quotes a citizen's number (and maybe name)
    logger, buffer = foreign_logger
    error = make_error()
    assert _FULL_MOBILE.search(str(error)) or "13800138000" in str(error)

    # When it is logged with its traceback through a formatter that formats exc_info itself
    try:
        raise error
    except Exception:
        logger.exception("delivery failed for %s", "+8613800138000")

    # Then the traceback is there, the number and the name are not
    text = buffer.getvalue()
    assert "Traceback" in text
    assert "13800138000" not in text
    assert "138****8000" in text
    assert "张三" not in text and "王秀英" not in text


def test_masking_filter_masks_a_record_before_any_handler_formats_it() -> None:
    # Given
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "holder %s %s", ("张三", "110105900101123"), None
    )
    record.msg = "holder_name=%s id=%s"

    # When
    MaskingFilter().filter(record)

    # Then
    assert record.getMessage() == "holder_name=张* id=110105******123"


# ---- process-wide hooks (in a child process: they replace sys.stderr and the excepthooks) -----
_CHILD = textwrap.dedent(
    """
    import logging, sys, threading, warnings
    from infra.logging import configure_logging

    configure_logging("INFO", "probe")
    log = logging.getLogger("govnotify.probe")
    log.info("holder_name=%s to %s", "张三", "13800138000")
    try:
        raise RuntimeError("provider refused 13800138001")
    except RuntimeError:
        log.exception("send failed")
    warnings.warn("number 13800138002 looks odd")
    print("stdout 13800138003")

    def crash():
        raise ValueError("thread saw 13800138004")

    thread = threading.Thread(target=crash)
    thread.start()
    thread.join()
    # no handler at all: logging.lastResort writes to sys.stderr
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
    logging.getLogger("govnotify.bare").warning("last resort 13800138005")
    sys.stderr.write("raw 13800138006\\n")
    raise LookupError("uncaught 13800138007, 申请人：王秀英")
    """
)


def test_a_configured_process_masks_everything_it_writes(tmp_path: Path) -> None:
    # Given a process that configured logging like relay and scheduler do
    script = tmp_path / "child.py"
    script.write_text(_CHILD, encoding="utf-8")

    # When it logs, warns, prints, crashes a thread, falls back to lastResort and dies
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Then every line came out, masked
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    for n in range(8):
        assert f"1380013800{n}" not in out, out
        assert f"138****800{n}" in out, out
    assert "张三" not in out and "王秀英" not in out
    assert "holder_name=张*" in out and "申请人：王**" in out
    assert "LookupError" in out and "ValueError: thread saw" in out


_WORKER_CHILD = textwrap.dedent(
    """
    import logging, sys
    # dramatiq and faust set up their own handlers and formats before our code runs
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(process)d] %(message)s")
    from infra.logging import install_masking

    install_masking()
    logging.getLogger("dramatiq.worker").info(
        "Failed to process message send_survey({'applicant_name': '王秀英', "
        "'applicant_mobile': '+8613800138000'})"
    )
    raise SystemExit(f"bye {'1' + '3900139000'}")
    """
)


def test_install_masking_covers_handlers_it_did_not_create(tmp_path: Path) -> None:
    # Given a process whose logging a library configured (dramatiq's worker, faust's)
    script = tmp_path / "worker_child.py"
    script.write_text(_WORKER_CHILD, encoding="utf-8")

    # When
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Then
    out = result.stdout + result.stderr
    assert "'applicant_name': '王**'" in out, out
    assert "+86138****8000" in out
    assert not _FULL_MOBILE.search(out), out
