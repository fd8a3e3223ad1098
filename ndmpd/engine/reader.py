"""Reading a tar stream member by member: ustar, pax (local and global), GNU long names, sparse.

Every length an untrusted stream gives is bounded before anything is allocated: an extended
header or long name over ``MAX_META`` bytes is refused (its member is skipped), the extended
headers in front of one member may hold ``MAX_META_TOTAL`` bytes together and the global
records ``MAX_META``, sparse maps are capped, and a bad checksum (or a size no stream can
have, such as a negative one) makes the reader search block by block for the next header,
as GNU tar does. Every step consumes at least one block, so the reader always moves forward.

Only stream-level faults raise, all as :class:`StreamError`: a stream that ends early
(:class:`TruncatedStream`), a source that fails (:class:`SourceFailed`), a cancelled read
(:class:`ReadCancelled`, checked at every refill). A member whose fields are garbage is
still returned; :func:`member_problem` says what is wrong with it, so a restore can refuse
that member alone.
"""

from __future__ import annotations

import os
import re
import threading
from collections import ChainMap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from . import pax, sparse

_META_TYPES = (pax.XHDTYPE, pax.XGLTYPE, pax.GNU_LONGNAME, pax.GNU_LONGLINK)
MAX_META = 1 << 20          # largest pax header / GNU long name accepted
MAX_META_TOTAL = 4 << 20    # all the extended headers in front of one member, together
MAX_SIZE = (1 << 63) - 1    # largest member size or offset (off_t)
MAX_ID = (1 << 32) - 2      # uid/gid (-1, 0xFFFFFFFF, means "leave unchanged" to chown)
MAX_DEVICE = (1 << 32) - 1
MAX_TIME_NS = (1 << 63) - 1
_MIN_TIME_NS = -MAX_TIME_NS
READ_SIZE = 1 << 20


class StreamError(Exception):
    """The stream itself cannot be read on: nothing after this point can be restored."""


class TruncatedStream(StreamError):
    """The stream ended inside a member."""


class SourceFailed(StreamError):
    """Reading the source raised (a failed pipe, tape or data connection); ``__cause__`` is why."""


class ReadCancelled(StreamError):
    """The job's cancel event was set while the stream was being read."""


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
    bad: str | None = None          # a pax record that makes no sense (the member is not to be restored)

    @property
    def is_sparse(self) -> bool:
        return self.realsize is not None


class ByteSource(Protocol):
    """Anything a stream can be read from besides a plain fd (a direct-access data connection)."""

    def readinto(self, view: memoryview) -> int: ...


class Lender(Protocol):
    """Owner of a buffer whose regions the reader lends out (:meth:`StreamReader.lend`) and that
    stay untouched until their borrowers are done with them (the restore's writers)."""

    def limit(self, position: int) -> int:
        """How far from ``position`` the reader may write now (the start of the oldest lent
        region ahead, else the buffer's end)."""
        ...

    def wait(self) -> None:
        """Block until some lent region is given back."""
        ...


