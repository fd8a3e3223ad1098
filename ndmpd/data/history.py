"""File history posts: entries from the engine, batched into FH_ADD_* messages for the DMA.

Two kinds, chosen by HIST: paths (``f``: FH_ADD_FILE, v2 FH_ADD_UNIX_PATH; the ``tar`` butype)
and directories plus nodes (``d``: FH_ADD_DIR then FH_ADD_NODE, "." first; the ``dump``
butype, as Bareos and NetBackup expect). ``fh_info`` is the entry's byte offset in the image.

Batches are encoded on the worker thread and leave it through ``send``. At most MAX_QUEUED
are in flight on the control connection; when the DMA reads slowly the rest wait in a
:class:`Spill` file, so history never stalls the data stream and never grows in memory.
Only :meth:`FileHistory.finish`, after the stream has ended, waits for the DMA.
"""

from __future__ import annotations

import os
import stat as st
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..wire import C, T, protocol
from .spill import Spill

BATCH = 512                        # entries per post
MAX_QUEUED = 8                     # posts handed to the session and not yet sent
U32 = 0xFFFFFFFF


@dataclass(slots=True)
class FhRecord:
    """One entry as history describes it."""

    path: bytes                    # relative to the dumped root; b"" is the root
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    atime: int
    ctime: int
    links: int
    node: int
    parent: int
    fh_info: int


def _size(s: os.stat_result) -> int:
    """History gives directories no size."""
    return s.st_size if not st.S_ISDIR(s.st_mode) else 0


def from_stat(path: bytes, s: os.stat_result, parent: int, offset: int) -> FhRecord:
    return FhRecord(path, s.st_mode, s.st_uid, s.st_gid, _size(s),
                    int(s.st_mtime), int(s.st_atime), int(s.st_ctime), s.st_nlink, s.st_ino, parent, offset)


_FTYPES = {st.S_IFDIR: C.FILE_DIR, st.S_IFREG: C.FILE_REG, st.S_IFLNK: C.FILE_SLINK, st.S_IFIFO: C.FILE_FIFO,
           st.S_IFCHR: C.FILE_CSPEC, st.S_IFBLK: C.FILE_BSPEC, st.S_IFSOCK: C.FILE_SOCK}


def ftype(mode: int) -> int:
    return _FTYPES.get(st.S_IFMT(mode), C.FILE_OTHER)


_FILE, _FILE_NAME, _FILE_STAT = T.file, T.file_name, T.file_stat


def _file_stat(mode: int, uid: int, gid: int, size: int, mtime: int, atime: int, ctime: int, links: int):
    """The v3/v4 ``file_stat`` of an entry (times in whole seconds)."""
    return _FILE_STAT(0, C.FS_UNIX, ftype(mode), mtime & U32, atime & U32, ctime & U32, uid & U32, gid & U32,
                      mode & 0o7777, size, links & U32)


def _file_entry(path: bytes, stat: object, node: int, fh_info: int):
    """One FH_ADD_FILE entry; ``path`` is relative to the dumped root."""
    return _FILE([_FILE_NAME(C.FS_UNIX, "/" + os.fsdecode(path))], [stat], node, fh_info)


