"""File history entries, encoded for the DMA: v3 and v4 straight as XDR bytes, v2 by the codec.

A backup posts one entry per file. Building three generated objects per entry (file, name,
stat) and walking them through the general encoder cost more per small file than the dump
itself. These encoders write the same bytes in two ``pack`` calls. The stat layout comes
from the version's ``.x`` file (:meth:`Codec.flat_struct`); the framing around it (one
name, one stat, node and fh_info) is checked against the generated codec by
``tests/test_fh_wire.py``, so ``protocol/`` stays the source of truth.
"""

from __future__ import annotations

import os
import stat as st
import struct
from functools import cache
from types import SimpleNamespace

from ..wire import REQUEST, protocol

U32 = 0xFFFFFFFF
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")
_COUNT = struct.Struct(">I")


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


FhEncoder = FhWire | FhV2


@cache
def fh_encoder(version: int) -> FhEncoder:
    """The (stateless, shared) entry encoder of one version."""
    return FhV2() if version == 2 else FhWire(version)
