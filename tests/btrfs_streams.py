"""Taking real btrfs send streams apart and putting edited ones back together (for hostile tests)."""

from __future__ import annotations

import struct

MAGIC = b"btrfs-stream\0"


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """btrfs's crc32c (seed 0, no final xor), as send streams carry it."""
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


Command = tuple[int, list[tuple[int, bytes]]]


def split(stream: bytes) -> tuple[int, list[Command]]:
    """(version, [(cmd, [(attr type, value)])]) of a version-1 stream."""
    assert stream.startswith(MAGIC)
    (version,) = struct.unpack_from("<I", stream, len(MAGIC))
    at, commands = len(MAGIC) + 4, []
    while at < len(stream):
        length, cmd, _crc = struct.unpack_from("<IHI", stream, at)
        body, at = stream[at + 10:at + 10 + length], at + 10 + length
        attrs, i = [], 0
        while i < len(body):
            kind, size = struct.unpack_from("<HH", body, i)
            attrs.append((kind, body[i + 4:i + 4 + size]))
            i += 4 + size
        commands.append((cmd, attrs))
    return version, commands


def join(version: int, commands: list[Command]) -> bytes:
    """A stream with correct lengths and checksums (so only the guard can refuse it)."""
    out = [MAGIC + struct.pack("<I", version)]
    for cmd, attrs in commands:
        body = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in attrs)
        head = struct.pack("<IHI", len(body), cmd, 0)
        crc = crc32c(body, crc32c(head))
        out.append(struct.pack("<IHI", len(body), cmd, crc) + body)
    return b"".join(out)


def set_attr(command: Command, kind: int, value: bytes) -> Command:
    cmd, attrs = command
    return cmd, [(k, value if k == kind else v) for k, v in attrs]
