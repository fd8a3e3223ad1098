"""Virtual tape cartridges: a file that keeps records, filemarks and end of data.

Format (all integers big-endian; see ``ndmpd/devices/CARTRIDGE-FORMAT.md``)::

    offset 0      superblock (SUPERBLOCK), padded to DATA_START = 4096 bytes
    offset 4096   entries, back to back, up to the end of data (= end of file):
                  ENTRY_HEADER (16) | payload (length bytes) | ENTRY_TRAILER (8)

An entry is a record (``kind`` RECORD, payload = the record) or a filemark (``kind``
FILEMARK, no payload). The header's ``check`` is a CRC-32 of kind, length and the entry's
own file offset, so stray or shifted bytes are recognised as corruption; the trailer
repeats length and kind so the head can move backwards without an index.

Crash safety: an entry is written with one ``pwritev`` and a filemark is followed by
``fdatasync``. After a kill -9 the file ends in complete entries or in one torn entry;
opening a cartridge finds the end of data from the last trailer and, when that does not
verify, by scanning forward, so everything written before the tear stays readable.
Nothing on a cartridge is ever rewritten except by a write at the head (tape semantics:
it discards what follows) or an explicit superblock change (write protection).
"""

from __future__ import annotations

import dataclasses
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from construct import Bytes, Const, ConstructError, Int16ub, Int32ub, Int64ub, PaddedString, Struct

from . import medium as media
from .background_writer import BackgroundWriter
from .layouts import fast_packer
from .medium import IOV_MAX, Location
from .sealing import CARTRIDGE_ID_SIZE, CHECK_SIZE, END_MARKER_SIZE, KEY_ID_SIZE
from .tape import MediaError

MAGIC = b"NDMPDVT1"
FORMAT_VERSION = 1
FORMAT_SEALED = 2               # encrypted: an older ndmpd refuses it rather than return ciphertext
DATA_START = 4096
FLAG_WRITE_PROTECTED = 0x1
FLAG_SEALED = 0x2
KIND_RECORD = 0x52454344        # "RECD"
KIND_FILEMARK = 0x464D524B      # "FMRK"
MAX_RECORD = 0xFFFFFFFF
WRITE_DEPTH = 4                # batches a background write may have in flight (write_parted_records)

SUPERBLOCK_BODY = Struct(
    "magic" / Const(MAGIC),
    "format" / Int16ub,
    "flags" / Int16ub,
    "data_start" / Int32ub,
    "capacity" / Int64ub,          # bytes of entries the medium holds (physical end)
    "early_warning" / Int64ub,     # size of the early-warning zone before the physical end
    "created" / Int64ub,           # Unix seconds
    "barcode" / PaddedString(32, "utf8"),
)
SUPERBLOCK_CHECK = Struct("check" / Int32ub)     # CRC-32 of the body
SEAL_BLOCK = Struct(                # format 2 only, after the body's check
    "cartridge_id" / Bytes(CARTRIDGE_ID_SIZE),   # random; salts the cartridge's derived keys
    "key_id" / Bytes(KEY_ID_SIZE),               # which key (a hash of it, never the key)
    "key_check" / Bytes(CHECK_SIZE),             # HMAC of a constant under a derived key
    "key_name" / PaddedString(32, "utf8"),       # the key's name when sealed (for messages only)
)
ENTRY_HEADER = Struct("kind" / Int32ub, "length" / Int32ub, "check" / Int32ub, "reserved" / Int32ub)
ENTRY_TRAILER = Struct("length" / Int32ub, "kind" / Int32ub)
_CHECKED = Struct("kind" / Int32ub, "length" / Int32ub, "offset" / Int64ub)

_HEADER = fast_packer(ENTRY_HEADER)
_TRAILER = fast_packer(ENTRY_TRAILER)
_CHECK = fast_packer(_CHECKED)
_QUAD = struct.Struct(">Q")        # _CHECKED's last field, the offset
HEADER_SIZE = _HEADER.size
TRAILER_SIZE = _TRAILER.size
OVERHEAD = HEADER_SIZE + TRAILER_SIZE