class FileHistory:
    """Collects records on the worker thread and posts them in batches."""

    def __init__(self, version: int, kind: str, encode: Callable[[int, object], bytes],
                 send: Callable[[int, bytes, Callable[[], None]], None], cancel: threading.Event) -> None:
        self.version = version
        self.kind = kind                       # "f" or "d"
        self._encode = encode
        self._send = send
        self._cancel = cancel
        self._spill = Spill()
        self._files: list[FhRecord] = []
        self._built: list[object] = []           # FH_ADD_FILE entries made straight from a stat
        self._dirs: list[FhRecord] = []
        self._nodes: list[FhRecord] = []
        self._room = threading.Semaphore(MAX_QUEUED)
        self._root_sent = False
        self.entries = 0

    def add_stat(self, path: bytes, s: os.stat_result, parent: int, offset: int) -> None:
        """An entry the dump wrote (the hot path: one call per file of a backup)."""
        if self.kind != "f" or self.version == 2:
            self.add(from_stat(path, s, parent, offset))
            return
        self.entries += 1
        stat = _file_stat(s.st_mode, s.st_uid, s.st_gid, _size(s), int(s.st_mtime), int(s.st_atime),
                          int(s.st_ctime), s.st_nlink)
        self._built.append(_file_entry(path, stat, s.st_ino, offset))
        if len(self._built) >= BATCH:
            self.flush()

    def add(self, record: FhRecord) -> None:
        self.entries += 1
        if self.kind == "f":
            self._files.append(record)
            if len(self._files) >= BATCH:
                self.flush()
            return
        if not self._root_sent:
            self._root_sent = True
            if record.path:                     # the root was not the first entry: invent "."
                self._dirs.append(FhRecord(b".", 0, 0, 0, 0, 0, 0, 0, 0, record.parent, record.parent, 0))
        if record.path:
            self._dirs.append(record)
        else:
            self._dirs.append(FhRecord(b".", 0, 0, 0, 0, 0, 0, 0, 0, record.node, record.node, 0))
        self._nodes.append(record)
        if len(self._nodes) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Post what is collected (directories before the nodes that follow them)."""
        if self._files:
            self._post(*self._file_post(self._files))
            self._files = []
        if self._built:
            self._post(C.FH_ADD_FILE, T.fh_add_file_post(self._built))
            self._built = []
        if self._dirs:
            self._post(*self._dir_post(self._dirs))
            self._dirs = []
        if self._nodes:
            self._post(*self._node_post(self._nodes))
            self._nodes = []

    def finish(self) -> None:
        """Post the rest and wait (the stream has ended) until the spill is sent or the job
        is cancelled; then free the spill."""
        self.flush()
        try:
            while self._spill.count and not self._cancel.is_set():
                if self._room.acquire(timeout=0.25):
                    self._send(*self._spill.pop(), self._room.release)
        finally:
            self._spill.close()

    @property
    def spilled_bytes(self) -> int:
        return self._spill.spilled_bytes

    def _post(self, code: int, body: object) -> None:
        """Send now if the window has room and nothing older waits; else spill (never wait)."""
        data = self._encode(code, body)
        spill = self._spill
        while spill.count and self._room.acquire(blocking=False):
            self._send(*spill.pop(), self._room.release)
        if not spill.count and self._room.acquire(blocking=False):
            self._send(code, data, self._room.release)
        else:
            spill.push(code, data)

    # -- bodies, per version -----------------------------------------------------------

    def _v2_stat(self, r: FhRecord):
        v2 = protocol(2).types
        return v2.unix_file_stat(ftype(r.mode), r.mtime & U32, r.atime & U32, r.ctime & U32, r.uid & U32,
                                 r.gid & U32, r.mode & 0o7777, r.size, r.fh_info)

    def _stat(self, r: FhRecord):
        return _file_stat(r.mode, r.uid, r.gid, r.size, r.mtime, r.atime, r.ctime, r.links)

    def _file_post(self, records: list[FhRecord]) -> tuple[int, object]:
        if self.version == 2:
            v2 = protocol(2)
            paths = [v2.types.fh_unix_path("/" + os.fsdecode(r.path), self._v2_stat(r)) for r in records]
            return v2.by_name["FH_ADD_UNIX_PATH"].code, v2.types.fh_add_unix_path_post(paths)
        files = [_file_entry(r.path, self._stat(r), r.node, r.fh_info) for r in records]
        return C.FH_ADD_FILE, T.fh_add_file_post(files)

    def _dir_post(self, records: list[FhRecord]) -> tuple[int, object]:
        if self.version == 2:
            v2 = protocol(2)
            dirs = [v2.types.fh_unix_dir(os.fsdecode(os.path.basename(r.path)), r.node & U32, r.parent & U32)
                    for r in records]
            return v2.by_name["FH_ADD_UNIX_DIR"].code, v2.types.fh_add_unix_dir_post(dirs)
        dirs = [T.dir(names=[T.file_name(fs_type=C.FS_UNIX, unix_name=os.fsdecode(os.path.basename(r.path)))],
                      node=r.node, parent=r.parent) for r in records]
        return C.FH_ADD_DIR, T.fh_add_dir_post(dirs)

    def _node_post(self, records: list[FhRecord]) -> tuple[int, object]:
        if self.version == 2:
            v2 = protocol(2)
            nodes = [v2.types.fh_unix_node(self._v2_stat(r), r.node & U32) for r in records]
            return v2.by_name["FH_ADD_UNIX_NODE"].code, v2.types.fh_add_unix_node_post(nodes)
        nodes = [T.node(stats=[self._stat(r)], node=r.node, fh_info=r.fh_info) for r in records]
        return C.FH_ADD_NODE, T.fh_add_node_post(nodes)
