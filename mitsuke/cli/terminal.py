"""Text from an index on a terminal: control characters escaped.

Ids, titles and passages come from the indexed documents; a newline in an
id would forge an output line, ANSI/OSC escapes would clear the screen or set
the window title. ``printable`` shows each such character as an escape
(``\\n``, ``\\x1b``, ``\\u202e``). ``--json`` output is left exact (JSON escapes them).
"""
from __future__ import annotations

import re

__all__ = ["printable"]

# C0 and C1 controls, DEL, line/paragraph separators and the bidi overrides/isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def printable(text: object) -> str:
    """``text`` with control characters shown as escapes.

    >>> printable("a\\nb\\x1b[2J")
    'a\\\\nb\\\\x1b[2J'
    """
    return _CONTROL.sub(_escape, str(text))