@dataclass(frozen=True)
class SealInfo:
    """What a sealed cartridge's header says about its encryption (no secret)."""

    cartridge_id: bytes
    key_id: bytes
    key_check: bytes
    key_name: str = ""


@dataclass(frozen=True)
class Superblock:
    capacity: int
    early_warning: int
    write_protected: bool = False
    barcode: str = ""
    created: int = 0
    seal: SealInfo | None = None          # None: a plain (format 1) cartridge

    def pack(self) -> bytes:
        flags = (FLAG_WRITE_PROTECTED if self.write_protected else 0) | (FLAG_SEALED if self.seal else 0)
        body = SUPERBLOCK_BODY.build(dict(
            format=FORMAT_SEALED if self.seal else FORMAT_VERSION, flags=flags,
            data_start=DATA_START, capacity=self.capacity, early_warning=self.early_warning,
            created=self.created, barcode=self.barcode))
        packed = body + SUPERBLOCK_CHECK.build(dict(check=zlib.crc32(body)))
        if self.seal:
            block = SEAL_BLOCK.build(dict(cartridge_id=self.seal.cartridge_id, key_id=self.seal.key_id,
                                          key_check=self.seal.key_check, key_name=self.seal.key_name))
            packed += block + SUPERBLOCK_CHECK.build(dict(check=zlib.crc32(block)))
        return packed.ljust(DATA_START, b"\0")

    @property
    def filemark_length(self) -> int:
        """A sealed cartridge's filemark carries its file's authenticated end marker."""
        return END_MARKER_SIZE if self.seal else 0

    @classmethod
    def unpack(cls, data: bytes, where: str) -> "Superblock":
        size = SUPERBLOCK_BODY.sizeof()
        if len(data) < DATA_START:
            raise MediaError(f"{where}: not a cartridge (shorter than its {DATA_START}-byte superblock)")
        try:
            body = SUPERBLOCK_BODY.parse(data[:size])
        except ConstructError:
            raise MediaError(f"{where}: not an ndmpd cartridge (bad magic)") from None
        if SUPERBLOCK_CHECK.parse(data[size:size + 4]).check != zlib.crc32(data[:size]):
            raise MediaError(f"{where}: cartridge superblock is corrupt (checksum)")
        sealed = body.format == FORMAT_SEALED
        if (body.format not in (FORMAT_VERSION, FORMAT_SEALED) or body.data_start != DATA_START
                or sealed != bool(body.flags & FLAG_SEALED)):
            raise MediaError(f"{where}: cartridge format {body.format} is not supported")
        seal = None
        if sealed:
            start = size + SUPERBLOCK_CHECK.sizeof()
            end = start + SEAL_BLOCK.sizeof()
            if SUPERBLOCK_CHECK.parse(data[end:end + 4]).check != zlib.crc32(data[start:end]):
                raise MediaError(f"{where}: cartridge superblock is corrupt (encryption block checksum)")
            block = SEAL_BLOCK.parse(data[start:end])
            seal = SealInfo(block.cartridge_id, block.key_id, block.key_check, block.key_name)
        return cls(body.capacity, body.early_warning, bool(body.flags & FLAG_WRITE_PROTECTED),
                   body.barcode, body.created, seal)


@dataclass(frozen=True)
class Entry:
    """One record or filemark on the cartridge."""

    kind: int
    length: int
    offset: int                 # file offset of its header

    @property
    def end(self) -> int:
        return self.offset + OVERHEAD + self.length

    @property
    def is_filemark(self) -> bool:
        return self.kind == KIND_FILEMARK


def entry_check(kind: int, length: int, offset: int) -> int:
    return zlib.crc32(_CHECK.pack(kind, length, offset))


