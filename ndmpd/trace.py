"""Debug tracing of NDMP messages: one bounded, escaped line per request, reply and post.

With ``--log-level debug`` an interop problem can be read from the log alone: every message's
name, sequence numbers, error and a short summary of its body. Secrets (passwords, MD5 digests
and challenges) are never written. The session asks :func:`enabled` once per message, so at
info level tracing costs one cached level check and no formatting.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .logtext import peer_text
from .wire import XdrStruct

log = logging.getLogger("ndmpd.trace")

SUMMARY_LIMIT = 400          # characters of one body summary
STRING_LIMIT = 64            # characters of one string inside a summary
LIST_ITEMS = 4               # items of a list shown before "+N more"
DEPTH = 4                    # nesting shown before "{...}"
SECRET_FIELDS = frozenset({"auth_password", "auth_digest", "challenge"})
_SECRET_NAME = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def enabled() -> bool:
    """Is tracing on? (one cached level check)"""
    return log.isEnabledFor(logging.DEBUG)


def summary(body: Any) -> str:
    """A short rendering of a decoded body; its cost is bounded, not the body's size."""
    if body is None:
        return "{}"
    out: list[str] = []
    _render(body, out, DEPTH)
    text = "".join(out)
    return text if len(text) <= SUMMARY_LIMIT else text[:SUMMARY_LIMIT] + "...}"


def _render(value: Any, out: list[str], depth: int) -> None:
    if isinstance(value, XdrStruct):
        if depth <= 0:
            out.append("{...}")
            return
        fields = value._xdr_fields
        secret_value = fields == ("name", "value") and _SECRET_NAME.search(str(value.name)[:STRING_LIMIT])
        out.append("{")
        first = True
        for name in fields:
            item = getattr(value, name)
            if item is None:
                continue
            if not first:
                out.append(" ")
            first = False
            out.append(name)
            out.append("=")
            if name in SECRET_FIELDS or (secret_value and name == "value"):
                out.append("<redacted>")
            else:
                _render(item, out, depth - 1)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value[:LIST_ITEMS]):
            if i:
                out.append(" ")
            _render(item, out, depth)
        if len(value) > LIST_ITEMS:
            out.append(f" +{len(value) - LIST_ITEMS} more")
        out.append("]")
    elif isinstance(value, str):
        out.append(repr_text(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.append(f"<{len(value)} bytes>")
    else:
        out.append(peer_text(value, STRING_LIMIT))


def repr_text(value: str) -> str:
    """A peer string in quotes, cut and escaped."""
    return '"' + peer_text(value, STRING_LIMIT).replace('"', '\\"') + '"'


def request(peer: str, sequence: int, name: str, body: Any) -> None:
    """Trace one decoded request."""
    log.debug("%s > %d %s %s", peer, sequence, name, summary(body))


def reply(peer: str, sequence: int, reply_to: int, name: str, error: str, body: Any) -> None:
    """Trace one reply: its error (the header's, else the body's) and a summary of its body."""
    log.debug("%s < %d re %d %s %s %s", peer, sequence, reply_to, name, error,
              summary(body) if body is not None else "(header only)")


def post(peer: str, sequence: int, name: str, body: Any, with_body: bool = True) -> None:
    """Trace one post (NOTIFY, LOG, FH); file history posts are many, so only their name."""
    log.debug("%s < %d post %s%s", peer, sequence, name, " " + summary(body) if with_body else "")


def refused(peer: str, sequence: int, code: int, name: str, error: str, why: str) -> None:
    """Trace a request answered before its body was decoded (unknown, unauthorised, malformed)."""
    log.debug("%s > %d %s (0x%x) refused: %s (%s)", peer, sequence, name, code, error, why)
