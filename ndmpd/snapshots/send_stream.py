"""A guard over a btrfs send stream: parses every command before ``btrfs receive`` sees it.

``btrfs receive --chroot`` already confines the writes; the guard refuses what a stream
from an honest ``btrfs send`` never holds (paths that climb or start at ``/``, a second
subvolume, commands we do not know), so a hostile peer gets a clear error early, and it
exposes the stream's head (which subvolume, based on which) before anything is written.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from construct import Const, Int16ul, Int32ul, Struct

MAGIC = b"btrfs-stream\0"
VERSIONS = (1, 2)
MAX_COMMAND = 16 << 20                       # a command longer than this (plus its header) is refused

Header = Struct("magic" / Const(MAGIC), "version" / Int32ul)
CommandHead = Struct("length" / Int32ul, "cmd" / Int16ul, "crc" / Int32ul)
AttrHead = Struct("type" / Int16ul, "length" / Int16ul)


def _flat(layout: Struct) -> struct.Struct:
    """The same little-endian layout as a ``struct.Struct``: parsed once per command and per
    attribute, construct's interpreter costs ~13 µs a call, which made a 100k-file stream
    take a minute to check; declared once above, unpacked in place here."""
    return struct.Struct("<" + "".join(field.fmtstr.lstrip("<") for field in layout.subcons))


_COMMAND_HEAD, _ATTR_HEAD = _flat(CommandHead), _flat(AttrHead)

# commands (btrfs-progs send.h)
SUBVOL, SNAPSHOT, MKFILE, MKDIR, MKNOD, MKFIFO, MKSOCK, SYMLINK, RENAME, LINK, UNLINK, RMDIR = range(1, 13)
END = 21
KNOWN_COMMANDS = {1: range(1, 23), 2: range(1, 26)}
# attributes
A_UUID, A_CTRANSID, A_PATH, A_PATH_TO, A_PATH_LINK, A_DATA = 1, 2, 15, 16, 17, 19
A_CLONE_UUID, A_CLONE_CTRANSID, A_CLONE_PATH = 20, 21, 22
_CHECKED_PATHS = (A_PATH, A_PATH_TO, A_CLONE_PATH)
# an empty PATH is the subvolume's root (honest streams chown/chmod/utimes it); these must name an entry
_NAMING = (MKFILE, MKDIR, MKNOD, MKFIFO, MKSOCK, SYMLINK, RENAME, LINK, UNLINK, RMDIR)


class HostileStream(ValueError):
    """The stream is not one an honest ``btrfs send`` of one subvolume makes; says why."""


@dataclass(frozen=True)
class StreamHead:
    """The stream's first command: the subvolume it makes and the one it is based on."""

    name: str
    uuid: str
    ctransid: int
    parent_uuid: str | None
    parent_ctransid: int | None


def _uuid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=bytes(raw)))


def _check_path(raw: bytes, what: str, root_allowed: bool) -> None:
    if not raw and not root_allowed:
        raise HostileStream(f"{what}: an empty path")
    if raw.startswith(b"/"):
        raise HostileStream(f"{what}: an absolute path {raw[:200]!r}")
    if b".." in raw.split(b"/"):
        raise HostileStream(f"{what}: a path with '..' {raw[:200]!r}")
    if b"\0" in raw:
        raise HostileStream(f"{what}: a path with a NUL byte {raw[:200]!r}")


def _padding(rest: memoryview | bytes) -> None:
    with memoryview(rest) as view:
        if view.tobytes().strip(b"\0"):
            raise HostileStream("data after the END command")


