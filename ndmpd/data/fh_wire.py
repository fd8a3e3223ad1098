"""File history entries, encoded for the DMA: v3 and v4 straight as XDR bytes, v2 by the codec.

A backup posts one entry per file. Building three generated objects per entry (file, name,
stat) and walking them through the general encoder cost more per small file than the dump
itself. These encoders write the same bytes in two ``pack`` calls. The stat layout comes
from the version's ``.x`` file (:meth:`Codec.flat_struct`); the framing around it (one
name, one stat, node and fh_info) is checked against the generated codec by
``tests/test_fh_wire.py``, so ``protocol/`` stays the source of truth.

A backup encodes whole batches (:meth:`FhWire.files`, ``dirs``, ``nodes``): the dump's
entries are kept as they came (path, ``os.stat_result``, parent, offset) and each becomes
its bytes in one ``pack`` of a ``Struct`` chosen by the name's length, in one loop per
post, with no per-entry calls or intermediate values.
"""

from __future__ import annotations

import os
import stat as st
import struct
from functools import cache
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Protocol

from ..wire import REQUEST, protocol

U32 = 0xFFFFFFFF
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")
_COUNT = struct.Struct(">I")
_IFMT = 0o170000
_IFDIR = st.S_IFDIR
_STAT_FRONT = struct.Struct(">IIii")      # a one-stat list's count, then the stat's invalid, fs_type, ftype


class Row(Protocol):
    """One entry of a batch, as the dump reports it (``engine.history.HistoryEntry``).

    ``stat[:10]`` is (mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime) in whole
    seconds: an ``os.stat_result``, or a plain tuple in that order."""

    path: bytes                    # relative to the dumped root; b"" is the root
    stat: Sequence[int]
    parent_ino: int
    offset: int


def _file_types(c: SimpleNamespace) -> tuple[dict[int, int], int]:
    """A version's file type for each S_IFMT, and its type for anything else (v2 has no OTHER)."""
    types = {st.S_IFDIR: c.FILE_DIR, st.S_IFREG: c.FILE_REG, st.S_IFLNK: c.FILE_SLINK,
             st.S_IFIFO: c.FILE_FIFO, st.S_IFCHR: c.FILE_CSPEC, st.S_IFBLK: c.FILE_BSPEC,
             st.S_IFSOCK: c.FILE_SOCK}
    return types, getattr(c, "FILE_OTHER", c.FILE_REG)


