"""The index object of a cartridge on S3: its superblock, where its log's bytes are, and a map
of its records (see CARTRIDGE-FORMAT.md, "On S3").

Objects are immutable, so a cartridge is a prefix holding one small index object and segment
objects. The index lists the segments in log order (each: how many bytes of which object),
so a cut at offset X only shortens the list, and a new index is one PUT: readers see the old
cartridge or the new one, never a mix. ``runs`` maps the records (offset, length, count of
back-to-back records of one length), so spacing over records needs no GET of their headers.

Version 2 keeps that PUT small on a cartridge of many tape files: the lists' prefix lives in
an immutable base object the index names, the index carries only the entries after it
(at most TAIL_LIMIT before the writer compacts them into a new base). Version 1 indexes
(everything inline) still read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from construct import (Bytes, Const, ConstructError, Int16ub, Int32ub, Int64ub, PascalString, PrefixedArray,
                       Struct)

INDEX_MAGIC = b"NDMPDS3I"
BASE_MAGIC = b"NDMPDS3B"
INDEX_VERSION = 2
HEADER_SIZE = 4096                  # the cartridge superblock (cartridge.DATA_START)
TAIL_LIMIT = 256                    # entries the index object holds past its base before a compaction

SEGMENT = Struct("length" / Int64ub, "key" / PascalString(Int16ub, "utf8"))
RUN = Struct("offset" / Int64ub, "length" / Int32ub, "count" / Int64ub)
PREAMBLE = Struct("magic" / Const(INDEX_MAGIC), "version" / Int16ub)
INDEX_V1 = Struct(                  # everything inline (rewritten whole at every filemark)
    "generation" / Int64ub,         # +1 at every PUT; names the segments a write session starts
    "header" / Bytes(HEADER_SIZE),
    "segments" / PrefixedArray(Int32ub, SEGMENT),
    "runs" / PrefixedArray(Int32ub, RUN),
)
INDEX_V2 = Struct(                  # a base object's prefix of the lists plus the tail since it
    "generation" / Int64ub,
    "header" / Bytes(HEADER_SIZE),
    "base" / PascalString(Int16ub, "utf8"),          # "" : no base, the lists are all here
    "base_segments" / Int32ub,
    "base_runs" / Int32ub,
    "segments" / PrefixedArray(Int32ub, SEGMENT),    # the tail: entries after the base's
    "runs" / PrefixedArray(Int32ub, RUN),
)
BASE_BODY = Struct(
    "magic" / Const(BASE_MAGIC),
    "segments" / PrefixedArray(Int32ub, SEGMENT),
    "runs" / PrefixedArray(Int32ub, RUN),
)
INDEX_CHECK = Struct("check" / Int32ub)      # CRC-32 of the body


def _checked(body: bytes) -> bytes:
    return body + INDEX_CHECK.build(dict(check=zlib.crc32(body)))


def _verified(data: bytes, where: str, what: str) -> bytes:
    if len(data) < 4 or INDEX_CHECK.parse(data[-4:]).check != zlib.crc32(data[:-4]):
        raise IndexCorrupt(f"{where}: {what} is corrupt (checksum)")
    return data[:-4]


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
    """The cartridge's map. In the store it is an index object (the one atomic switch) that
    names an immutable base object holding the first ``base_segments``/``base_runs`` entries
    and carries the few after them itself, so a filemark PUTs a small object whatever the
    cartridge holds; past TAIL_LIMIT entries the writer compacts (a new base, then the switch)."""

    header: bytes
    generation: int = 0
    segments: list[Segment] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    base: str = ""                  # the base object's key ("": none)
    base_segments: int = 0
    base_runs: int = 0
    base_end: int = HEADER_SIZE     # cartridge offset where the base's segments end

    @property
    def size(self) -> int:
        """The cartridge's length in bytes: superblock and log."""
        return HEADER_SIZE + sum(s.length for s in self.segments)

    @property
    def tail(self) -> int:
        """Entries the index object itself carries (past the base)."""
        return len(self.segments) - self.base_segments + len(self.runs) - self.base_runs

    def objects(self) -> set[str]:
        """Every object key this index needs (its segments and base)."""
        return {s.key for s in self.segments} | ({self.base} if self.base else set())

    def pack(self) -> bytes:
        """The index object."""
        return _checked(PREAMBLE.build(dict(version=INDEX_VERSION)) + INDEX_V2.build(dict(
            generation=self.generation, header=self.header.ljust(HEADER_SIZE, b"\0"), base=self.base,
            base_segments=self.base_segments, base_runs=self.base_runs,
            segments=_segments(self.segments[self.base_segments:]), runs=_runs(self.runs[self.base_runs:]))))

    def pack_base(self) -> bytes:
        """A base object of every entry (written before ``rebase`` names it)."""
        return _checked(BASE_BODY.build(dict(segments=_segments(self.segments), runs=_runs(self.runs))))

    def rebase(self, key: str) -> None:
        """``key`` now holds every entry (``pack_base``): the index object carries none."""
        self.base, self.base_segments, self.base_runs, self.base_end = key, len(self.segments), len(self.runs), self.size

    @classmethod
    def unpack(cls, data: bytes, where: str, fetch: Callable[[str], bytes] | None = None) -> "Index":
        """The index from its object; ``fetch(key)`` reads the base object it names."""
        body = _verified(data, where, "cartridge index")
        try:
            version = PREAMBLE.parse(body).version
        except ConstructError:
            raise IndexCorrupt(f"{where}: not an ndmpd cartridge index") from None
        if version not in (1, INDEX_VERSION):
            raise IndexCorrupt(f"{where}: cartridge index version {version} is not supported "
                               f"(this ndmpd reads 1 to {INDEX_VERSION})")
        try:
            parsed = (INDEX_V1 if version == 1 else INDEX_V2).parse(body[PREAMBLE.sizeof():])
        except ConstructError:
            raise IndexCorrupt(f"{where}: cartridge index is truncated or malformed") from None
        index = cls(bytes(parsed.header), parsed.generation, _segment_list(parsed.segments), _run_list(parsed.runs))
        if version == 1 or not parsed.base:
            return index
        if fetch is None:
            raise IndexCorrupt(f"{where}: cartridge index names a base object and none can be read")
        try:
            base = BASE_BODY.parse(_verified(fetch(parsed.base), where, f"base index {parsed.base}"))
        except ConstructError:
            raise IndexCorrupt(f"{where}: base index {parsed.base} is truncated or malformed") from None
        if len(base.segments) != parsed.base_segments or len(base.runs) != parsed.base_runs:
            raise IndexCorrupt(f"{where}: base index {parsed.base} does not match the cartridge index")
        index.segments[:0] = _segment_list(base.segments)
        index.runs[:0] = _run_list(base.runs)
        index.base, index.base_segments, index.base_runs = parsed.base, parsed.base_segments, parsed.base_runs
        index.base_end = HEADER_SIZE + sum(s.length for s in index.segments[:parsed.base_segments])
        return index

    def cut(self, offset: int, overhead: int) -> None:
        """Keep only the log before ``offset`` (segments and record runs past it dropped, the
        ones across it shortened). A cut into the base drops it: the next PUT is whole."""
        if offset < self.base_end:
            self.base, self.base_segments, self.base_runs, self.base_end = "", 0, 0, HEADER_SIZE
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
        last = self.runs[-1] if len(self.runs) > self.base_runs else None      # a base's runs are frozen
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


def _segments(segments: list[Segment]) -> list[dict]:
    return [dict(length=s.length, key=s.key) for s in segments]


def _runs(runs: list[Run]) -> list[dict]:
    return [dict(offset=r.offset, length=r.length, count=r.count) for r in runs]


def _segment_list(parsed: Any) -> list[Segment]:
    return [Segment(s.key, s.length) for s in parsed]


def _run_list(parsed: Any) -> list[Run]:
    return [Run(r.offset, r.length, r.count) for r in parsed]