def record_header(length: int) -> Callable[[int], bytes]:
    """The header of a record entry of ``length`` bytes, given its offset: entry_check inlined
    (the CRC of the constant kind and length carries on into the offset's bytes), for the
    write paths that make one per record."""
    head, crc, quad = _HEADER.pack, zlib.crc32, _QUAD.pack
    seed = crc(_CHECK.pack(KIND_RECORD, length, 0)[:_CHECK.size - _QUAD.size])
    return lambda at: head(KIND_RECORD, length, crc(quad(at), seed), 0)


def default_early_warning(capacity: int) -> int:
    """A zone of 1/20 of the capacity, at most 64 MiB: room for trailers after EOM."""
    return min(capacity // 20, 64 << 20)


def create(path: Location, capacity: int, early_warning: int | None = None, barcode: str = "",
           write_protected: bool = False, seal: SealInfo | None = None) -> Superblock:
    """Write a blank cartridge (a file, or on a remote medium); refuses to overwrite one."""
    sb = Superblock(capacity, default_early_warning(capacity) if early_warning is None else early_warning,
                    write_protected, barcode, int(time.time()), seal)
    media.create(path, sb.pack())
    return sb


class Cartridge:
    """An open cartridge: entry-level reads and writes over its medium, no tape position."""

    def __init__(self, path: Location, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self._writer: BackgroundWriter | None = None     # started by the first background write
        self.medium = media.open_medium(path, writable)
        try:
            self.superblock = Superblock.unpack(self.medium.pread(DATA_START, 0), str(path))
            size = self.medium.size()
            self.eod = self._find_end_of_data(size)
            self.torn = size - self.eod      # bytes after the last complete entry (a cut file, a torn write)
        except BaseException:
            self.medium.close()
            raise
        self._header = bytearray(HEADER_SIZE)

    def __enter__(self) -> "Cartridge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish the background writes (a failure of theirs was raised by the last call that
        waited for them, or is lost with the unclosed file: its end is found again at open)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.medium.close()

    def settle(self) -> None:
        """Wait for the background writes; MediaError when one failed. Every call that reads
        the medium or writes it other than by a background write settles first, so nothing
        sees it behind ``eod``; a failure is raised again by every call until :meth:`close`
        (the head of a drive is past records that are not on the cartridge)."""
        if self._writer is None:
            return
        try:
            self._writer.drain()
        except OSError as exc:
            raise MediaError(f"{self.path}: writing the cartridge failed: {exc.strerror or exc}; the records "
                             "from there on are not on it") from None

    @property
    def used(self) -> int:
        return self.eod - DATA_START

    # ---------------------------------------------------------------- reading

    def entry_at(self, offset: int) -> Entry | None:
        """The entry starting at ``offset``, or None at end of data."""
        self.settle()
        if offset >= self.eod:
            return None
        return self._verify(self.medium.pread(HEADER_SIZE, offset), offset, self.eod)

    def _verify(self, header: bytes, offset: int, limit: int) -> Entry:
        if len(header) < HEADER_SIZE:
            raise MediaError(f"{self.path}: truncated entry at offset {offset}")
        kind, length, check, _ = _HEADER.unpack(header)
        if (kind not in (KIND_RECORD, KIND_FILEMARK) or check != entry_check(kind, length, offset)
                or (kind == KIND_FILEMARK and length != self.superblock.filemark_length)
                or offset + OVERHEAD + length > limit):
            raise MediaError(f"{self.path}: corrupt entry at offset {offset}")
        return Entry(kind, length, offset)

    def entry_before(self, offset: int) -> Entry | None:
        """The entry ending at ``offset``, or None at the beginning of tape."""
        self.settle()
        if offset <= DATA_START:
            return None
        trailer = self.medium.pread(TRAILER_SIZE, offset - TRAILER_SIZE)
        length, kind = _TRAILER.unpack(trailer)
        start = offset - OVERHEAD - length
        if start < DATA_START:
            raise MediaError(f"{self.path}: corrupt entry before offset {offset}")
        entry = self._verify(self.medium.pread(HEADER_SIZE, start), start, offset)
        if entry.end != offset or entry.kind != kind:
            raise MediaError(f"{self.path}: corrupt entry before offset {offset}")
        return entry

    def read_payload(self, entry: Entry, limit: int) -> bytes:
        self.settle()
        return self.medium.pread(min(limit, entry.length), entry.offset + HEADER_SIZE)

    def read_payload_into(self, entry: Entry, buffer: memoryview) -> int:
        """The whole payload of ``entry`` into ``buffer`` (at least its length); MediaError
        when the file ends inside it."""
        self.settle()
        got = self.medium.preadv([buffer[:entry.length]], entry.offset + HEADER_SIZE)
        if got != entry.length:
            raise MediaError(f"{self.path}: truncated entry at offset {entry.offset}")
        return got

    def read_into(self, offset: int, buffer: memoryview) -> tuple[Entry | None, int]:
        """Header and payload of the entry at ``offset`` in one system call.

        Returns the entry and how many payload bytes landed in ``buffer``.
        """
        self.settle()
        if offset >= self.eod:
            return None, 0
        got = self.medium.preadv([self._header, buffer], offset)
        entry = self._verify(bytes(self._header) if got >= HEADER_SIZE else b"", offset, self.eod)
        return entry, min(entry.length, len(buffer), max(0, got - HEADER_SIZE))

    def entries(self):
        """Every entry from the beginning of tape (for inspection tools)."""
        offset = DATA_START
        while (entry := self.entry_at(offset)) is not None:
            yield entry
            offset = entry.end

    # ---------------------------------------------------------------- writing

    def write_entry(self, offset: int, kind: int, *payload: bytes | memoryview) -> int:
        """Write one entry at ``offset`` (discarding everything after it); returns its end.
        The payload may come in parts (a sealed record: envelope prefix, ciphertext)."""
        length = sum(len(part) for part in payload)
        self._truncate(offset)
        parts = [_HEADER.pack(kind, length, entry_check(kind, length, offset), 0), *payload,
                 _TRAILER.pack(length, kind)]
        total = OVERHEAD + length
        self._pwrite_all(parts, offset, total)
        if kind == KIND_RECORD:
            self.medium.note_records(offset, length, 1)
        self.eod = offset + total
        return self.eod

    def write_records(self, offset: int, data: memoryview, size: int) -> int:
        """Write ``len(data) // size`` records of ``size`` bytes at ``offset`` with as few
        ``pwritev`` calls as the iovec limit allows; returns the new end of data."""
        count = len(data) // size
        self._truncate(offset)
        trailer = _TRAILER.pack(size, KIND_RECORD)
        stride = OVERHEAD + size
        head = record_header(size)
        done = 0
        while done < count:
            batch = min(count - done, IOV_MAX // 3)
            start = offset + done * stride
            parts: list[bytes | memoryview] = []
            at, pos = start, done * size
            for _ in range(batch):
                parts += (head(at), data[pos:pos + size], trailer)
                at += stride
                pos += size
            self._pwrite_all(parts, start, batch * stride)
            self.medium.note_records(start, size, batch)
            done += batch
            self.eod = start + batch * stride
        self.medium.streamed()
        return self.eod

    def write_parted_records(self, offset: int, payloads: list[tuple[bytes | memoryview, ...]],
                             background: bool = False) -> int:
        """Write records whose payloads come in parts, all of one length, at ``offset`` with as
        few ``pwritev`` calls as the iovec limit allows; returns the new end of data.

        ``background``: an append (``offset`` is the end of data) written by the cartridge's
        writer thread while the caller goes on; the payloads must stay unchanged until
        ``WRITE_DEPTH`` more background writes were made (this waits while that many are in
        flight) or the cartridge settled. A failure is raised by a later call (MediaError)."""
        if not payloads:
            return offset
        if not background or offset != self.eod:
            self._truncate(offset)
        length = sum(len(part) for part in payloads[0])
        trailer = _TRAILER.pack(length, KIND_RECORD)
        stride = OVERHEAD + length
        head = record_header(length)
        per_batch = max(1, IOV_MAX // (2 + len(payloads[0])))
        writes: list[tuple[list[bytes | memoryview], int, int]] = []
        at = offset
        for first in range(0, len(payloads), per_batch):
            batch = payloads[first:first + per_batch]
            parts: list[bytes | memoryview] = []
            for i, payload in enumerate(batch):
                parts += (head(at + i * stride), *payload, trailer)
            writes.append((parts, at, len(batch)))
            at += len(batch) * stride
        if background:
            if self._writer is None:
                self._writer = BackgroundWriter(f"cartridge writer {self.medium.name}", WRITE_DEPTH)
            try:
                self._writer.submit(lambda: self._write_all(writes, length, advance=False))
            except OSError:
                self.settle()                   # raises it as the MediaError it is
            self.eod = at
        else:
            self._write_all(writes, length, advance=True)
        return self.eod

    def _write_all(self, writes: list[tuple[list[bytes | memoryview], int, int]], length: int,
                   advance: bool) -> None:
        """Write ``writes`` (parts, offset, records) of ``length``-byte records. ``advance``: move
        ``eod`` past each batch as it lands (a foreground write: a failure leaves it after the last
        whole batch); a background write's caller moved it past them all already."""
        stride = OVERHEAD + length
        for parts, start, count in writes:
            self._pwrite_all(parts, start, count * stride)
            self.medium.note_records(start, length, count)
            if advance:
                self.eod = start + count * stride
        self.medium.streamed()

    def replace_superblock(self, superblock: Superblock) -> None:
        """A new header for a cartridge rewritten from the beginning of tape (its entries are
        discarded first, so no entry is ever read under a header it was not written with)."""
        self._truncate(DATA_START)
        self.medium.write_header(superblock.pack())
        self.superblock = superblock

    def _truncate(self, offset: int) -> None:
        """A write at ``offset`` discards everything after it (tape semantics); the background
        writes are finished first."""
        self.settle()
        self.medium.truncate(offset)
        self.eod = offset

    def _pwrite_all(self, parts: list, offset: int, total: int) -> None:
        self.medium.append(parts, offset, total)

    def sync(self) -> None:
        self.settle()
        self.medium.sync()

    def set_write_protected(self, protected: bool) -> None:
        self.settle()
        self.superblock = dataclasses.replace(self.superblock, write_protected=protected)
        self.medium.write_header(self.superblock.pack())

    def records_ahead(self, offset: int) -> tuple[int, int]:
        """How many records of one length follow ``offset`` back to back, and their stride
        (entry size), as far as the medium keeps a map of them ((0, 0): read the headers)."""
        self.settle()
        return self.medium.records_ahead(offset)

    def records_behind(self, offset: int) -> tuple[int, int]:
        """As records_ahead, for the records that end at ``offset``."""
        self.settle()
        return self.medium.records_behind(offset)

    # ------------------------------------------------------------ open/recovery

    def _find_end_of_data(self, size: int) -> int:
        """The end of the file when its last entry verifies (the usual case), else a scan."""
        if size == DATA_START or self.medium.exact_end:
            return size             # a medium that never holds a torn tail (S3): a read error is the error
        try:
            if self.entry_before(size) is not None:
                return size
        except MediaError:
            pass
        return self._scan_for_end(size)

    def _scan_for_end(self, size: int) -> int:
        """Slow path after a crash or truncation: the end of the last complete entry."""
        offset = DATA_START
        while offset < size:
            try:
                entry = self._verify(self.medium.pread(HEADER_SIZE, offset), offset, size)
            except MediaError:
                break
            offset = entry.end
        return offset       # the users say so (``torn``): a drive logs it, ``ndmpd tape`` prints it
