"""Logging set-up with personal data masked in every line.

Mobile numbers become ``138****8000``, ID-card numbers ``110105********0123`` (18 digits) or
``110105******123`` (the old 15-digit cards) and personal names ``张*`` / ``欧阳**`` in the final
formatted line, so arguments, tracebacks and messages from libraries are covered too. The
masking itself is pure text work and lives in :mod:`schemas.pii`; its functions are importable
from here as well.

Masking happens at three layers, because a library can bypass any one of them:

1. :class:`MaskingFilter` on every handler masks the record (message, cached traceback) before
   any formatter sees it — including formatters we do not own.
2. :class:`MaskingStream` wraps the stream of every stream handler, ``sys.stdout`` and
   ``sys.stderr``: whatever is written there (a third-party formatter that formats ``exc_info``
   itself, ``logging.lastResort``, ``print``, the interpreter's own traceback of an uncaught
   exception) is masked line by line.
3. Masking exception hooks (``sys.excepthook``, ``threading.excepthook``) and warnings routed
   to logging, so a crash report never carries a full number either.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, TextIO

from schemas.pii import mask_mobile, mask_name, mask_numbers, mask_pii

__all__ = [
    "MaskingFilter",
    "MaskingFormatter",
    "MaskingStream",
    "configure_logging",
    "install_masking",
    "install_process_masking",
    "mask_mobile",
    "mask_name",
    "mask_numbers",
    "mask_pii",
]


# ---- logging ----------------------------------------------------------------------------------
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


class MaskingStream:
    """A text stream that masks personal data in whatever is written through it.

    Complete lines are masked and passed on at once; a partial line waits for its newline (or a
    flush), so a number split over two ``write`` calls (``print`` writes its arguments one by
    one) is still seen whole. Everything else (``fileno``, ``encoding``, ``buffer``) is the
    wrapped stream's.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""
        self._lock = threading.RLock()

    @property
    def wrapped(self) -> TextIO:
        """The stream written to."""
        return self._stream

    @property
    def closed(self) -> bool:
        return bool(getattr(self._stream, "closed", False))

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            data = self._pending + text
            head, newline, tail = data.rpartition("\n")
            self._pending = tail
            if newline:
                self._stream.write(mask_pii(head + newline))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            try:
                if self._pending:
                    self._stream.write(mask_pii(self._pending))
                    self._pending = ""
                self._stream.flush()
            except (OSError, ValueError):  # closed underneath us (interpreter shutdown)
                pass

    def close(self) -> None:
        # Never close the wrapped stream (sys.stderr, a dramatiq pipe): its owner does.
        self.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _masked(stream: Any) -> Any:
    return stream if stream is None or isinstance(stream, MaskingStream) else MaskingStream(stream)


def _masking_excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """Print an uncaught exception like the interpreter does, with personal data masked."""
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    stream = sys.stderr or sys.__stderr__
    if stream is not None:
        stream.write(mask_pii(text))
        stream.flush()


def _masking_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    text = f"Exception in thread {name}:\n" + "".join(
        traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
    )
    stream = sys.stderr or sys.__stderr__
    if stream is not None:
        stream.write(mask_pii(text))
        stream.flush()


def install_process_masking() -> None:
    """Mask what a process writes outside its log handlers; idempotent.

    ``sys.stdout``/``sys.stderr`` are wrapped (``print``, ``logging.lastResort`` and libraries
    writing there directly), uncaught exceptions in any thread are printed masked, and warnings
    go through logging (``py.warnings``) and so through the masking handlers.
    """
    sys.stdout = _masked(sys.stdout)
    sys.stderr = _masked(sys.stderr)
    sys.excepthook = _masking_excepthook
    threading.excepthook = _masking_thread_excepthook
    # lastResort writes to sys.stderr at emit time (now masked); the filter also masks records
    # that a formatter elsewhere would print in full.
    last_resort = logging.lastResort
    if last_resort is not None and not any(
        isinstance(f, MaskingFilter) for f in last_resort.filters
    ):
        last_resort.addFilter(MaskingFilter())
    logging.captureWarnings(True)


def install_masking(logger: logging.Logger | None = None, *, process: bool = True) -> None:
    """Mask personal data on every handler of ``logger`` (default: the root logger).

    Each handler gets a :class:`MaskingFilter`; a stream handler's stream is wrapped in a
    :class:`MaskingStream` as well, for formatters that format ``exc_info`` themselves and
    ignore the masked cache. With ``process`` (the default) the process-wide hooks of
    :func:`install_process_masking` are installed too.
    """
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler.stream, MaskingStream
        ):
            handler.setStream(_masked(handler.stream))
    if process:
        install_process_masking()


def configure_logging(level: str = "INFO", component: str = "govnotify") -> None:
    """Route all logging (ours and the libraries') through one masking handler on stderr."""
    install_process_masking()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        MaskingFormatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s")
    )
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("pika", "aiokafka", "kafka", "faust", "mode", "twilio.http_client"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
