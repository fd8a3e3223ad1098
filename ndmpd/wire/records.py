"""ONC RPC record marking (RFC 5531 section 11): fragments in, records out, and back.

Every NDMP message is one record. Peers built on xdrrec (ndmjob, illumos) split large
records into ~4000-byte fragments, so reassembly is mandatory; on the way out we cut
records into fragments of at most 64 KiB, which every peer and Wireshark accept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

LAST_FRAGMENT = 0x80000000
MAX_SEND_FRAGMENT = 65536
_MARK = struct.Struct(">I")


@dataclass
class OversizedRecord:
    """A record longer than the limit: its bytes were discarded except the first ``head``."""

    head: bytes
    length: int


class RecordReader:
    """Sans-IO reassembly of fragments into records, bounded by ``max_record``.

    Feed bytes as they arrive; ``records()`` yields each complete record as ``bytes``, or an
    :class:`OversizedRecord` for one that exceeded the limit (its remainder is skipped without
    being stored, so a hostile length never costs memory).
    """

    def __init__(self, max_record: int, keep_head: int = 24) -> None:
        self.max_record = max_record
        self.keep_head = keep_head
        self._buf = bytearray()
        self._record = bytearray()
        self._record_len = 0
        self._frag_left = -1           # -1: expecting a fragment header
        self._last = False
        self._oversized = False

    def feed(self, data: bytes) -> list[bytes | OversizedRecord]:
        """Add received bytes; return the records they completed."""
        self._buf += data
        out: list[bytes | OversizedRecord] = []
        buf = self._buf
        pos = 0
        while True:
            if self._frag_left < 0:
                if len(buf) - pos < 4:
                    break
                mark = _MARK.unpack_from(buf, pos)[0]
                pos += 4
                self._last = bool(mark & LAST_FRAGMENT)
                self._frag_left = mark & ~LAST_FRAGMENT
            take = min(self._frag_left, len(buf) - pos)
            if take:
                self._record_len += take
                if self._record_len > self.max_record:
                    self._oversized = True
                if not self._oversized:
                    self._record += buf[pos:pos + take]
                elif len(self._record) < self.keep_head:
                    self._record += buf[pos:pos + min(take, self.keep_head - len(self._record))]
                pos += take
                self._frag_left -= take
            if self._frag_left:
                break
            self._frag_left = -1
            if self._last:
                if self._oversized:
                    out.append(OversizedRecord(bytes(self._record[:self.keep_head]), self._record_len))
                else:
                    out.append(bytes(self._record))
                self._record = bytearray()
                self._record_len = 0
                self._oversized = False
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete record (bounded by max_record + one read)."""
        return len(self._buf) + len(self._record)


def frame(record: bytes, max_fragment: int = MAX_SEND_FRAGMENT) -> bytes:
    """Record-mark one record, cut into fragments of at most ``max_fragment`` bytes."""
    if len(record) <= max_fragment:
        return _MARK.pack(LAST_FRAGMENT | len(record)) + record
    parts = []
    view = memoryview(record)
    for start in range(0, len(record), max_fragment):
        chunk = view[start:start + max_fragment]
        last = LAST_FRAGMENT if start + max_fragment >= len(record) else 0
        parts.append(_MARK.pack(last | len(chunk)))
        parts.append(bytes(chunk))
    return b"".join(parts)
