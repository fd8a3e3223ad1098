"""The NDMP message envelope: a 24-byte header followed by the body, as one record."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .schema import HEADER_SIZE

_HEADER = struct.Struct(">IIiiIi")   # the layout of ndmpN_header in protocol/*.x (same in v2-v4)


@dataclass
class Header:
    sequence: int
    time_stamp: int
    message_type: int
    message_code: int
    reply_sequence: int
    error_code: int

    def pack(self) -> bytes:
        return _HEADER.pack(self.sequence & 0xFFFFFFFF, self.time_stamp & 0xFFFFFFFF, self.message_type,
                            self.message_code, self.reply_sequence & 0xFFFFFFFF, self.error_code)


def unpack_header(record: bytes) -> Header:
    """Decode the header at the start of a record (raises struct.error when short)."""
    return Header(*_HEADER.unpack_from(record, 0))


def partial_header(record: bytes) -> tuple[int, int]:
    """(sequence, message_code) from whatever part of a header a short record holds."""
    padded = record[:HEADER_SIZE].ljust(HEADER_SIZE, b"\0")
    head = unpack_header(padded)
    return head.sequence, head.message_code if len(record) >= 16 else 0