class StreamReader:
    """Members of a tar stream read from a file descriptor (pipe, socket or file) or a ByteSource."""

    def __init__(self, fd: "int | ByteSource", start: int = 0, warn: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.fd = fd
        self._cancel = cancel
        self._readinto = fd.readinto if not isinstance(fd, int) else (lambda view: os.readv(fd, [view]))
        self._view = memoryview(bytearray(READ_SIZE))
        self._size = READ_SIZE
        self._lender: Lender | None = None
        self._pos = 0
        self._end = 0
        self._consumed = start          # stream offset of _buffer[_pos]
        self._warn = warn or (lambda message: None)
        self.end_of_archive = False     # the end-of-archive (zero) block was read: the image is whole
        self._globals: dict[bytes, bytes] = {}
        self._globals_size = 0          # bytes of global records in force
        self._globals_matter = False    # some global record changes what a member is
        self._data_left = 0             # unread data + padding of the current member
        self.labels: dict[str, str] = {}
        self._seen: dict[bytes, object] = {}    # decoded header fields (pax.parse_ustar)
        self._checked_meta = (b"", 0)   # the last pax header block the shortcut checked, its size

    @property
    def offset(self) -> int:
        return self._consumed

    # -- raw bytes -------------------------------------------------------------------------

    def adopt(self, view: memoryview, lender: Lender) -> None:
        """Read on into ``view`` (what is buffered moves there), whose regions :meth:`lend`
        hands out without copying, respecting what ``lender`` says is still lent."""
        remaining = self._end - self._pos
        if remaining > len(view):
            raise ValueError("the new buffer is smaller than what is buffered")
        view[:remaining] = self._view[self._pos:self._end]
        self._view, self._size, self._lender = view, len(view), lender
        self._pos, self._end = 0, remaining

    def release(self) -> None:
        """Stop using an adopted buffer (its owner is closing it); reading ends here."""
        self._view = memoryview(b"")
        self._size = self._pos = self._end = 0
        self._lender = None

    def _fill(self) -> bool:
        if self._cancel is not None and self._cancel.is_set():
            raise ReadCancelled("the job was cancelled")
        lender = self._lender
        if lender is None:
            if self._pos == self._end:
                self._pos = self._end = 0
            elif self._end == self._size:
                self._wrap()
            limit = self._size
        else:
            if self._end == self._size:
                self._wrap()
            limit = lender.limit(self._end)
            while limit <= self._end:
                lender.wait()
                limit = lender.limit(self._end)
            limit = min(limit, self._end + READ_SIZE)     # the writers get data as it comes
        try:
            got = self._readinto(self._view[self._end:limit])
        except StreamError:
            raise
        except Exception as exc:
            raise SourceFailed(f"reading the stream failed: {exc}") from exc
        self._end += got
        return got > 0

    def _wrap(self) -> None:
        """Move what is buffered but unread to the buffer's start (once nothing lent is there)."""
        remaining = self._end - self._pos
        if self._lender is not None:
            while self._lender.limit(0) <= remaining:
                self._lender.wait()
        self._view[:remaining] = bytes(self._view[self._pos:self._end])
        self._pos, self._end = 0, remaining

    def lend(self, count: int) -> tuple[int, memoryview]:
        """The next ``count`` data bytes in one piece, where they are in the buffer (its offset
        and a view, not a copy); with an adopted buffer they stay until the lender gives them
        back. ``count`` must fit well inside the buffer."""
        if count < 0:
            _check_count(count)
        if count > self._size // 2:
            raise ValueError(f"{count} bytes do not fit the read buffer")
        if self._pos + count > self._size:
            self._wrap()
        while self._end - self._pos < count:
            if not self._fill():
                raise TruncatedStream("stream ends inside a member's data")
        at = self._pos
        self._pos = at + count
        self._consumed += count
        self._data_left -= count
        return at, self._view[at:at + count]

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
        _check_count(count)
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
        _check_count(count)
        if self._end - self._pos >= count:           # usually all in the buffer already
            data = bytes(self._view[self._pos:self._pos + count])
            self._pos += count
            self._consumed += count
            self._data_left -= count
            return data
        return b"".join(bytes(chunk) for chunk in self.chunks(count))

    def skip(self, count: int) -> None:
        _check_count(count)
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
            left = self._data_left
            if left:
                if left <= self._end - self._pos:        # (skip's usual case, inline)
                    self._pos += left
                    self._consumed += left
                    self._data_left = 0
                else:
                    self.skip(left)
            member = self._plain_member() if self._end - self._pos >= 3 * pax.BLOCK else None
            if member is None:
                member = self._next_member()
                if member is None:
                    return
            self._data_left = pax.round_up(member.size)
            yield member

    def _plain_member(self) -> Member | None:
        """The usual member in one step: a pax header holding its times only (or none) and its
        ustar block, both buffered. None, having consumed nothing, for anything else (so
        :meth:`_next_member` handles every other case, and every fault, the one way).

        Each step is a pure function of the bytes it reads, computed the general path's way
        (the same checks); only their order and what is remembered differ: a pax header block
        the same as the last one checked (ours differ only in their size field, usually the
        same) passes its checksum, and a lone ``mtime`` record is matched in one expression."""
        if self._globals_matter:
            return None
        pos = self._pos
        blocks = bytes(self._view[pos:pos + 3 * pax.BLOCK])    # (members() saw them buffered)
        head = blocks[:pax.BLOCK]
        kind = head[156:157]
        mtime = None
        used = pax.BLOCK
        if kind == pax.XHDTYPE:
            if head == self._checked_meta[0]:         # the same header block as the last one
                size = self._checked_meta[1]
            else:
                try:
                    pax.check_block(head, self._seen)
                    size = pax.meta_size(head)
                except pax.HeaderError:
                    return None
                self._checked_meta = (head, size)
            if not 0 < size <= pax.BLOCK:      # (0: the ustar block is the next one, not the third)
                return None
            data = blocks[pax.BLOCK:pax.BLOCK + size]
            lone = _LONE_MTIME.fullmatch(data)
            if lone is not None and int(lone[1]) == size:
                frac = lone[3]
                mtime = int(lone[2]) * 1_000_000_000 + (int(frac) * _FRACTION[len(frac)] if frac else 0)
            else:
                try:
                    records = dict(pax.parse_records(data))
                except pax.HeaderError:
                    return None
                if not records.keys() <= _TIMES:
                    return None
                mtime = records.get(b"mtime")
                if mtime is not None:
                    try:
                        mtime = pax.parse_time(mtime)
                    except ValueError:
                        return None         # the general path says why
            head = blocks[2 * pax.BLOCK:]
            if head[156:157] in _NOT_PLAIN:
                return None
            used = 3 * pax.BLOCK
        elif kind in _NOT_PLAIN or not any(head):
            return None
        try:
            (name, mode, uid, gid, size, raw_mtime, typeflag, linkname, uname, gname, devmajor,
             devminor) = pax.ustar_fields(head, self._seen)
        except pax.HeaderError:
            return None
        if name[-1:] == b"/" and typeflag in _FILE_TYPES:
            return None                         # a directory by its name (_named_type)
        offset = self._consumed
        self._pos = pos + used
        self._consumed = offset + used
        return Member(name, typeflag, mode & 0o7777, uid, gid, uname, gname,
                      raw_mtime * 1_000_000_000 if mtime is None else mtime, size, linkname,
                      devmajor, devminor, offset, [])

    def _next_member(self) -> Member | None:
        local: dict[bytes, bytes] = {}
        xattrs: list[tuple[bytes, bytes]] = []
        long_name = long_link = None
        first_offset = None
        refused = False
        meta_total = 0                  # extended-header bytes in front of this member so far
        sparse_00: list[bytes] = []     # GNU.sparse.offset/numbytes records (sparse 0.0), in order
        while True:
            offset = self._consumed
            block = self._take(pax.BLOCK)
            if block is None:
                self._warn("stream ends without the end-of-archive blocks")
                return None
            if not any(block):
                self.end_of_archive = True
                return None
            block = bytes(block)
            kind = block[156:157]
            try:
                if kind in _META_TYPES:
                    pax.check_block(block, self._seen)
                    size = pax.meta_size(block)
                else:
                    raw = pax.parse_ustar(block, self._seen)
            except pax.HeaderError as exc:
                self._resync(exc)
                local, xattrs, long_name, long_link, first_offset, refused = {}, [], None, None, None, False
                meta_total = 0
                sparse_00 = []
                continue
            if kind == pax.XGLTYPE:
                self._global_header(offset, size)
                continue
            if first_offset is None:
                first_offset = offset
            if kind in _META_TYPES:
                meta_total += size
                if refused or size > MAX_META or meta_total > MAX_META_TOTAL:
                    if not refused:
                        self._warn(f"refused a {size}-byte extended header at offset {offset} (limits: "
                                   f"{MAX_META} bytes each, {MAX_META_TOTAL} per member); its member is skipped")
                    self.skip(pax.round_up(size))      # never read into memory
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
                    for key, value in records:
                        if key.startswith(b"SCHILY.xattr."):
                            xattrs.append((key[len(b"SCHILY.xattr."):], value))
                        elif key in _SPARSE_00:
                            sparse_00.append(key[11:12] + value)     # b"o"/b"n" + the number
                        else:
                            local[key] = value
                continue
            if sparse_00 and b"GNU.sparse.map" not in local:
                try:
                    local[b"GNU.sparse.map"] = _sparse_00_map(sparse_00)
                except ValueError as exc:
                    self._warn(f"bad sparse 0.0 records at offset {first_offset}: {exc}; its member is skipped")
                    refused = True
            # globals apply through a view, never copied per member
            records = ChainMap(local, self._globals) if self._globals else local
            member = self._member(raw, records, xattrs, long_name, long_link, first_offset)
            if member.typeflag in _GNU_TYPES:
                refused = not self._gnu_member(member, block, offset) or refused
            if refused or member.typeflag == _VOLUME:     # (a GNU volume label: no entry, as for tar)
                self._data_left = pax.round_up(member.size)
                self.skip(self._data_left)
                local, xattrs, long_name, long_link, first_offset, refused = {}, [], None, None, None, False
                meta_total = 0
                sparse_00 = []
                continue
            return member

    def _gnu_member(self, member: Member, block: bytes, offset: int) -> bool:
        """A GNU tar dumpdir (``D``: a directory whose data lists its names) or old sparse
        member (``S``: its map in the header and the extension blocks after it) read as the
        directory or file it is; False (the member is to be skipped) when it is malformed."""
        if member.typeflag == _DUMPDIR:
            if member.size > MAX_META:
                self._warn(f"refused a {member.size}-byte dumpdir at offset {offset} (limit {MAX_META}); "
                           "its member is skipped")
                return False
            data = self.read_exact(member.size)
            self.skip(pax.round_up(member.size) - member.size)
            member.typeflag, member.size = pax.DIRTYPE, 0
            if member.dumpdir is None:
                member.dumpdir = [entry for entry in data.split(b"\0") if entry]
            return True
        try:
            extents = _old_sparse_entries(block[386:482])
            extended = block[482]
            while extended:
                if len(extents) > sparse.MAX_EXTENTS:
                    raise ValueError("sparse map too long")
                more = self._take(pax.BLOCK)
                if more is None:
                    raise TruncatedStream("stream ends inside a sparse member's map")
                more = bytes(more)
                extents += _old_sparse_entries(more[:504])
                extended = more[504]
            realsize = pax.parse_numeric(block[483:495])
            sparse.check_extents(extents, realsize)
        except ValueError as exc:
            self._warn(f"bad old GNU sparse map at offset {offset} ({exc}); its member is skipped")
            return False
        if member.realsize is None:
            member.typeflag, member.realsize, member.sparse_major, member.sparse_map = (
                pax.REGTYPE, realsize, 0, extents)
        else:
            member.typeflag = pax.REGTYPE           # pax records said it already
        return True

    def _global_header(self, offset: int, size: int) -> None:
        """Merge a pax global header into the records every later member gets, keeping all of
        them together under ``MAX_META`` bytes (a header that would pass it is ignored)."""
        if size > MAX_META:
            self._warn(f"ignored a {size}-byte global pax header at offset {offset} (limit {MAX_META})")
            self.skip(pax.round_up(size))
            return
        data = self.read_exact(size)
        self.skip(pax.round_up(size) - size)
        try:
            records = pax.parse_records(data)
        except pax.HeaderError as exc:
            self._warn(f"ignored a malformed global pax header at offset {offset}: {exc}")
            return
        self._note_labels(records)
        merged = {key: value for key, value in records
                  if not key.startswith(b"NDMPD.") and not key.startswith(b"SCHILY.xattr.")}
        grown = sum(len(key) + len(value) - (len(key) + len(self._globals[key]) if key in self._globals else 0)
                    for key, value in merged.items())
        if self._globals_size + grown > MAX_META:
            self._warn(f"ignored a global pax header at offset {offset}: the global records would pass "
                       f"{MAX_META} bytes")
            return
        self._globals.update(merged)
        self._globals_size += grown
        self._globals_matter = self._globals_matter or any(key in _USED or key.startswith(b"GNU.sparse.")
                                                           for key in merged)   # (globals only grow)

    def _note_labels(self, records: list[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            if key.startswith(b"NDMPD.") and len(self.labels) < 64:
                self.labels[key[6:].decode("ascii", "replace")] = value.decode("utf-8", "replace")

    def _resync(self, exc: Exception) -> None:
        """After a damaged header (already consumed): skip to the next block that parses."""
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

    def _member(self, raw: pax.RawHeader, records, xattrs, long_name, long_link, offset: int) -> Member:
        member = self._fields(raw, records, xattrs, long_name, long_link, offset)
        if member.name[-1:] == b"/" and member.typeflag in _FILE_TYPES:
            member.typeflag = pax.DIRTYPE          # as GNU tar and bsdtar read a v7 directory
        return member

    def _fields(self, raw: pax.RawHeader, records, xattrs, long_name, long_link, offset: int) -> Member:
        if not records or records.keys() <= _TIMES:     # the usual member: no record but its times
            member = Member(long_name if long_name is not None else raw.name, raw.typeflag, raw.mode & 0o7777,
                            raw.uid, raw.gid, raw.uname, raw.gname, raw.mtime * 1_000_000_000, raw.size,
                            long_link if long_link is not None else raw.linkname, raw.devmajor, raw.devminor,
                            offset, xattrs)
            mtime = records.get(b"mtime") if records else None
            if mtime is not None:
                try:
                    member.mtime_ns = pax.parse_time(mtime)
                except ValueError as exc:
                    member.bad = f"bad pax mtime record ({exc})"
            return member
        name = records.get(b"path", long_name if long_name is not None else raw.name)
        linkname = records.get(b"linkpath", long_link if long_link is not None else raw.linkname)
        member = Member(name=name, typeflag=raw.typeflag, mode=raw.mode & 0o7777,
                        uid=raw.uid, gid=raw.gid, uname=records.get(b"uname", raw.uname),
                        gname=records.get(b"gname", raw.gname), mtime_ns=raw.mtime * 1_000_000_000,
                        size=raw.size, linkname=linkname, devmajor=raw.devmajor, devminor=raw.devminor,
                        offset=offset, xattrs=xattrs)
        if raw.typeflag == pax.LNKTYPE:
            member.link_offset = pax.parse_link_offset(records.get(b"comment"))
        for key, apply in _OVERRIDES:
            value = records.get(key)
            if value is not None:
                try:
                    apply(member, value)
                except ValueError as exc:
                    member.bad = member.bad or f"bad pax {key.decode('ascii')} record ({exc})"
        try:
            self._sparse_records(member, records)
        except ValueError as exc:
            member.bad = member.bad or f"bad sparse records ({exc})"
            member.realsize = member.sparse_major = member.sparse_map = None
        return member

    @staticmethod
    def _sparse_records(member: Member, records) -> None:
        if b"GNU.sparse.major" in records or b"GNU.sparse.map" in records or b"GNU.sparse.size" in records:
            major = pax.parse_decimal(records.get(b"GNU.sparse.major", b"0"), 0, 1)
            realsize = pax.parse_decimal(records.get(b"GNU.sparse.realsize", records.get(b"GNU.sparse.size", b"0")),
                                         0, MAX_SIZE)
            extents = None
            if major == 0 and b"GNU.sparse.map" in records:
                numbers = [pax.parse_decimal(n, 0, MAX_SIZE) for n in records[b"GNU.sparse.map"].split(b",") if n]
                if len(numbers) % 2 or len(numbers) > 2 * sparse.MAX_EXTENTS:
                    raise ValueError("odd sparse map")
                extents = list(zip(numbers[::2], numbers[1::2]))
                sparse.check_extents(extents, realsize)
            member.sparse_major, member.realsize, member.sparse_map = major, realsize, extents
            if b"GNU.sparse.name" in records:
                member.name = records[b"GNU.sparse.name"]


def _set_mtime(member: Member, value: bytes) -> None:
    member.mtime_ns = pax.parse_time(value)


def _set_size(member: Member, value: bytes) -> None:
    member.size = pax.parse_decimal(value, 0, MAX_SIZE)


def _set_uid(member: Member, value: bytes) -> None:
    member.uid = pax.parse_decimal(value, 0, MAX_ID)


def _set_gid(member: Member, value: bytes) -> None:
    member.gid = pax.parse_decimal(value, 0, MAX_ID)


def _set_dumpdir(member: Member, value: bytes) -> None:
    member.dumpdir = [entry for entry in value.split(b"\0") if entry]


_DUMPDIR, _OLD_SPARSE, _VOLUME = b"D", b"S", b"V"    # GNU tar's own member types
_GNU_TYPES = (_DUMPDIR, _OLD_SPARSE)
_NOT_PLAIN = _META_TYPES + _GNU_TYPES + (_VOLUME,)     # what the reader's shortcut leaves alone
_FILE_TYPES = (pax.REGTYPE, pax.AREGTYPE, pax.CONTTYPE)   # a directory when the name ends in '/'
_SPARSE_00 = frozenset((b"GNU.sparse.offset", b"GNU.sparse.numbytes"))
_TIMES = frozenset((b"mtime", b"atime", b"ctime"))   # of these, a restore uses mtime only
_LONE_MTIME = re.compile(rb"(\d{1,3}) mtime=(\d{1,20})(?:\.(\d{1,9}))?\n")   # what parse_time reads the same
_FRACTION = tuple(10 ** (9 - digits) for digits in range(10))       # 9 fraction digits are nanoseconds
_USED = frozenset((b"path", b"linkpath", b"uname", b"gname", b"comment", b"mtime", b"size", b"uid", b"gid",
                   b"GNU.dumpdir"))    # the records _member reads (and GNU.sparse.*)
_OVERRIDES = ((b"mtime", _set_mtime), (b"size", _set_size), (b"uid", _set_uid), (b"gid", _set_gid),
              (b"GNU.dumpdir", _set_dumpdir))


def _sparse_00_map(records: list[bytes]) -> bytes:
    """Sparse 0.0's offset/numbytes records, each pair in that order, as a 0.1 map value."""
    if len(records) % 2 or any(records[at][:1] != b"o" or records[at + 1][:1] != b"n"
                               for at in range(0, len(records), 2)):
        raise ValueError("offset and numbytes records do not pair up")
    return b",".join(record[1:] for record in records)


def _old_sparse_entries(area: bytes) -> list[sparse.Extent]:
    """The (offset, numbytes) entries of an old GNU sparse header area, 24 bytes each, up to
    the first empty one."""
    extents = []
    for at in range(0, len(area) - 23, 24):
        if not area[at]:
            break
        extents.append((pax.parse_numeric(area[at:at + 12]), pax.parse_numeric(area[at + 12:at + 24])))
    return extents


def _check_count(count: int) -> None:
    """Every length the reader moves by is a count forward: never back over what it read."""
    if count < 0:
        raise ValueError(f"negative byte count {count}")


def member_problem(member: Member) -> str | None:
    """Why this member cannot be restored as the image gives it (garbage in a field), or None.

    Checked per member before anything is written, so one bad field refuses that member only.
    The usual member (no link, device, xattrs or sparse map) passes in one expression. (NULs
    are looked for as the int 0: bytes' ``in`` tries its needle as an int first, so a bytes
    needle costs a raised and cleared TypeError, three times the search.)"""
    if (member.bad is None and 0 <= member.uid <= MAX_ID and 0 <= member.gid <= MAX_ID
            and _MIN_TIME_NS <= member.mtime_ns <= MAX_TIME_NS and member.size <= MAX_SIZE
            and not (member.linkname or member.devmajor or member.devminor or member.xattrs
                     or member.sparse_map) and 0 not in member.name
            and 0 not in member.uname and 0 not in member.gname):
        return None
    if member.bad:
        return member.bad
    if (b"\0" in member.name or b"\0" in member.linkname or b"\0" in member.uname
            or b"\0" in member.gname):
        which = next(label for label, value in (("name", member.name), ("link target", member.linkname),
                                                ("user name", member.uname), ("group name", member.gname))
                     if b"\0" in value)
        return f"NUL byte in its {which}"
    if member.size > MAX_SIZE:
        return f"size {member.size} out of range"
    if not (0 <= member.uid <= MAX_ID and 0 <= member.gid <= MAX_ID):
        return f"owner {member.uid}:{member.gid} out of range"
    if not -MAX_TIME_NS <= member.mtime_ns <= MAX_TIME_NS:
        return "modification time out of range"
    if member.devmajor or member.devminor:
        if not (0 <= member.devmajor <= MAX_DEVICE and 0 <= member.devminor <= MAX_DEVICE):
            return f"device number {member.devmajor},{member.devminor} out of range"
    for key, _ in member.xattrs:
        if not key or b"\0" in key:
            return "empty xattr name or NUL byte in one"
    if member.realsize is not None and member.sparse_map is not None:
        try:
            sparse.check_extents(member.sparse_map, member.realsize)
        except ValueError as exc:
            return f"bad sparse map: {exc}"
    return None