class StreamGuard:
    """Fed the stream in any chunking; raises :class:`HostileStream` at the first bad byte."""

    def __init__(self) -> None:
        self.header: StreamHead | None = None
        self.version: int | None = None
        self.ended = False
        self.bytes = 0
        self.commands = 0
        self._buffer = bytearray()

    def feed(self, chunk: memoryview | bytes) -> int:
        """Take the next bytes; every complete command in them is checked now. Returns how
        many of them are the stream's: after END only zeros may follow (a tape record's
        padding), and they are not the stream's."""
        if self.ended:
            _padding(chunk)
            return 0
        self._buffer += chunk
        at = 0
        buf = self._buffer
        if self.version is None:
            if len(buf) < Header.sizeof():
                if not MAGIC.startswith(bytes(buf[:len(MAGIC)])):
                    raise HostileStream("not a btrfs send stream (bad magic)")
                self.bytes += len(chunk)
                return len(chunk)
            if bytes(buf[:len(MAGIC)]) != MAGIC:
                raise HostileStream("not a btrfs send stream (bad magic)")
            version = Header.parse(bytes(buf[:Header.sizeof()])).version
            if version not in VERSIONS:
                raise HostileStream(f"btrfs send stream version {version} is not supported")
            self.version = version
            at = Header.sizeof()
        head_size = _COMMAND_HEAD.size
        while len(buf) - at >= head_size:
            length, cmd, _crc = _COMMAND_HEAD.unpack_from(buf, at)
            if length > MAX_COMMAND:
                raise HostileStream(f"command {self.commands} is {length} bytes long (at most {MAX_COMMAND})")
            if len(buf) - at < head_size + length:
                break
            self._command(cmd, buf, at + head_size, at + head_size + length)
            at += head_size + length
            if self.ended:
                rest = len(buf) - at
                _padding(memoryview(buf)[at:])
                buf.clear()
                self.bytes += len(chunk) - rest
                return len(chunk) - rest
        del buf[:at]
        self.bytes += len(chunk)
        return len(chunk)

    def _command(self, cmd: int, buf: bytearray, start: int, end: int) -> None:
        assert self.version is not None
        number = self.commands
        self.commands += 1
        if cmd not in KNOWN_COMMANDS[self.version]:
            raise HostileStream(f"command {number}: unknown command number {cmd}")
        if number == 0 and cmd not in (SUBVOL, SNAPSHOT):
            raise HostileStream(f"the stream starts with command {cmd}, not a subvolume or snapshot")
        if number > 0 and cmd in (SUBVOL, SNAPSHOT):
            raise HostileStream("a second subvolume in the stream (one stream makes one subvolume)")
        attrs = self._attributes(cmd, buf, start, end, number)
        if number == 0:
            self.header = self._head(cmd, attrs)
        if cmd == END:
            self.ended = True

    def _attributes(self, cmd: int, buf: bytearray, at: int, end: int, number: int) -> dict[int, bytes]:
        """The attributes a check needs (paths, uuids) of the command in ``buf[at:end]``; data
        is skipped, not copied."""
        found: dict[int, bytes] = {}
        size = _ATTR_HEAD.size
        while at < end:
            if end - at < size:
                raise HostileStream(f"command {number}: a truncated attribute")
            kind, length = _ATTR_HEAD.unpack_from(buf, at)
            at += size
            if self.version == 2 and kind == A_DATA:        # v2: data runs to the command's end
                break
            if length > end - at:
                raise HostileStream(f"command {number}: an attribute runs past the command")
            if kind != A_DATA:
                value = bytes(buf[at:at + length])
                found[kind] = value
                if kind in _CHECKED_PATHS or (kind == A_PATH_LINK and cmd == LINK):
                    _check_path(value, f"command {number}", kind == A_PATH and cmd not in _NAMING)
            at += length
        return found

    def _head(self, cmd: int, attrs: dict[int, bytes]) -> StreamHead:
        name = attrs.get(A_PATH, b"")
        if not name or b"/" in name or name in (b".", b".."):
            raise HostileStream(f"the subvolume name {name[:200]!r} is not one plain name")
        raw_uuid = attrs.get(A_UUID)
        if raw_uuid is None or len(raw_uuid) != 16 or A_CTRANSID not in attrs:
            raise HostileStream("the subvolume command lacks its UUID or transid")
        parent = parent_ctransid = None
        if cmd == SNAPSHOT:
            clone = attrs.get(A_CLONE_UUID)
            if clone is None or len(clone) != 16 or A_CLONE_CTRANSID not in attrs:
                raise HostileStream("the snapshot command lacks its parent's UUID or transid")
            parent, parent_ctransid = _uuid_text(clone), int.from_bytes(attrs[A_CLONE_CTRANSID][:8], "little")
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise HostileStream(f"the subvolume name {name[:200]!r} is not UTF-8") from None
        return StreamHead(text, _uuid_text(raw_uuid), int.from_bytes(attrs[A_CTRANSID][:8], "little"),
                          parent, parent_ctransid)

    def finish(self) -> None:
        """The stream has ended: raises unless it ended with END, on a command boundary."""
        if self.version is None:
            raise HostileStream("the stream ended before its header")
        if not self.ended:
            raise HostileStream("the stream ended before its END command (truncated)")
