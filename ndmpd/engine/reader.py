"""Reading a tar stream member by member: ustar, pax (local and global), GNU long names, sparse.

Every length an untrusted stream gives is bounded before anything is allocated: an extended
header or long name over ``MAX_META`` bytes is refused (its member is skipped), sparse maps
are capped, and a bad checksum makes the reader search block by block for the next header,
as GNU tar does. A stream that ends early raises :class:`TruncatedStream`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from . import pax, sparse

_META_TYPES = (pax.XHDTYPE, pax.XGLTYPE, pax.GNU_LONGNAME, pax.GNU_LONGLINK)
MAX_META = 1 << 20          # largest pax header / GNU long name accepted
READ_SIZE = 1 << 20


class TruncatedStream(Exception):
    """The stream ended inside a member."""


@dataclass(slots=True)
class Member:
    """One archive member with its pax overrides applied."""

    name: bytes
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    uname: bytes
    gname: bytes
    mtime_ns: int
    size: int                       # bytes of data in the stream (a sparse member: map + extents)
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    offset: int = 0                 # stream offset of its first header block
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    dumpdir: list[bytes] | None = None
    realsize: int | None = None     # sparse: the file's real size
    sparse_major: int | None = None
    sparse_map: list[sparse.Extent] | None = None   # sparse 0.x: map from the headers
    link_offset: int | None = None  # a hard link: where its first link's header is (ndmpd images)

    @property
    def is_sparse(self) -> bool:
        return self.realsize is not None


class ByteSource(Protocol):
    """Anything a stream can be read from besides a plain fd (a direct-access data connection)."""

    def readinto(self, view: memoryview) -> int: ...


class StreamReader:
    """Members of a tar stream read from a file descriptor (pipe, socket or file) or a ByteSource."""

    def __init__(self, fd: "int | ByteSource", start: int = 0, warn: Callable[[str], None] | None = None) -> None:
        self.fd = fd
        self._readinto = fd.readinto if not isinstance(fd, int) else (lambda view: os.readv(fd, [view]))
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._pos = 0
        self._end = 0
        self._consumed = start          # stream offset of _buffer[_pos]
        self._warn = warn or (lambda message: None)
        self._globals: dict[bytes, bytes] = {}
        self._data_left = 0             # unread data + padding of the current member
        self.labels: dict[str, str] = {}
        self._owners_seen: dict[bytes, tuple] = {}

    @property
    def offset(self) -> int:
        return self._consumed

    # -- raw bytes -------------------------------------------------------------------------

    def _fill(self) -> bool:
        if self._pos == self._end:
            self._pos = self._end = 0
        elif self._end == len(self._buffer):
            remaining = self._end - self._pos
            self._buffer[:remaining] = self._buffer[self._pos:self._end]
            self._pos, self._end = 0, remaining
        got = self._readinto(self._view[self._end:])
        self._end += got
        return got > 0

    def _take(self, count: int) -> memoryview | None:
        """The next ``count`` (<= READ_SIZE) bytes, or None at a clean end of stream."""
        while self._end - self._pos < count:
            if not self._fill():
                if self._end == self._pos:
                    return None
                raise TruncatedStream(f"stream ends {self._end - self._pos} bytes into a block")
        view = self._view[self._pos:self._pos + count]
        self._pos += count
        self._consumed += count
        return view

    def chunks(self, count: int) -> Iterator[memoryview]:
        """Up to ``count`` data bytes as views into the read buffer (valid until the next call)."""
        while count:
            if self._pos == self._end and not self._fill():
                raise TruncatedStream("stream ends inside a member's data")
            step = min(count, self._end - self._pos)
            view = self._view[self._pos:self._pos + step]
            self._pos += step
            self._consumed += step
            self._data_left -= step
            count -= step
            yield view

    def read_exact(self, count: int) -> bytes:
        if self._end - self._pos >= count:           # usually all in the buffer already
            data = bytes(self._view[self._pos:self._pos + count])
            self._pos += count
            self._consumed += count
            self._data_left -= count
            return data
        return b"".join(bytes(chunk) for chunk in self.chunks(count))

    def skip(self, count: int) -> None:
        while count:
            available = self._end - self._pos
            if not available:
                if not self._fill():
                    raise TruncatedStream("stream ends inside a member's data")
                continue
            step = min(count, available)
            self._pos += step
            self._consumed += step
            self._data_left -= step
            count -= step

    def read_block(self) -> bytes:
        block = self._take(pax.BLOCK)
        if block is None:
            raise TruncatedStream("stream ends inside a member's data")
        self._data_left -= pax.BLOCK
        return bytes(block)

    # -- members ---------------------------------------------------------------------------

    def members(self) -> Iterator[Member]:
        """Each member in turn; data the caller did not read is skipped before the next."""
        while True:
            if self._data_left:
                self.skip(self._data_left)
            member = self._next_member()
            if member is None:
                return
            self._data_left = pax.round_up(member.size)
            yield member

    def _next_member(self) -> Member | None:
        local: dict[bytes, bytes] = {}
        xattrs: list[tuple[bytes, bytes]] = []
        long_name = long_link = None
        first_offset = None
        refused = False
        while True:
            offset = self._consumed
            block = self._take(pax.BLOCK)
            if block is None:
                self._warn("stream ends without the end-of-archive blocks")
                return None
            if not any(block):
                return None
            block = bytes(block)
            kind = block[156:157]
            try:
                if kind in _META_TYPES:
                    pax.check_block(block)
                    size = pax.meta_size(block)
                else:
                    raw = pax.parse_ustar(block, self._owners_seen)
            except pax.HeaderError as exc:
                self._resync(exc)
                local, xattrs, long_name, long_link, first_offset, refused = {}, [], None, None, None, False
                continue
            if first_offset is None:
                first_offset = offset
            if kind in _META_TYPES:
                if size > MAX_META:
                    self._warn(f"refused a {size}-byte extended header (limit {MAX_META}); "
                               "its member is skipped")
                    self.skip(pax.round_up(size))
                    refused = True
                    continue
                data = self.read_exact(size)
                self.skip(pax.round_up(size) - size)
                if kind == pax.GNU_LONGNAME:
                    long_name = data.split(b"\0", 1)[0]
                elif kind == pax.GNU_LONGLINK:
                    long_link = data.split(b"\0", 1)[0]
                else:
                    try:
                        records = pax.parse_records(data)
                    except pax.HeaderError as exc:
                        self._warn(f"malformed pax header at offset {offset}: {exc}; its member is skipped")
                        refused = True
                        continue
                    target = self._globals if kind == pax.XGLTYPE else local
                    for key, value in records:
                        if key.startswith(b"SCHILY.xattr."):
                            if kind == pax.XHDTYPE:
                                xattrs.append((key[len(b"SCHILY.xattr."):], value))
                        elif kind == pax.XHDTYPE or not key.startswith(b"NDMPD."):   # labels: below
                            target[key] = value
                    if kind == pax.XGLTYPE:
                        self._note_labels(records)
                        first_offset = None
                continue
            records = {**self._globals, **local} if self._globals else local
            member = self._member(raw, records, xattrs, long_name, long_link, first_offset)
            if refused:
                self._data_left = pax.round_up(member.size)
                self.skip(self._data_left)
                local, xattrs, long_name, long_link, first_offset, refused = {}, [], None, None, None, False
                continue
            return member

    def _note_labels(self, records: list[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            if key.startswith(b"NDMPD."):
                self.labels[key[6:].decode("ascii", "replace")] = value.decode("utf-8", "replace")

    def _resync(self, exc: Exception) -> None:
        start = self._consumed - pax.BLOCK
        skipped = 0
        while True:
            block = self._take(pax.BLOCK)
            if block is None:
                break
            try:
                pax.parse_ustar(block)
            except pax.HeaderError:
                skipped += 1
                continue
            self._pos -= pax.BLOCK
            self._consumed -= pax.BLOCK
            break
        self._warn(f"damaged header at offset {start} ({exc}); skipped {skipped + 1} blocks to the next header")

    def _member(self, raw: pax.RawHeader, records: dict[bytes, bytes], xattrs, long_name, long_link,
                offset: int) -> Member:
        name = records.get(b"path", long_name if long_name is not None else raw.name)
        linkname = records.get(b"linkpath", long_link if long_link is not None else raw.linkname)
        member = Member(name=name, typeflag=raw.typeflag, mode=raw.mode & 0o7777,
                        uid=raw.uid, gid=raw.gid, uname=records.get(b"uname", raw.uname),
                        gname=records.get(b"gname", raw.gname), mtime_ns=raw.mtime * 1_000_000_000,
                        size=raw.size, linkname=linkname, devmajor=raw.devmajor, devminor=raw.devminor,
                        offset=offset, xattrs=xattrs)
        if raw.typeflag == pax.LNKTYPE:
            member.link_offset = pax.parse_link_offset(records.get(b"comment"))
        try:
            if b"mtime" in records:
                member.mtime_ns = pax.parse_time(records[b"mtime"])
            if b"size" in records:
                member.size = int(records[b"size"])
            if b"uid" in records:
                member.uid = int(records[b"uid"])
            if b"gid" in records:
                member.gid = int(records[b"gid"])
            if b"GNU.dumpdir" in records:
                member.dumpdir = [entry for entry in records[b"GNU.dumpdir"].split(b"\0") if entry]
            self._sparse_records(member, records)
        except ValueError as exc:
            self._warn(f"{os.fsdecode(name)}: bad pax value ({exc}); header fields used instead")
        if member.size < 0:
            member.size = 0
        return member

    @staticmethod
    def _sparse_records(member: Member, records: dict[bytes, bytes]) -> None:
        if b"GNU.sparse.major" in records or b"GNU.sparse.map" in records or b"GNU.sparse.size" in records:
            member.sparse_major = int(records.get(b"GNU.sparse.major", b"0"))
            member.realsize = int(records.get(b"GNU.sparse.realsize", records.get(b"GNU.sparse.size", b"0")))
            if b"GNU.sparse.name" in records:
                member.name = records[b"GNU.sparse.name"]
            if member.sparse_major == 0 and b"GNU.sparse.map" in records:
                numbers = [int(n) for n in records[b"GNU.sparse.map"].split(b",") if n]
                if len(numbers) % 2 or len(numbers) > 2 * sparse.MAX_EXTENTS:
                    raise ValueError("odd sparse map")
                member.sparse_map = list(zip(numbers[::2], numbers[1::2]))
