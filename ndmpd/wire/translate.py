"""Translate message bodies between a session's protocol version and the internal form.

The internal form of a message is its NDMPv4 body (as ndmjob's internal "v9" is a
superset): services are written once against it. Field names in ``protocol/*.x`` are
harmonised across versions, so translation is by name: a field missing on one side takes
its zero value, and a single value and a one-element list convert into each other (v3's
single TCP address vs v4's address list). Messages that exist only in an older version
(v2 CONFIG_GET_BUTYPE_ATTR) keep that version's body.
"""

from __future__ import annotations

from typing import Any

from .schema import Protocol, protocol
from .xdr_codec import Array, Bytes, Prim, XdrStruct

INTERNAL_VERSION = 4


def convert(value: Any, node: Any, classes: dict[str, type]) -> Any:
    """Convert ``value`` (any version's object) into the shape ``node`` describes."""
    if isinstance(node, Prim):
        return 0 if value is None else value
    if isinstance(node, Bytes):
        if value is None:
            return "" if node.kind == "string" else (bytes(node.size) if node.kind == "fixed" else b"")
        return value
    if isinstance(node, Array):
        if value is None:
            return []
        if not isinstance(value, list):
            value = [value]
        return [convert(v, node.elem, classes) for v in value]
    # Ref: struct or union
    if isinstance(value, list):
        value = value[0] if value else None
    cls = classes[node.name]
    if value is None:
        return cls()
    if type(value) is cls:
        return value
    return convert_struct(value, cls, classes)


def convert_struct(value: XdrStruct, cls: type, classes: dict[str, type]) -> XdrStruct:
    """Build a ``cls`` instance from the same-named fields of ``value``."""
    types = cls._xdr_types
    return cls(**{name: convert(getattr(value, name, None), node, classes) for name, node in types.items()})


class Translator:
    """Converts bodies of one protocol version to and from the internal (v4) form."""

    def __init__(self, proto: Protocol) -> None:
        self.proto = proto
        self.internal = protocol(INTERNAL_VERSION)

    def _internal_type(self, code: int, message_type: int) -> str | None:
        """The internal body type of a message, or None when v4 has no such message."""
        mine = self.proto.messages[code]
        theirs = self.internal.messages.get(code)
        if theirs is None or (mine.name != theirs.name and (mine.name, theirs.name) not in _RENAMED):
            return None
        return self.internal.body_type(code, message_type)

    def to_internal(self, code: int, message_type: int, body: Any) -> Any:
        """A decoded body of this version, in internal form."""
        if self.proto.version == INTERNAL_VERSION or body is None:
            return body
        internal = self._internal_type(code, message_type)
        if internal is None:
            return body
        return convert_struct(body, self.internal.codec.classes[internal], self.internal.codec.classes)

    def new_internal_body(self, code: int, message_type: int) -> Any:
        """A zero-valued body of a message in internal form (or this version's, if v4 lacks it)."""
        internal = self._internal_type(code, message_type)
        if internal is not None:
            return self.internal.codec.classes[internal]()
        return self.proto.new_body(code, message_type)

    def from_internal(self, code: int, message_type: int, body: Any) -> Any:
        """An internal-form body, converted for encoding in this version."""
        if self.proto.version == INTERNAL_VERSION or body is None:
            return body
        mine = self.proto.body_type(code, message_type)
        if mine is None:
            return None
        cls = self.proto.codec.classes[mine]
        if type(body) is cls:
            return body
        return convert_struct(body, cls, self.proto.codec.classes)


# messages whose name changed between versions but not their meaning
_RENAMED = {("NOTIFY_CONNECTED", "NOTIFY_CONNECTION_STATUS"), ("CONFIG_GET_MOVER_TYPE", "CONFIG_GET_CONNECTION_TYPE")}

