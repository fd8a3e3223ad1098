"""File history posts: entries from the engine, batched into FH_ADD_* messages for the DMA.

Two kinds, chosen by HIST: paths (``f``: FH_ADD_FILE, v2 FH_ADD_UNIX_PATH; the ``tar`` butype)
and directories plus nodes (``d``: FH_ADD_DIR then FH_ADD_NODE, "." first; the ``dump``
butype, as Bareos and NetBackup expect). ``fh_info`` is the entry's byte offset in the image.

Entries wait as the dump reported them until a batch is full; the batch is then encoded in
one go, on the worker thread (:mod:`.fh_wire`), and leaves it through ``send``. At most
MAX_QUEUED are in flight on the control connection; when the DMA reads slowly the rest
wait in a :class:`Spill` file, so history never stalls the data stream and never grows in
memory. Only :meth:`FileHistory.finish`, after the stream has ended, waits for the DMA.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..engine.history import HistoryEntry
from .fh_wire import Row, fh_encoder
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
    """Collects entries on the worker thread and posts them in batches.

    An entry is kept as the dump reported it (no copy, no encoding) until its batch is full;
    the batch is then encoded in one loop (:meth:`.fh_wire.FhWire.files`), so a backup's
    per-file cost here is one call and one ``append``."""

    def __init__(self, version: int, kind: str, send: Callable[[int, bytes, Callable[[], None]], None],
                 cancel: threading.Event) -> None:
        self.version = version
        self.kind = kind                       # "f" or "d"
        self._encoder = fh_encoder(version)
        self._send = send
        self._cancel = cancel
        self._spill = Spill()
        self._rows: list[Row] = []
        self._room = threading.Semaphore(MAX_QUEUED)
        self._root_sent = False
        self._posted = 0

    @property
    def entries(self) -> int:
        """Entries added so far."""
        return self._posted + len(self._rows)

    def add_entry(self, entry: HistoryEntry) -> None:
        """An entry the dump wrote (the hot path: the dump's history callback, once per file).
        History gives directories no size; times are whole seconds (``stat[7:10]``)."""
        rows = self._rows
        rows.append(entry)
        if len(rows) >= BATCH:
            self.flush()

    def add_stat(self, path: bytes, s: os.stat_result, parent: int, offset: int) -> None:
        """An entry by its parts (as :meth:`add_entry`)."""
        self.add_entry(HistoryEntry(path, s, parent, offset))

    def add(self, r: FhRecord) -> None:
        """An entry described without a stat (an image being listed)."""
        stat = (r.mode, r.node, 0, r.links, r.uid, r.gid, r.size, r.atime, r.mtime, r.ctime)   # stat[:10]'s order
        self.add_entry(HistoryEntry(r.path, stat, r.parent, r.fh_info))       # type: ignore[arg-type]

    def flush(self) -> None:
        """Post what is collected (directories before the nodes that follow them)."""
        rows = self._rows
        if not rows:
            return
        encoder = self._encoder
        if self.kind == "f":
            self._post(*encoder.files(rows))
        else:
            dot = None
            if not self._root_sent:
                self._root_sent = True
                if rows[0].path:                # the root was not the first entry: invent "."
                    dot = rows[0].parent_ino
            self._post(*encoder.dirs(rows, dot))
            self._post(*encoder.nodes(rows))
        self._posted += len(rows)
        self._rows = []

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