class FhWire:
    """FH_ADD_FILE, FH_ADD_DIR and FH_ADD_NODE entries and post bodies of one version (3 or 4)."""

    def __init__(self, version: int) -> None:
        proto = protocol(version)
        c = proto.const
        stat_fmt = proto.codec.flat_struct(f"ndmp{version}_file_stat").format.lstrip(">")
        # a one-element name list with the UNIX arm: count, fs_type, string length
        self._name_head = struct.Struct(">III")
        # a one-element stat list, the stat, then node and fh_info (or node and parent)
        self._stat_tail = struct.Struct(">I" + stat_fmt + "QQ")
        self._two_quads = struct.Struct(">QQ")
        self._fs_unix = c.FS_UNIX
        self._ftypes, self._other = _file_types(c)
        self.codes = {"file": c.FH_ADD_FILE, "dir": c.FH_ADD_DIR, "node": c.FH_ADD_NODE}
        self._file_leads: dict[int, tuple[Callable[..., bytes], bytes]] = {}    # by path length (a few
                                                                                # hundred at most)
        # ``files`` sends a stat's first fields (count 1, valid, fs_type, ftype) as ready bytes
        if not self._stat_tail.format.startswith(_STAT_FRONT.format):
            raise ValueError(f"unexpected ndmp{version}_file_stat layout {stat_fmt}")
        self._stat_numbers = self._stat_tail.format[len(_STAT_FRONT.format):]
        self._file_middles = {kind: _STAT_FRONT.pack(1, 0, self._fs_unix, ftype) for kind, ftype in self._ftypes.items()}
        self._file_middles[-1] = _STAT_FRONT.pack(1, 0, self._fs_unix, self._other)
        self._dir_packs: dict[int, Callable[..., bytes]] = {}

    def _name(self, name: bytes) -> bytes:
        size = len(name)
        return self._name_head.pack(1, self._fs_unix, size) + name + _PADS[size & 3]

    def _stat_and_quads(self, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int,
                        ctime: int, links: int, first: int, second: int) -> bytes:
        return self._stat_tail.pack(1, 0, self._fs_unix, self._ftypes.get(st.S_IFMT(mode), self._other),
                                    mtime & U32, atime & U32, ctime & U32, uid & U32, gid & U32,
                                    mode & 0o7777, size, links & U32, first, second)

    def file(self, path: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int,
             ctime: int, links: int, node: int, fh_info: int) -> bytes:
        """One ``file``: its full path (from the dumped root, with a leading slash) and stat."""
        return self._name(path) + self._stat_and_quads(mode, uid, gid, size, mtime, atime, ctime, links,
                                                       node, fh_info)

    def dir(self, name: bytes, node: int, parent: int) -> bytes:
        """One ``dir``: a name within its parent directory."""
        return self._name(name) + self._two_quads.pack(node, parent)

    def node(self, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int, ctime: int,
             links: int, node: int, fh_info: int) -> bytes:
        """One ``node``: the stat of an inode named by a ``dir``."""
        return self._stat_and_quads(mode, uid, gid, size, mtime, atime, ctime, links, node, fh_info)

    def post(self, kind: str, entries: list[bytes]) -> tuple[int, bytes]:
        """The message code and body of one post of ``kind`` ("file", "dir" or "node")."""
        return self.codes[kind], _COUNT.pack(len(entries)) + b"".join(entries)

    # -- whole batches (the backup's path) -------------------------------------------------

    def _file_lead(self, size: int) -> tuple[Callable[..., bytes], bytes]:
        """For a path of ``size`` bytes: ``pack`` of a whole ``file`` from the bytes in front
        of its path, the path, the bytes between it and the times (``_file_middles``), the
        stat's numbers, node and fh_info; and those front bytes (count, fs_type, length, "/")."""
        lead = self._file_leads.get(size)
        if lead is None:
            pad = -(size + 1) & 3
            lead = (struct.Struct(f">13s{size}s{pad}x{_STAT_FRONT.size}s{self._stat_numbers}").pack,
                    self._name_head.pack(1, self._fs_unix, size + 1) + b"/")
            self._file_leads[size] = lead
        return lead

    def _dir_pack(self, size: int) -> Callable[..., bytes]:
        pack = self._dir_packs.get(size)
        if pack is None:
            pack = struct.Struct(f">III{size}s{-size & 3}xQQ").pack
            self._dir_packs[size] = pack
        return pack

    def files(self, rows: Sequence[Row]) -> tuple[int, bytes]:
        """FH_ADD_FILE of ``rows``: the same bytes as ``post("file", [file(b"/" + path, ...)])``
        (directories with size 0).

        The constant fields go in as ready bytes (per path length, per file type) and the
        numbers unmasked: ``pack`` refuses one outside 32 bits (a time before 1970, a big
        uid), and only such a row is packed again with each masked as ``file`` does."""
        leads, make, middles = self._file_leads, self._file_lead, self._file_middles
        out = [_COUNT.pack(len(rows))]
        append = out.append
        for row in rows:
            path = row.path
            mode, node, _, links, uid, gid, size, atime, mtime, ctime = row.stat[:10]
            kind = mode & _IFMT
            pack, front = leads.get(len(path)) or make(len(path))
            if kind == _IFDIR:
                size = 0
            try:
                append(pack(front, path, middles.get(kind) or middles[-1], mtime, atime, ctime, uid, gid,
                            mode & 0o7777, size, links, node, row.offset))
            except struct.error:
                append(pack(front, path, middles.get(kind) or middles[-1], mtime & U32, atime & U32,
                            ctime & U32, uid & U32, gid & U32, mode & 0o7777, size, links & U32, node,
                            row.offset))
        return self.codes["file"], b"".join(out)

    def dirs(self, rows: Sequence[Row], dot: int | None = None) -> tuple[int, bytes]:
        """FH_ADD_DIR of ``rows``: each one's name in its parent (the root is "." in itself),
        after an invented "." of node ``dot`` in itself when given."""
        fs, packs, make = self._fs_unix, self._dir_packs, self._dir_pack
        out = [_COUNT.pack(len(rows) + (dot is not None))]
        append = out.append
        if dot is not None:
            append(make(1)(1, fs, 1, b".", dot, dot))
        for row in rows:
            path = row.path
            if path:
                name = path.rpartition(b"/")[2]
                append((packs.get(len(name)) or make(len(name)))(1, fs, len(name), name, row.stat[1],
                                                                 row.parent_ino))
            else:
                node = row.stat[1]
                append(make(1)(1, fs, 1, b".", node, node))
        return self.codes["dir"], b"".join(out)

    def nodes(self, rows: Sequence[Row]) -> tuple[int, bytes]:
        """FH_ADD_NODE of ``rows``: the stat of each (directories with size 0)."""
        fs, ftypes, other, pack = self._fs_unix, self._ftypes, self._other, self._stat_tail.pack
        out = [_COUNT.pack(len(rows))]
        append = out.append
        for row in rows:
            mode, node, _, links, uid, gid, size, atime, mtime, ctime = row.stat[:10]
            kind = mode & _IFMT
            append(pack(1, 0, fs, ftypes.get(kind, other), mtime & U32, atime & U32, ctime & U32, uid & U32,
                        gid & U32, mode & 0o7777, 0 if kind == st.S_IFDIR else size, links & U32, node,
                        row.offset))
        return self.codes["node"], b"".join(out)


