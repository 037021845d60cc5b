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

One record is one line: after masking, control characters (``\n``, ``\r``, ESC and the rest of
C0 and C1, DEL, and the Unicode line and paragraph separators) in a message and its arguments
are written as visible escapes (``\n``, ``\x1b``, ``\u2028``), so an id that carries
``"\n2026-01-01 INFO forged"`` or a terminal colour code cannot forge a log line or repaint a
console. A traceback keeps its own line breaks; control characters inside each of its lines
(an exception message with a newline in it among them) are escaped the same way.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, TextIO

from schemas.escaping import escape_controls
from schemas.pii import mask_mobile, mask_name, mask_numbers, mask_pii

__all__ = [
    "QUIET_LIBRARIES",
    "MaskingFilter",
    "MaskingFormatter",
    "MaskingStream",
    "configure_logging",
    "escape_controls",
    "format_exception",
    "install_masking",
    "install_process_masking",
    "mask_mobile",
    "mask_name",
    "mask_numbers",
    "mask_pii",
    "quiet_libraries",
]


# ---- one record, one line ---------------------------------------------------------------------
def _escape_lines(text: str) -> str:
    """Each line of a multi-line text (a traceback) escaped on its own; its breaks kept."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def format_exception(exc_info: Any) -> str:
    """A masked traceback whose exception messages are each one line.

    The interpreter prints an exception's message as is, so ``ValueError("a\\nb")`` would span
    two lines indistinguishable from the traceback's own; here each message in the chain (and
    its notes) is escaped first, then every line of the result.
    """
    te = traceback.TracebackException(*exc_info, compact=True)
    seen: set[int] = set()
    pending = [te]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        # _str is the message TracebackException prints (CPython 3.11+); a version without it
        # still gets every line escaped below.
        if isinstance(getattr(current, "_str", None), str):
            current._str = escape_controls(current._str)
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            current.__notes__ = [escape_controls(str(n)) for n in notes]
        pending.extend(
            t
            for t in (
                current.__cause__,
                current.__context__,
                *(getattr(current, "exceptions", None) or ()),
            )
            if t is not None
        )
    return _escape_lines(mask_pii("".join(te.format()).rstrip("\n")))


# ---- logging ----------------------------------------------------------------------------------
class MaskingFormatter(logging.Formatter):
    """A formatter whose every output is one masked line, plus a masked traceback if any.

    Masking comes first, escaping second: the escapes must not split a number the masking
    would otherwise have recognised.
    """

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = escape_controls(mask_pii(self.formatMessage(record)))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            # Cached by a handler or filter we may not own: escape within its lines again.
            line += "\n" + _escape_lines(mask_pii(record.exc_text))
        if record.stack_info:
            line += "\n" + _escape_lines(mask_pii(self.formatStack(record.stack_info)))
        return line

    def formatException(self, ei: Any) -> str:
        return format_exception(ei)


class MaskingFilter(logging.Filter):
    """Masks the message and traceback of a record before any formatter sees it.

    Used on handlers we do not own (dramatiq's, faust's) where the formatter is theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report, not ours
            return True
        # Escaped here too, for formatters we do not own (dramatiq's, faust's): one record, one
        # line. Escaping is idempotent, so our own formatter's second pass changes nothing.
        masked = escape_controls(mask_pii(message))
        if masked != message or record.args:
            # () not None: some formatters (mode's) wrap a None into (None,) and then fail.
            record.msg, record.args = masked, ()
        if record.exc_text:
            # Another handler may have formatted (and cached) the traceback before us.
            record.exc_text = _escape_lines(mask_pii(record.exc_text))
        elif record.exc_info:
            record.exc_text = format_exception(record.exc_info)
        if record.stack_info:
            record.stack_info = _escape_lines(mask_pii(record.stack_info))
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


#: Libraries whose INFO lines tell an operator nothing the metrics and the database do not,
#: at a volume that costs: logged at WARNING and above only. ``twilio.http_client`` logs every
#: request and response at INFO: 2 of the 5 lines per SMS, each through :class:`MaskingFilter`,
#: the handler's lock (8 worker threads) and dramatiq's log pipe to its parent
#: (docs/perf/where-the-time-goes.md); a failed request still raises and is logged as ours.
#: To see them while debugging, set the logger's level back in that process
#: (``logging.getLogger("twilio.http_client").setLevel("INFO")``).
QUIET_LIBRARIES = ("pika", "aiokafka", "kafka", "faust", "mode", "twilio.http_client")


def quiet_libraries(
    level: int | str = logging.INFO, libraries: tuple[str, ...] = QUIET_LIBRARIES
) -> None:
    """Log ``libraries`` (:data:`QUIET_LIBRARIES`) at WARNING (or ``level``, when higher) and
    above.

    Only ever raises a level: dramatiq's worker processes set ``pika`` to CRITICAL, and that
    stays. Called by :func:`configure_logging`, and by the dramatiq worker processes
    (``workers.actors``), which set up logging themselves after ``govnotify worker`` exec'd
    dramatiq and so never run :func:`configure_logging`.
    """
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping()[level]
    floor = max(logging.WARNING, numeric)
    for name in libraries:
        logger = logging.getLogger(name)
        logger.setLevel(max(floor, logger.level))


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
    quiet_libraries(level)
