"""POSIX pax headers: ustar blocks plus extended-header records, both ways.

The layout of a ustar block is declared once (its field widths) and packed through a
``struct`` derived from it (plain struct: a dump starts without importing construct).
Anything a ustar field cannot hold (long or non-ASCII names, nanosecond times, big sizes and ids, xattrs, sparse maps, dumpdirs) goes into a pax
record, which GNU tar, bsdtar and Python's tarfile all read.
"""

from __future__ import annotations

import grp
import pwd
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple
from dataclasses import dataclass, field

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE = b"0", b"\0", b"1", b"2"
CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"3", b"4", b"5", b"6", b"7"
XHDTYPE, XGLTYPE, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"

USTAR_FIELDS = (                   # (name, width): every ustar field is bytes of a fixed width
    ("name", 100), ("mode", 8), ("uid", 8), ("gid", 8), ("size", 12), ("mtime", 12), ("chksum", 8),
    ("typeflag", 1), ("linkname", 100), ("magic", 6), ("version", 2), ("uname", 32), ("gname", 32),
    ("devmajor", 8), ("devminor", 8), ("prefix", 155), ("pad", 12),
)
_USTAR = struct.Struct("".join(f"{width}s" for _, width in USTAR_FIELDS))
_CHKSUM_AT = 148
_SPACES = b" " * 8
_MAX_OCTAL = {w: 8 ** (w - 1) - 1 for w in (8, 12)}


def block_sum(block: bytes) -> int:
    """The sum of a header block's bytes, exactly, without a Python-level byte loop: Adler-32's
    first half is 1 + the byte sum mod 65521. An ASCII block (a usual header) sums to at most
    127 x 512 = 65,024, so one Adler-32 over it is exact; else each 256-byte half is (a half
    sums to at most 65,280)."""
    if block.isascii():
        return (zlib.adler32(block) & 0xFFFF) - 1
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def round_up(n: int) -> int:
    """Bytes ``n`` takes in the stream, padded to whole blocks."""
    return (n + BLOCK - 1) & ~(BLOCK - 1)


def numeric_field(value: int, width: int) -> bytes:
    """Octal when it fits, else GNU base-256 (read by GNU tar, bsdtar and tarfile)."""
    if 0 <= value <= _MAX_OCTAL[width]:
        return b"%0*o\0" % (width - 1, value)
    return _base256(value, width)


def _base256(value: int, width: int) -> bytes:
    raw = (value & ((1 << (8 * (width - 1))) - 1)).to_bytes(width - 1, "big")
    return (b"\xff" if value < 0 else b"\x80") + raw


def parse_numeric(raw: bytes) -> int:
    """Read an octal or base-256 numeric field as GNU tar does: leading blanks, octal digits,
    then the field's end, a NUL or a blank (what follows is ignored); anything else is a
    ValueError (``int()`` alone would also take ``_``, ``+``, ``-`` and ``0o``)."""
    if raw and raw[0] & 0x80:
        value = int.from_bytes(raw[1:], "big")
        return value - (1 << (8 * (len(raw) - 1))) if raw[0] == 0xFF else value
    digits = raw.rstrip(b"\0 ")
    if digits.isdigit():                      # the common "0000644\0" and checksum "012345\0 "
        return int(digits, 8)                 # (an 8 or a 9 raises)
    field = _OCTAL_FIELD.match(raw)
    if field is None:
        raise ValueError(f"not an octal number: {raw!r}")
    return int(field[1], 8) if field[1] else 0


_OCTAL_FIELD = re.compile(rb"\0?[ \t\n\v\f\r]*([0-7]*)(?:[\0 \t\n\v\f\r]|(?<=[0-7])\Z)")
# (GNU tar's from_header: one NUL a buggy writer left in front, blanks, digits, a terminator;
# blanks up to the end are no number)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"LEN key=value\\n"`` record; LEN counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    digits = len(str(len(body)))
    length = len(body) + digits
    if len(str(length)) > digits:
        length += 1
    return b"%d" % length + body


