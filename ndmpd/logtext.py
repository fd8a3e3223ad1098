"""Bounded, escaped text for log lines: one event is one line, whatever a peer sent.

Everything a peer supplies (user names, paths, device names, env values, messages) passes
through :func:`peer_text` before it reaches a log call, and :class:`BoundedFormatter` bounds
and escapes every formatted line as a last guard, so a 7 MiB name or an embedded newline
can neither flood the log nor forge a second event.
"""

from __future__ import annotations

import logging
import re
from typing import Any

PEER_TEXT_LIMIT = 256           # characters of one peer string kept in a log line
LINE_LIMIT = 8192               # characters of one whole log line (tracebacks included)

# candidates for escaping: all but printable ASCII (non-ASCII is kept when printable);
# a peer string also escapes the backslash, so its escapes stay unambiguous
_UNSAFE_PEER = re.compile(r"[^\x20-\x5b\x5d-\x7e]")
_UNSAFE_LINE = re.compile(r"[^\x20-\x7e]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(match: re.Match) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:        # an undecodable byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable():                 # printable non-ASCII (names in any script) stays
        return ch
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with control characters, backslashes and invalid UTF-8 written as escapes."""
    return _UNSAFE_PEER.sub(_escape_char, text)


def peer_text(value: Any, limit: int = PEER_TEXT_LIMIT) -> str:
    """A peer-supplied value (str, bytes or anything else) cut to ``limit`` and escaped.

    The cut comes first, so a huge value costs ``limit`` characters of work, not its size;
    a cut value says how long it really was.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        total = len(value)
        text = bytes(value[:limit]).decode("utf-8", "surrogateescape")
    else:
        if not isinstance(value, str):
            value = str(value)
        total = len(value)
        text = value[:limit]
    text = escape(text)
    if total > limit:
        return f"{text}...[{total} chars]"
    return text


def one_line(text: str, limit: int = LINE_LIMIT) -> str:
    """A whole log line bounded to ``limit`` characters and free of line breaks."""
    if len(text) > limit:
        text = text[:limit] + f"...[{len(text)} chars]"
    if text.isascii() and text.isprintable():
        return text
    return _UNSAFE_LINE.sub(_escape_char, text)


class BoundedFormatter(logging.Formatter):
    """A formatter whose every record comes out as one bounded line (tracebacks included)."""

    def __init__(self, *args: Any, limit: int = LINE_LIMIT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record), self.limit)


def bound_handlers(logger: logging.Logger | None = None, limit: int = LINE_LIMIT) -> None:
    """Give every handler of ``logger`` (default: the root) a bounded version of its format."""
    for handler in (logger or logging.getLogger()).handlers:
        old = handler.formatter or logging.Formatter()
        handler.setFormatter(BoundedFormatter(old._fmt, old.datefmt, limit=limit))
