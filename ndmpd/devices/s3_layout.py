"""The index object of a cartridge on S3: its superblock, where its log's bytes are, and a map
of its records (see CARTRIDGE-FORMAT.md, "On S3").

Objects are immutable, so a cartridge is a prefix holding one small index object and segment
objects. The index lists the segments in log order (each: how many bytes of which object),
so a cut at offset X only shortens the list, and a new index is one PUT: readers see the old
cartridge or the new one, never a mix. ``runs`` maps the records (offset, length, count of
back-to-back records of one length), so spacing over records needs no GET of their headers.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from construct import (Bytes, Const, ConstructError, Int16ub, Int32ub, Int64ub, PascalString, PrefixedArray,
                       Struct)

INDEX_MAGIC = b"NDMPDS3I"
INDEX_VERSION = 1
HEADER_SIZE = 4096                  # the cartridge superblock (cartridge.DATA_START)

SEGMENT = Struct("length" / Int64ub, "key" / PascalString(Int16ub, "utf8"))
RUN = Struct("offset" / Int64ub, "length" / Int32ub, "count" / Int64ub)
INDEX_BODY = Struct(
    "magic" / Const(INDEX_MAGIC),
    "version" / Int16ub,
    "generation" / Int64ub,         # +1 at every PUT; names the segments a write session starts
    "header" / Bytes(HEADER_SIZE),
    "segments" / PrefixedArray(Int32ub, SEGMENT),
    "runs" / PrefixedArray(Int32ub, RUN),
)
INDEX_CHECK = Struct("check" / Int32ub)      # CRC-32 of the body


class IndexCorrupt(ValueError):
    """The index object is not one this version reads."""


@dataclass
class Segment:
    key: str
    length: int                     # bytes of the object that belong to the log (a cut shortens it)


@dataclass
class Run:
    offset: int                     # the first record's entry offset
    length: int                     # each record's payload length
    count: int

    def stride(self, overhead: int) -> int:
        return overhead + self.length


@dataclass
class Index:
    header: bytes
    generation: int = 0
    segments: list[Segment] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    @property
    def size(self) -> int:
        """The cartridge's length in bytes: superblock and log."""
        return HEADER_SIZE + sum(s.length for s in self.segments)

    def pack(self) -> bytes:
        body = INDEX_BODY.build(dict(
            version=INDEX_VERSION, generation=self.generation, header=self.header.ljust(HEADER_SIZE, b"\0"),
            segments=[dict(length=s.length, key=s.key) for s in self.segments],
            runs=[dict(offset=r.offset, length=r.length, count=r.count) for r in self.runs]))
        return body + INDEX_CHECK.build(dict(check=zlib.crc32(body)))

    @classmethod
    def unpack(cls, data: bytes, where: str) -> "Index":
        if len(data) < 4 or INDEX_CHECK.parse(data[-4:]).check != zlib.crc32(data[:-4]):
            raise IndexCorrupt(f"{where}: cartridge index is corrupt (checksum)")
        try:
            body = INDEX_BODY.parse(data[:-4])
        except ConstructError:
            raise IndexCorrupt(f"{where}: not an ndmpd cartridge index") from None
        if body.version != INDEX_VERSION:
            raise IndexCorrupt(f"{where}: cartridge index version {body.version} is not supported")
        return cls(bytes(body.header), body.generation, [Segment(s.key, s.length) for s in body.segments],
                   [Run(r.offset, r.length, r.count) for r in body.runs])

    def cut(self, offset: int, overhead: int) -> None:
        """Keep only the log before ``offset`` (segments and record runs past it dropped, the
        ones across it shortened)."""
        at, kept = HEADER_SIZE, []
        for segment in self.segments:
            if at >= offset:
                break
            kept.append(Segment(segment.key, min(segment.length, offset - at)))
            at += segment.length
        self.segments = kept
        runs = []
        for run in self.runs:
            if run.offset >= offset:
                break
            whole = (offset - run.offset) // run.stride(overhead)
            runs.append(Run(run.offset, run.length, min(run.count, whole)))
        self.runs = [r for r in runs if r.count]

    def note_records(self, offset: int, length: int, count: int, overhead: int) -> None:
        """``count`` records of ``length`` were written back to back from ``offset``."""
        last = self.runs[-1] if self.runs else None
        if last is not None and last.length == length and last.offset + last.count * last.stride(overhead) == offset:
            last.count += count
        else:
            self.runs.append(Run(offset, length, count))

    def run_at(self, offset: int, overhead: int, ending: bool) -> tuple[int, int]:
        """(records, stride): how many whole records of one run start at (``ending``: end at)
        ``offset`` going forward (backward); (0, 0) when no run maps it."""
        lo, hi = 0, len(self.runs)
        while lo < hi:                              # the last run starting at or before offset
            mid = (lo + hi) // 2
            if self.runs[mid].offset <= offset:
                lo = mid + 1
            else:
                hi = mid
        for run in self.runs[max(0, lo - 2):lo]:
            stride = run.stride(overhead)
            done, rest = divmod(offset - run.offset, stride)
            if rest or not 0 <= done <= run.count:
                continue
            left = done if ending else run.count - done
            if left:
                return left, stride
        return 0, 0
