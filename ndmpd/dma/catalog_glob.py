"""Globs over stored (bytes) paths, and the literal parts a query can narrow with an index.

A glob with a ``/`` matches whole paths (``/home/*/report.txt``); without one it matches
the last name at any depth, as ``find -name`` does (``*.txt``). ``*`` and ``?`` stay within
one name, ``**`` crosses directories, ``[...]`` is a byte class (``[!...]`` negates). ``?``
is one UTF-8 character, or one byte that is not UTF-8.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_META = b"*?["
# one character of a name: ASCII but "/", a UTF-8 sequence, or else a single byte
_CHAR = (rb"(?:[\x00-\x2e\x30-\x7f]|[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}"
         rb"|[\xf0-\xf4][\x80-\xbf]{3}|[\x80-\xff])")


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled glob: ``match`` is tried on a full path (``whole``) or on the last name."""

    whole: bool
    regex: re.Pattern[bytes]
    head: bytes              # literal text every match starts with (path, or name when not whole)
    tail: bytes              # literal text every match's last name ends with
    name_head: bytes = b""   # literal text every match's last name starts with (whole globs)
    exact: bool = False      # a name glob HEAD*TAIL or HEAD: head and tail decide it alone

    def matches(self, path: bytes, name: bytes) -> bool:
        return self.regex.fullmatch(path if self.whole else name) is not None


def _translate(pattern: bytes) -> bytes:
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            if pattern[i:i + 2] == b"**":
                out.append(b".*")
                i += 2
                continue
            out.append(b"[^/]*")
        elif c == b"?":
            out.append(_CHAR)
        elif c == b"[":
            j = pattern.find(b"]", i + 2)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                negate = body[:1] == b"!"
                body = body[1:] if negate else body
                body = body.replace(b"\\", b"\\\\").replace(b"^", b"\\^")
                out.append(b"[" + (b"^/" if negate else b"") + body + b"]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


def _literal_head(pattern: bytes) -> bytes:
    cut = min((i for i in (pattern.find(m) for m in (b"*", b"?", b"[")) if i >= 0), default=len(pattern))
    return pattern[:cut]


def compile_glob(glob: str | bytes) -> Glob:
    """Compile a user's glob (``str`` is encoded like a path: UTF-8, surrogateescape)."""
    pattern = os.fsencode(glob)
    if not pattern:
        raise ValueError("empty glob")
    whole = b"/" in pattern
    if whole and not pattern.startswith(b"/"):
        pattern = b"/" + pattern
    if whole and len(pattern) > 1:
        pattern = pattern.rstrip(b"/")
    last = pattern.rpartition(b"/")[2]
    tail_cut = max(last.rfind(m) for m in (b"*", b"?", b"]"))
    tail = last[tail_cut + 1:] if tail_cut >= 0 else last
    if b"[" in tail:
        tail = b""
    # the pattern's last "/" can only match the path's last "/" (nothing after it crosses one)
    name_head = _literal_head(last) if whole and b"**" not in last else b""
    head = _literal_head(pattern)
    rest = pattern[len(head):]
    exact = not whole and (rest == b"" or (rest[:1] == b"*" and rest[1:] == tail and not any(m in tail for m in _META)))
    return Glob(whole, re.compile(_translate(pattern), re.DOTALL), head, tail, name_head, exact)
