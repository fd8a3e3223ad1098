"""The DMA's half of the wire code, shared by every client of ndmpd/wire: a request by name
becomes framed bytes, a received record becomes a v4-form body, a login becomes auth data.

The asyncio :class:`~ndmpd.dma.agent.Agent` and the tests' blocking client both go through
:class:`MessageCodec`, so there is one way to build and read a message on the client side.
"""

from __future__ import annotations

import time
from typing import Any

from ..wire import C, REQUEST, T, Translator, protocol
from ..wire.auth import md5_digest
from ..wire.message import Header
from ..wire.records import frame
from ..wire.translate import convert_struct

_MISSING = object()


class MessageCodec:
    """Encodes requests and decodes replies and posts for one negotiated version."""

    def __init__(self, version: int = 4) -> None:
        self.set_version(version)

    def set_version(self, version: int) -> None:
        """Speak ``version`` from the next message on (after CONNECT_OPEN succeeded)."""
        self.version = version
        self.proto = protocol(version)
        self.translator = Translator(self.proto)

    def spec(self, message: str) -> Any:
        """The message spec of ``message`` (a v4 name; names only older versions have too)."""
        spec = protocol(4).by_name.get(message) or self.proto.by_name.get(message)
        if spec is None or spec.code not in self.proto.messages:
            raise ValueError(f"{message} is not a message of NDMPv{self.version}")
        return spec

    def request(self, message: str, sequence: int, fields: dict[str, Any],
                max_fragment: int | None = None) -> bytes:
        """Request ``message`` with its internal body's ``fields``, framed for the wire (in
        fragments of at most ``max_fragment`` bytes when given, as xdrrec clients send)."""
        spec = self.spec(message)
        payload = b""
        if spec.request:
            body, own = self.translator.new_internal_body(spec.code, REQUEST), {}
            for name, value in fields.items():
                try:
                    setattr(body, name, value)
                except AttributeError:       # a field only this version has (v2's mover_addr)
                    own[name] = value
            wire_body = self._own_fields(message, self.translator.from_internal(spec.code, REQUEST, body), own)
            payload = self.proto.encode_body(spec.code, REQUEST, wire_body)
        record = Header(sequence, int(time.time()), REQUEST, spec.code, 0, 0).pack() + payload
        return frame(record, max_fragment=max_fragment) if max_fragment else frame(record)

    def _own_fields(self, message: str, body: Any, own: dict[str, Any]) -> Any:
        """``body`` (this version's form) with the fields v4 lacks set, each converted from
        the internal form of its type (a v4 ``addr`` becomes v2's ``ndmp2_addr``)."""
        for name, value in own.items():
            default = getattr(body, name, _MISSING)
            if default is _MISSING:
                raise ValueError(f"{message} of NDMPv{self.version} has no field {name!r}")
            if hasattr(type(default), "_xdr_types") and type(value) is not type(default):
                value = convert_struct(value, type(default), self.proto.codec.classes)
            setattr(body, name, value)
        return body

    def decode(self, header: Header, record: bytes) -> Any:
        """The v4-form body of a received message."""
        body = self.proto.decode_body(header.message_code, header.message_type, record)
        return self.translator.to_internal(header.message_code, header.message_type, body)


def auth_data(method: str, user: str, password: str, challenge: bytes = b"") -> Any:
    """CONNECT_CLIENT_AUTH's auth_data for ``method`` (md5 needs the server's challenge)."""
    if method == "md5":
        digest = md5_digest(password.encode("utf-8"), bytes(challenge))
        return T.auth_data(auth_type=C.AUTH_MD5, auth_md5=T.auth_md5(auth_id=user, auth_digest=digest))
    if method == "text":
        return T.auth_data(auth_type=C.AUTH_TEXT, auth_text=T.auth_text(auth_id=user, auth_password=password))
    if method == "none":
        return T.auth_data(auth_type=C.AUTH_NONE)
    raise ValueError(f"unknown auth method {method!r} (md5, text or none)")
