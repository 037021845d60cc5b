"""Logging set-up with personal data masked in every line.

Mobile numbers become ``138****8000`` and ID-card numbers ``110105********0123`` in the final
formatted line, so arguments, tracebacks and messages from libraries are covered too.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback

__all__ = [
    "MaskingFilter",
    "MaskingFormatter",
    "configure_logging",
    "install_masking",
    "mask_mobile",
    "mask_pii",
]

# 18-digit resident ID (last may be X); masked before mobiles so its digits are not taken as one.
_ID_CARD = re.compile(r"(?<![0-9])([1-9][0-9]{5})[0-9]{8}([0-9]{3}[0-9Xx])(?![0-9])")
# Mainland mobiles with optional +86 / 86 prefix, with or without separators.
_MOBILE = re.compile(r"(?<![0-9])((?:\+?86[- ]?)?1[3-9][0-9])[- ]?[0-9]{4}[- ]?([0-9]{4})(?![0-9])")


def mask_mobile(number: str) -> str:
    """``+8613800138000`` → ``+86138****8000``; anything short is fully starred."""
    digits = number.strip()
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{digits[:-8]}****{digits[-4:]}"


def mask_pii(text: str) -> str:
    """Mask every ID-card and mobile number found in ``text``."""
    text = _ID_CARD.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    return _MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)


class MaskingFormatter(logging.Formatter):
    """A formatter whose every output, traceback included, has personal data masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_pii(super().format(record))


class MaskingFilter(logging.Filter):
    """Masks the message and traceback of a record before any formatter sees it.

    Used on handlers we do not own (dramatiq's, faust's) where the formatter is theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report, not ours
            return True
        masked = mask_pii(message)
        if masked != message or record.args:
            # () not None: some formatters (mode's) wrap a None into (None,) and then fail.
            record.msg, record.args = masked, ()
        if record.exc_text:
            # Another handler may have formatted (and cached) the traceback before us.
            record.exc_text = mask_pii(record.exc_text)
        elif record.exc_info:
            record.exc_text = mask_pii("".join(traceback.format_exception(*record.exc_info)))
        if record.stack_info:
            record.stack_info = mask_pii(record.stack_info)
        return True


def install_masking(logger: logging.Logger | None = None) -> None:
    """Add a :class:`MaskingFilter` to every handler of ``logger`` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


def configure_logging(level: str = "INFO", component: str = "govnotify") -> None:
    """Route all logging (ours and the libraries') through one masking handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        MaskingFormatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("pika", "aiokafka", "kafka", "faust", "mode", "twilio.http_client"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
