"""Text made safe to print on one line: control characters written as visible escapes.

Whatever a sender chooses (an event id, a field name, a routing key) may end up in a log line, a
dead-letter record, an AMQP header or an operator's terminal. There a line break forges a second
line, an ANSI escape repaints the screen and a bidi control reorders what is shown. Here each of
those becomes a visible escape; the text is otherwise unchanged (backslashes are left alone, so
paths and patterns stay readable).
"""

from __future__ import annotations

__all__ = ["escape_controls"]


def _escape_table() -> dict[int, str]:
    table = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    table.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
    # Line and paragraph separators (a line break to many readers) and the bidi controls
    # (marks, embeddings, overrides, isolates), which reorder how a line is displayed.
    for code in (0x2028, 0x2029, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        table[code] = f"\\u{code:04x}"
    return table


#: C0 and C1 controls, DEL, line separators and bidi controls → their visible escapes.
_ESCAPES = _escape_table()


def escape_controls(text: str) -> str:
    """``text`` with every control character, line separator and bidi control written as a
    visible escape: one line, displayed in the order it was written."""
    return text.translate(_ESCAPES)
