"""FH_ADD_FILE / FH_ADD_DIR / FH_ADD_NODE posts (NDMP v3 and v4) read straight from their bytes.

The general codec builds three or four objects per entry (the file, its name, its stat, the
v3 → v4 translation of each) and the recorder then takes the few values it keeps out of
them again; for a backup of small files that was most of the DMA's work. These readers
take the usual entry — one UNIX name, one stat — with two ``unpack_from`` calls and give
plain tuples. Any other shape (no name or several, NT names, no stat) makes the reader give
up on the whole post (None): the caller then decodes it with the general codec, so
nothing is lost. The stat layout comes from the version's ``.x`` file
(:meth:`Codec.flat_struct`), as the server's encoder (``ndmpd/data/fh_wire.py``) takes it.
"""

from __future__ import annotations

import struct
from functools import cache

from ..wire import protocol
from ..wire.schema import HEADER_SIZE

_COUNT = struct.Struct(">I")
_NAME_HEAD = struct.Struct(">III")          # names<> count, fs_type, string length
_TWO_QUADS = struct.Struct(">QQ")


class FhReader:
    """The fast readers for one NDMP version's history bodies (3 or 4: the same framing)."""

    def __init__(self, version: int) -> None:
        proto = protocol(version)
        stat = proto.codec.flat_struct(f"ndmp{version}_file_stat")
        fields = [f.name for f in proto.codec.spec.structs[f"ndmp{version}_file_stat"].fields]
        # a one-element stat list, the stat, then two quads (node and fh_info)
        self.stat_tail = struct.Struct(">I" + stat.format.lstrip(">") + "QQ")
        # positions in stat_tail's tuple (the count is 0)
        self.i_ftype, self.i_mtime, self.i_fattr, self.i_size = (1 + fields.index(n)
                                                                 for n in ("ftype", "mtime", "fattr", "size"))
        self.fs_unix = proto.const.FS_UNIX
        self.codes = (proto.const.FH_ADD_FILE, proto.const.FH_ADD_DIR, proto.const.FH_ADD_NODE)

    def files(self, record: bytes) -> list[tuple] | None:
        """FH_ADD_FILE entries as (path, node, ftype, fattr, size, mtime, fh_info), or None."""
        head, tail, unix = _NAME_HEAD.unpack_from, self.stat_tail.unpack_from, self.fs_unix
        i_ftype, i_mtime, i_fattr, i_size = self.i_ftype, self.i_mtime, self.i_fattr, self.i_size
        tail_size = self.stat_tail.size
        try:
            (count,) = _COUNT.unpack_from(record, HEADER_SIZE)
            pos, out = HEADER_SIZE + 4, []
            append = out.append
            for _ in range(count):
                names, fs_type, length = head(record, pos)
                if names != 1 or fs_type != unix:
                    return None
                pos += 12
                path = record[pos:pos + length]
                pos += (length + 3) & ~3
                t = tail(record, pos)
                if t[0] != 1:
                    return None
                pos += tail_size
                append((path, t[-2], t[i_ftype], t[i_fattr], t[i_size], t[i_mtime], t[-1]))
        except struct.error:
            return None
        return out if pos == len(record) else None

    def dirs(self, record: bytes) -> list[tuple] | None:
        """FH_ADD_DIR entries as (name, node, parent), or None."""
        head, quads, unix = _NAME_HEAD.unpack_from, _TWO_QUADS.unpack_from, self.fs_unix
        try:
            (count,) = _COUNT.unpack_from(record, HEADER_SIZE)
            pos, out = HEADER_SIZE + 4, []
            append = out.append
            for _ in range(count):
                names, fs_type, length = head(record, pos)
                if names != 1 or fs_type != unix:
                    return None
                pos += 12
                name = record[pos:pos + length]
                pos += (length + 3) & ~3
                node, parent = quads(record, pos)
                pos += 16
                append((name, node, parent))
        except struct.error:
            return None
        return out if pos == len(record) else None

    def nodes(self, record: bytes) -> list[tuple] | None:
        """FH_ADD_NODE entries as stat_tail tuples (count, stat..., node, fh_info), or None."""
        try:
            (count,) = _COUNT.unpack_from(record, HEADER_SIZE)
        except struct.error:
            return None
        if len(record) != HEADER_SIZE + 4 + count * self.stat_tail.size:
            return None
        out = list(self.stat_tail.iter_unpack(memoryview(record)[HEADER_SIZE + 4:]))
        for t in out:
            if t[0] != 1:
                return None
        return out


@cache
def fh_reader(version: int) -> FhReader:
    """The reader of NDMPv``version`` (3 or 4) history posts."""
    return FhReader(version)
