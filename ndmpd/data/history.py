"""File history posts: entries from the engine, batched into FH_ADD_* messages for the DMA.

Two kinds, chosen by HIST: paths (``f``: FH_ADD_FILE, v2 FH_ADD_UNIX_PATH; the ``tar`` butype)
and directories plus nodes (``d``: FH_ADD_DIR then FH_ADD_NODE, "." first; the ``dump``
butype, as Bareos and NetBackup expect). ``fh_info`` is the entry's byte offset in the image.

Entries are encoded as they arrive, on the worker thread (:mod:`.fh_wire`), and each batch
leaves it through ``send``. At most MAX_QUEUED are in flight on the control connection;
when the DMA reads slowly the rest wait in a :class:`Spill` file, so history never stalls
the data stream and never grows in memory. Only :meth:`FileHistory.finish`, after the
stream has ended, waits for the DMA.
"""

from __future__ import annotations

import os
import stat as st
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .fh_wire import fh_encoder
from .spill import Spill

BATCH = 512                        # entries per post
MAX_QUEUED = 8                     # posts handed to the session and not yet sent


@dataclass(slots=True)
class FhRecord:
    """One entry as history describes it (an image being listed, where there is no stat)."""

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


class FileHistory:
    """Collects entries on the worker thread and posts them in batches."""

    def __init__(self, version: int, kind: str, send: Callable[[int, bytes, Callable[[], None]], None],
                 cancel: threading.Event) -> None:
        self.version = version
        self.kind = kind                       # "f" or "d"
        self._encoder = fh_encoder(version)
        self._send = send
        self._cancel = cancel
        self._spill = Spill()
        self._files: list = []
        self._dirs: list = []
        self._nodes: list = []
        self._room = threading.Semaphore(MAX_QUEUED)
        self._root_sent = False
        self.entries = 0

    def add_stat(self, path: bytes, s: os.stat_result, parent: int, offset: int) -> None:
        """An entry the dump wrote (the hot path: one call per file of a backup). History
        gives directories no size; times are whole seconds (``s[7:10]``: atime, mtime, ctime)."""
        mode = s.st_mode
        size = 0 if st.S_ISDIR(mode) else s.st_size
        self._add(path, mode, s.st_uid, s.st_gid, size, s[8], s[7], s[9], s.st_nlink, s.st_ino, parent, offset)

    def add(self, r: FhRecord) -> None:
        self._add(r.path, r.mode, r.uid, r.gid, r.size, r.mtime, r.atime, r.ctime, r.links, r.node, r.parent,
                  r.fh_info)

    def _add(self, path: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int, ctime: int,
             links: int, node: int, parent: int, fh_info: int) -> None:
        self.entries += 1
        encoder = self._encoder
        if self.kind == "f":
            self._files.append(encoder.file(b"/" + path, mode, uid, gid, size, mtime, atime, ctime, links,
                                            node, fh_info))
            if len(self._files) >= BATCH:
                self.flush()
            return
        if not self._root_sent:
            self._root_sent = True
            if path:                            # the root was not the first entry: invent "."
                self._dirs.append(encoder.dir(b".", parent, parent))
        self._dirs.append(encoder.dir(path.rpartition(b"/")[2] if path else b".", node, parent if path else node))
        self._nodes.append(encoder.node(mode, uid, gid, size, mtime, atime, ctime, links, node, fh_info))
        if len(self._nodes) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Post what is collected (directories before the nodes that follow them)."""
        for kind, entries in (("file", self._files), ("dir", self._dirs), ("node", self._nodes)):
            if entries:
                self._post(*self._encoder.post(kind, entries))
                entries.clear()

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

    def _post(self, code: int, data: bytes) -> None:
        """Send now if the window has room and nothing older waits; else spill (never wait)."""
        spill = self._spill
        while spill.count and self._room.acquire(blocking=False):
            self._send(*spill.pop(), self._room.release)
        if not spill.count and self._room.acquire(blocking=False):
            self._send(code, data, self._room.release)
        else:
            spill.push(code, data)