def format_time(ns: int) -> bytes:
    """A pax time value with nanoseconds (``-1.5`` is half a second before -1)."""
    sign = b"-" if ns < 0 else b""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return sign + (b"%d.%09d" % (sec, frac) if frac else b"%d" % sec)


def parse_decimal(value: bytes, low: int, high: int) -> int:
    """A decimal pax value within [low, high]; ValueError otherwise (``int()`` alone would also
    take signs, spaces, underscores and numbers of any size)."""
    digits = value[1:] if value[:1] == b"-" else value
    if not digits.isdigit() or not digits.isascii() or len(digits) > 20:
        raise ValueError(f"not a decimal number: {value[:40]!r}")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range")
    return number


def parse_time(value: bytes) -> int:
    """Nanoseconds from a pax time value."""
    text = value.strip()
    negative = text.startswith(b"-")
    whole, _, frac = text[1:].partition(b".") if negative else text.partition(b".")
    if (not (whole or frac) or (whole and not (whole.isdigit() and whole.isascii()))
            or (frac and not (frac.isdigit() and frac.isascii())) or len(whole) > 20):
        raise ValueError(f"not a pax time: {value[:40]!r}")
    ns = int(whole or b"0") * 1_000_000_000 + int((frac + b"000000000")[:9])
    return -ns if negative else ns


def ustar_block(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
                linkname: bytes = b"", uname: bytes = b"", gname: bytes = b"", devmajor: int = 0,
                devminor: int = 0, prefix: bytes = b"") -> bytes:
    """One ustar header block with its checksum."""
    block = bytearray(_USTAR.pack(
        name, b"%07o\0" % (mode & 0o7777), numeric_field(uid, 8), numeric_field(gid, 8),
        numeric_field(size, 12), numeric_field(mtime, 12), _SPACES, typeflag, linkname,
        b"ustar\0", b"00", uname, gname, numeric_field(devmajor, 8), numeric_field(devminor, 8),
        prefix, b""))
    block[_CHKSUM_AT:_CHKSUM_AT + 8] = b"%06o\0 " % block_sum(bytes(block))
    return bytes(block)


def extended_header(records: bytes, typeflag: bytes = XHDTYPE) -> bytes:
    """A pax extended header (its block plus padded records)."""
    head = ustar_block(b"././@PaxHeader", 0o644, 0, 0, len(records), 0, typeflag)
    return head + records + bytes(round_up(len(records)) - len(records))