class FhV2:
    """The same entries as NDMP v2's FH_ADD_UNIX_PATH/DIR/NODE (rare: objects and the codec).

    v2 keeps fh_info in the stat, not beside the node."""

    def __init__(self) -> None:
        self._proto = proto = protocol(2)
        self._t = t = proto.types
        self._ftypes, self._other = _file_types(proto.const)
        self._posts = {"file": (proto.by_name["FH_ADD_UNIX_PATH"].code, t.fh_add_unix_path_post),
                       "dir": (proto.by_name["FH_ADD_UNIX_DIR"].code, t.fh_add_unix_dir_post),
                       "node": (proto.by_name["FH_ADD_UNIX_NODE"].code, t.fh_add_unix_node_post)}

    def _stat(self, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int, ctime: int,
              fh_info: int) -> object:
        return self._t.unix_file_stat(self._ftypes.get(st.S_IFMT(mode), self._other), mtime & U32, atime & U32,
                                      ctime & U32, uid & U32, gid & U32, mode & 0o7777, size, fh_info)

    def file(self, path: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int,
             ctime: int, links: int, node: int, fh_info: int) -> object:
        return self._t.fh_unix_path(os.fsdecode(path), self._stat(mode, uid, gid, size, mtime, atime, ctime, fh_info))

    def dir(self, name: bytes, node: int, parent: int) -> object:
        return self._t.fh_unix_dir(os.fsdecode(name), node & U32, parent & U32)

    def node(self, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int, ctime: int,
             links: int, node: int, fh_info: int) -> object:
        return self._t.fh_unix_node(self._stat(mode, uid, gid, size, mtime, atime, ctime, fh_info), node & U32)

    def post(self, kind: str, entries: list) -> tuple[int, bytes]:
        code, body = self._posts[kind]
        return code, self._proto.encode_body(code, REQUEST, body(entries))

    @staticmethod
    def _fields(row: Row) -> tuple[int, ...]:
        """mode, uid, gid, size, mtime, atime, ctime, links, node, fh_info of a row."""
        mode, node, _, links, uid, gid, size, atime, mtime, ctime = row.stat[:10]
        return (mode, uid, gid, 0 if st.S_ISDIR(mode) else size, mtime, atime, ctime, links, node, row.offset)

    def files(self, rows: Sequence[Row]) -> tuple[int, bytes]:
        return self.post("file", [self.file(b"/" + row.path, *self._fields(row)) for row in rows])

    def dirs(self, rows: Sequence[Row], dot: int | None = None) -> tuple[int, bytes]:
        entries = [] if dot is None else [self.dir(b".", dot, dot)]
        entries += [self.dir(row.path.rpartition(b"/")[2], row.stat[1], row.parent_ino) if row.path
                    else self.dir(b".", row.stat[1], row.stat[1]) for row in rows]
        return self.post("dir", entries)

    def nodes(self, rows: Sequence[Row]) -> tuple[int, bytes]:
        return self.post("node", [self.node(*self._fields(row)) for row in rows])


FhEncoder = FhWire | FhV2


@cache
def fh_encoder(version: int) -> FhEncoder:
    """The (stateless, shared) entry encoder of one version."""
    return FhV2() if version == 2 else FhWire(version)