def split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for the ustar fields, or None when only a pax path can hold it."""
    if len(name) <= 100:
        return b"", name
    cut = name.find(b"/", len(name) - 101, len(name) - 1)
    if 0 < cut <= 155:
        return name[:cut], name[cut + 1:]
    return None


def lookup_once(cache: dict, key: Any, find: Callable[[Any], Any], missing: Any) -> Any:
    """``find(key)`` remembered in ``cache``; ``missing`` when it raises KeyError (no such entry)."""
    if key not in cache:
        try:
            cache[key] = find(key)
        except KeyError:
            cache[key] = missing
    return cache[key]


@dataclass
class Owners:
    """uid/gid -> user/group name, looked up once each."""

    users: dict[int, bytes] = field(default_factory=dict)
    groups: dict[int, bytes] = field(default_factory=dict)

    def user(self, uid: int) -> bytes:
        return lookup_once(self.users, uid, lambda u: pwd.getpwuid(u).pw_name.encode("utf-8", "surrogateescape"), b"")

    def group(self, gid: int) -> bytes:
        return lookup_once(self.groups, gid, lambda g: grp.getgrgid(g).gr_name.encode("utf-8", "surrogateescape"), b"")


def _needs_pax_text(value: bytes, width: int) -> bool:
    return len(value) > width or not value.isascii()


def _charset_records(value: bytes) -> bytes:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return pax_record(b"hdrcharset", b"BINARY")
    return b""


LINK_OFFSET = b"ndmpd.link-offset="


def link_offset_record(offset: int) -> bytes:
    """A hard link's pointer to its first link's header, so a restore that selects only this
    name can still fetch the contents. A pax ``comment``: every pax reader ignores it."""
    return pax_record(b"comment", LINK_OFFSET + b"%d" % offset)


def parse_link_offset(comment: bytes | None) -> int | None:
    if comment is None or not comment.startswith(LINK_OFFSET):
        return None
    try:
        return parse_decimal(comment[len(LINK_OFFSET):], 0, (1 << 63) - 1)
    except ValueError:
        return None


class HeaderWriter:
    """Builds the header blocks of members; the common case comes from cached templates.

    Most members differ only in name, size and mtime, so the fields that depend on
    mode/owner/type are packed once per combination with their checksum share, the size
    and seconds fields are remembered with their byte sums (sizes and seconds repeat from
    file to file), and the pax header block that carries a nanosecond mtime is cached per
    record length. A member then costs a few dict lookups and one join.
    """

    def __init__(self) -> None:
        self.owners = Owners()
        self._templates: dict[tuple[int, int, int, bytes], tuple[bytes, bytes, int]] = {}
        self._pax_blocks: dict[int, bytes] = {}
        self._numbers: dict[int, tuple[bytes, int]] = {}     # value -> 12-byte octal field, its byte sum
        self._checksums: dict[int, bytes] = {}
        self._pax30 = self._pax_block(30)            # the block before a lone 30-byte mtime record

    def headers(self, name: bytes, mode: int, uid: int, gid: int, size: int, mtime_ns: int,
                typeflag: bytes, linkname: bytes = b"", devmajor: int = 0, devminor: int = 0,
                extra: bytes = b"") -> bytes:
        """A pax header when needed, then the ustar block; ``extra`` holds ready pax records."""
        sec, frac = divmod(mtime_ns, 1_000_000_000)
        if (len(name) <= 100 and not linkname and not devmajor and not devminor and size <= _MAX_SIZE
                and 0 <= sec <= _MAX_SIZE and name.isascii()):
            template = self._templates.get((mode, uid, gid, typeflag))
            if template is None:
                template = self._template(mode, uid, gid, typeflag)
            if template[0]:
                numbers = self._numbers
                size_field = numbers.get(size) or self._number(size)
                time_field = numbers.get(sec) or self._number(sec)
                checksum = template[2] + size_field[1] + time_field[1] + (zlib.adler32(name) & 0xFFFF) - 1
                checksum_field = self._checksums.get(checksum)
                if checksum_field is None:
                    checksum_field = self._checksums[checksum] = b"%06o\0 " % checksum
                if frac and 1_000_000_000 <= sec < 10_000_000_000 and not extra:   # the record of 2001-2286:
                    return b"".join((self._pax30, b"30 mtime=%d.%09d\n" % (sec, frac), _NULS[482],   # one join
                                     name, _NULS[100 - len(name)], template[0], size_field[0], time_field[0],
                                     checksum_field, template[1]))
                block = b"".join((name, _NULS[100 - len(name)], template[0], size_field[0], time_field[0],
                                  checksum_field, template[1]))
                if frac:
                    extra += (b"30 mtime=%d.%09d\n" % (sec, frac) if 1_000_000_000 <= sec < 10_000_000_000
                              else pax_record(b"mtime", format_time(mtime_ns)))
                return self._extended(extra) + block if extra else block
        return self._general(name, mode, uid, gid, size, mtime_ns, typeflag, linkname, devmajor,
                             devminor, extra)

    def _number(self, value: int) -> tuple[bytes, int]:
        """A 12-byte octal field (names are 100 bytes or less, so the name's sum stays exact in
        Adler-32's first half) with its byte sum, remembered while the cache is small."""
        field = b"%011o\0" % value
        entry = (field, sum(field))
        if len(self._numbers) < 65536:
            self._numbers[value] = entry
        return entry

    def _pax_block(self, size: int) -> bytes:
        block = ustar_block(b"././@PaxHeader", 0o644, 0, 0, size, 0, XHDTYPE)
        if len(self._pax_blocks) < 4096:
            self._pax_blocks[size] = block
        return block

    def _extended(self, records: bytes) -> bytes:
        size = len(records)
        block = self._pax_blocks.get(size) or self._pax_block(size)
        return block + records + _NULS[-size % BLOCK]

    def _template(self, mode: int, uid: int, gid: int, typeflag: bytes) -> tuple[bytes, bytes, int]:
        uname, gname = self.owners.user(uid), self.owners.group(gid)
        if not (0 <= uid <= _MAX_OCTAL[8] and 0 <= gid <= _MAX_OCTAL[8]) \
                or _needs_pax_text(uname, 32) or _needs_pax_text(gname, 32):
            template = (b"", b"", 0)          # never fast: ids or names need pax records
        else:
            head = b"%07o\0" % (mode & 0o7777) + numeric_field(uid, 8) + numeric_field(gid, 8)
            tail = (typeflag + bytes(100) + b"ustar\0" + b"00" + uname.ljust(32, b"\0")
                    + gname.ljust(32, b"\0") + b"0000000\0" * 2 + bytes(167))
            template = (head, tail, sum(head) + sum(tail) + sum(_SPACES))
        if len(self._templates) < 4096:
            self._templates[(mode, uid, gid, typeflag)] = template
        return template

    def _general(self, name: bytes, mode: int, uid: int, gid: int, size: int, mtime_ns: int,
                 typeflag: bytes, linkname: bytes, devmajor: int, devminor: int, records: bytes) -> bytes:
        sec, frac = divmod(mtime_ns, 1_000_000_000)
        if frac or not 0 <= sec <= _MAX_OCTAL[12]:
            records += pax_record(b"mtime", format_time(mtime_ns))
        split = split_name(name) if name.isascii() else None
        if split is None:
            records += _charset_records(name) + pax_record(b"path", name)
            split = b"", name[-100:].lstrip(b"/") if name.isascii() else b"non-ascii-name"
        if _needs_pax_text(linkname, 100):
            records += _charset_records(linkname) + pax_record(b"linkpath", linkname)
            linkname = linkname[:100] if linkname.isascii() else b""
        if size > _MAX_OCTAL[12]:
            records += pax_record(b"size", b"%d" % size)
        if not 0 <= uid <= _MAX_OCTAL[8]:
            records += pax_record(b"uid", b"%d" % uid)
        if not 0 <= gid <= _MAX_OCTAL[8]:
            records += pax_record(b"gid", b"%d" % gid)
        uname, gname = self.owners.user(uid), self.owners.group(gid)
        if _needs_pax_text(uname, 32):
            records += pax_record(b"uname", uname)
            uname = b""
        if _needs_pax_text(gname, 32):
            records += pax_record(b"gname", gname)
            gname = b""
        block = ustar_block(split[1], mode, uid, gid, size, sec, typeflag, linkname, uname, gname,
                            devmajor, devminor, split[0])
        return self._extended(records) + block if records else block


_MAX_SIZE = _MAX_OCTAL[12]
_NULS = [bytes(n) for n in range(BLOCK + 1)]


class RawHeader(NamedTuple):
    """One ustar block as read, before pax overrides (a tuple: made per member, and unpacked
    in one step by the reader's shortcut)."""

    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: bytes
    linkname: bytes
    uname: bytes
    gname: bytes
    devmajor: int
    devminor: int


class HeaderError(ValueError):
    """A block that is not a tar header (bad checksum or fields)."""


def meta_size(block: bytes) -> int:
    """The size field of a checked extended-header block (pax or GNU long name)."""
    try:
        size = parse_numeric(block[124:136])
    except ValueError:
        raise HeaderError("size field is not a number") from None
    if size < 0:
        raise HeaderError(f"negative size {size}")
    return size


def check_block(block: bytes, seen: dict | None = None) -> None:
    """Raise HeaderError unless the block's checksum holds (unsigned, or the old signed sum).

    ``seen`` (see :func:`parse_ustar`) remembers each checksum field's value and byte sum:
    checksums repeat from member to member."""
    field = block[_CHKSUM_AT:_CHKSUM_AT + 8]
    entry = seen.get(field) if seen is not None else None
    if entry is None:
        try:
            entry = (parse_numeric(field), sum(field) - 256)
        except ValueError:
            raise HeaderError("checksum field is not a number") from None
        if seen is not None:
            _remember(seen, field, entry)
    stored, field_excess = entry
    unsigned = block_sum(block) - field_excess       # the sum with the field read as 8 spaces
    if stored != unsigned:
        signed = unsigned - 256 * sum(1 for b in block[:_CHKSUM_AT] + block[_CHKSUM_AT + 8:] if b >= 0x80)
        if stored != signed:
            raise HeaderError("header checksum mismatch")


def _remember(seen: dict, key: bytes, value: Any) -> None:
    """Cache one decoded field in a reader's ``seen`` dict, which stays bounded."""
    if len(seen) >= 4096:
        seen.clear()
    seen[key] = value


def _number(block: bytes, start: int, end: int, seen: dict | None) -> int:
    """The numeric field ``block[start:end]`` as :func:`parse_numeric` reads it, remembered in ``seen``."""
    raw = block[start:end]
    if seen is None:
        return parse_numeric(raw)
    value = seen.get(raw)
    if value is None:
        value = parse_numeric(raw)
        _remember(seen, raw, value)
    return value


def parse_ustar(block: bytes | memoryview, seen: dict | None = None) -> RawHeader:
    """Decode one header block, checking its checksum.

    ``seen`` (owned by one reader) remembers decoded fields, which repeat from member to
    member: a dict lookup instead of octal parses and splits. Its keys are the raw bytes of a
    field, and their length says which: 88 bytes the owner fields (mode, uid, gid, uname,
    gname), 12 a size or time field, 8 a checksum field. Each field is cut from the block where
    it lies (no unpacking of the fields a restore never reads)."""
    return tuple.__new__(RawHeader, ustar_fields(block, seen))


def ustar_fields(block: bytes | memoryview, seen: dict | None = None) -> tuple:
    """:func:`parse_ustar`'s fields as a plain tuple (the reader's shortcut unpacks it at once)."""
    block = bytes(block)
    check_block(block, seen)
    cut = block.find(b"\0", 0, 100)
    name = block[:cut] if cut >= 0 else block[:100]
    if block[345] and block[257:263] == b"ustar\0":
        cut = block.find(b"\0", 345, 500)
        name = block[345:cut if cut >= 0 else 500] + b"/" + name
    typeflag = block[156:157]
    owner_key = block[100:124] + block[265:329]     # mode, uid, gid, uname, gname
    try:
        owner = seen.get(owner_key) if seen is not None else None
        if owner is None:
            owner = (parse_numeric(block[100:108]), parse_numeric(block[108:116]), parse_numeric(block[116:124]),
                     block[265:297].split(b"\0", 1)[0], block[297:329].split(b"\0", 1)[0])
            if seen is not None:
                _remember(seen, owner_key, owner)
        size = _number(block, 124, 136, seen)
        if size < 0:
            raise HeaderError(f"negative size {size}")
        if block[157]:
            cut = block.find(b"\0", 157, 257)
            linkname = block[157:cut if cut >= 0 else 257]
        else:
            linkname = b""
        device = typeflag == CHRTYPE or typeflag == BLKTYPE
        return (name, owner[0], owner[1], owner[2], size, _number(block, 136, 148, seen), typeflag,
                linkname, owner[3], owner[4], parse_numeric(block[329:337]) if device else 0,
                parse_numeric(block[337:345]) if device else 0)
    except ValueError as exc:
        raise HeaderError(f"bad numeric field: {exc}") from None


def parse_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) records of a pax extended header; raises HeaderError when malformed."""
    records, pos = [], 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 24)
        if space < 0:
            raise HeaderError("pax record without a length")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise HeaderError("pax record length is not a number") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1:end] != b"\n":
            raise HeaderError("pax record overruns its header")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise HeaderError("pax record without '='")
        records.append((key, value))
        pos = end
    return records
