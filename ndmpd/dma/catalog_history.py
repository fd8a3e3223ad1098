"""File history from a backup's FH_* posts into the catalog, off the control path.

:meth:`HistoryRecorder.post` only queues the decoded body (the client's internal v4 form:
FH_ADD_FILE, FH_ADD_DIR, FH_ADD_NODE), so the connection that reads NOTIFY and LOG posts
never waits for the disk. A worker thread turns bodies into rows and hands them to a writer
in big all-or-nothing batches: a crash leaves whole batches and the backup still
``running``, never half rows. A writer failure is kept and raised by :meth:`finish` (and
by the next :meth:`post`), not dropped.

:meth:`HistoryRecorder.post_raw` takes the undecoded record instead (``Agent.on_raw``): the
worker reads v3/v4 history with :mod:`.catalog_fh` (no objects per entry) and decodes
anything else with the general codec. The raw records waiting are bounded
(:data:`HIGH_WATER` bytes): past that, ``post_raw`` hands the agent an awaitable that ends
once the worker is back under half of it, so the server's posts are read no faster than the
catalog stores them, but the event loop (signals, other agents) keeps running.

``dump`` history comes as directory entries (name, node, parent; the root is the entry whose
parent is itself, named ".") and nodes (stat, fh_info). A node's paths are resolved from
the entries seen so far; a node that arrives before its entry waits until the end. A node
with several entries (hard links) gives a row for each path.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import stat as st
import threading
from collections.abc import Callable
from functools import cache
from typing import Any, Awaitable, Protocol

from ..wire import C, REQUEST, Translator, protocol
from .catalog import as_path, split_path
from .catalog_fh import fh_reader

log = logging.getLogger("ndmpd.dma.catalog")

BATCH_ROWS = 50_000
IDLE_ROWS = 10_000                    # a smaller batch goes as soon as no post waits: the writer keeps up
HIGH_WATER = 64 << 20                 # raw history bytes queued before post_raw pushes back
_STOP = object()
# NDMP v2's own history messages (a client keeps v2-only messages in their v2 form)
V2_UNIX_PATH, V2_UNIX_DIR, V2_UNIX_NODE = 0x700, 0x701, 0x702
_CODES = (C.FH_ADD_FILE, C.FH_ADD_DIR, C.FH_ADD_NODE, V2_UNIX_PATH, V2_UNIX_DIR, V2_UNIX_NODE)

# NDMP v3/v4 file types (the same numbers in both) and the st_mode type bits they stand for
_TYPE_BITS = {C.FILE_DIR: st.S_IFDIR, C.FILE_FIFO: st.S_IFIFO, C.FILE_CSPEC: st.S_IFCHR,
              C.FILE_BSPEC: st.S_IFBLK, C.FILE_REG: st.S_IFREG, C.FILE_SLINK: st.S_IFLNK,
              C.FILE_SOCK: st.S_IFSOCK}


@cache
def _translator(version: int) -> Translator:
    return Translator(protocol(version))


class FileWriter(Protocol):
    """Where rows (dir, name, inode, size, mode, mtime, fh_info) go, each batch atomically."""

    def write(self, rows: list[tuple]) -> None: ...

    def close(self) -> None: ...


class HistoryError(Exception):
    """The catalog could not store a backup's file history (the cause is chained)."""


def _name(names: list) -> bytes | None:
    """The UNIX name of an entry (the first name if none says UNIX)."""
    chosen = None
    for n in names:
        if n.fs_type == C.FS_UNIX:
            chosen = n.unix_name
            break
    if chosen is None and names:
        n = names[0]
        chosen = getattr(n, "unix_name", None) or getattr(n, "other_name", None)
        if chosen is None and getattr(n, "nt_name", None) is not None:
            chosen = n.nt_name.nt_path
    if chosen is None:
        return None
    return chosen.encode("utf-8", "surrogateescape") if isinstance(chosen, str) else chosen


def _stat(stats: list) -> tuple[int | None, int | None, int | None]:
    """(size, st_mode, mtime) of an entry's stat, None where it has none."""
    if not stats:
        return None, None, None
    s = stats[0]
    mode = _TYPE_BITS.get(s.ftype, 0) | (s.fattr & 0o7777)
    return s.size, mode, s.mtime


class _Paths:
    """Turns FH_ADD_DIR entries and FH_ADD_NODE stats into full paths (the ``dump`` style)."""

    def __init__(self) -> None:
        self.entries: dict[int, list[tuple[int, bytes]]] = {}   # node -> [(parent, name)]
        self.root: int | None = None
        self.known: dict[int, bytes] = {}                       # directory node -> its path
        self.waiting: list[tuple[int, tuple]] = []

    def add_dir(self, name: bytes, node: int, parent: int) -> None:
        if node == parent or (self.root is None and name in (b".", b"")):
            self.root = node
            self.known[node] = b"/"
            self.entries.setdefault(node, [])
            return
        self.entries.setdefault(node, []).append((parent, name))

    def dir_path(self, node: int) -> bytes | None:
        """A directory's path, walking up its entries (iteratively: trees can be deep)."""
        chain: list[tuple[int, bytes]] = []
        seen: set[int] = set()
        while (known := self.known.get(node)) is None:
            links = self.entries.get(node)
            if not links or node in seen:            # not named yet, or a loop in hostile history
                return None
            seen.add(node)
            parent, name = links[0]                   # a directory has one entry
            chain.append((node, name))
            node = parent
        path = known
        for child, name in reversed(chain):
            path = (path if path != b"/" else b"") + b"/" + name
            self.known[child] = path
        return path

    def paths(self, node: int) -> list[bytes] | None:
        """Every path of ``node`` (several when hard-linked), or None if not yet resolvable."""
        if node == self.root:
            return [b"/"]
        links = self.entries.get(node)
        if not links:
            return None
        out = []
        for parent, name in links:
            above = self.dir_path(parent)
            if above is None:
                return None
            out.append((above if above != b"/" else b"") + b"/" + name)
        return out


class HistoryRecorder:
    """Records one backup's file history through ``writer`` on a worker thread."""

    def __init__(self, writer: FileWriter, batch_rows: int = BATCH_ROWS) -> None:
        self._writer = writer
        self._batch_rows = batch_rows
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._paths = _Paths()
        self._rows: list[tuple] = []
        self._batches: queue.Queue = queue.Queue(maxsize=2)   # rows being converted wait for the writer
        self.rows_written = 0
        self._raw_queued = 0                       # bytes queued by post_raw (its caller's thread)
        self._raw_done = 0                         # ... and taken by the worker (the worker's)
        self.unresolved = 0                        # dump nodes no directory entry ever named
        self.skipped = 0                           # posts that could not be read (left out)
        self._skip_reason = ""                     # why the first of them could not

    def start(self) -> "HistoryRecorder":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ndmp-catalog-history", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> "HistoryRecorder":
        return self.start()

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.finish()

    def handler(self) -> Callable[[int, Any], None]:
        """``post`` as a callback for a client's FH_* posts."""
        return self.post

    def post(self, code: int, body: Any) -> None:
        """Queue one FH_ADD_FILE/DIR/NODE body (the control path's only cost); others are ignored."""
        if self._error is not None:
            raise HistoryError("file history could not be stored") from self._error
        if code in _CODES:
            self.start()
            self._queue.put((code, body))

    def post_raw(self, version: int, code: int, record: bytes) -> Awaitable[None] | None:
        """Queue one undecoded FH_* record (header included) of an NDMPv``version`` connection;
        an awaitable when the worker is :data:`HIGH_WATER` bytes behind (see the module)."""
        if self._error is not None:
            raise HistoryError("file history could not be stored") from self._error
        if code not in _CODES:
            return None
        self.start()
        self._raw_queued += len(record)
        self._queue.put((version, code, record))
        if self._raw_queued - self._raw_done > HIGH_WATER:
            return self._caught_up()
        return None

    async def _caught_up(self) -> None:
        while (self._raw_queued - self._raw_done > HIGH_WATER // 2 and self._error is None
               and self._thread is not None and self._thread.is_alive()):
            await asyncio.sleep(0.01)

    def finish(self) -> int:
        """Write everything queued and wait for it; the number of rows written. Raises
        :class:`HistoryError` if any batch failed."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        else:
            self._writer.close()
        if self._error is not None:
            raise HistoryError("file history could not be stored") from self._error
        return self.rows_written

    close = finish

    # ------------------------------------------------------------ worker

    def _run(self) -> None:
        """Turn bodies into rows (this thread) while the batch before is written (the writer's
        thread: sqlite3 releases the GIL while it steps, so the two use two cores)."""
        writer = threading.Thread(target=self._write_batches, name="ndmp-catalog-writer", daemon=True)
        writer.start()
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if self._error is not None:
                    if len(item) == 3:
                        self._raw_done += len(item[2])
                    continue                         # drain: post() callers are never blocked
                raw = len(item) == 3
                try:
                    if raw:
                        self._take_raw(*item)
                    else:
                        self._take(*item)
                except Exception as exc:            # a post the server garbled: the others still count
                    self._skip(exc)
                if raw:
                    self._raw_done += len(item[2])
                rows = len(self._rows)
                if rows >= self._batch_rows or (rows >= IDLE_ROWS and self._queue.empty()):
                    self._hand_over()            # so finish() is left with one small batch, not a big one
            if self._error is None:
                self._resolve_waiting()
                self._hand_over()
        except BaseException as exc:  # noqa: BLE001 - kept for finish() to raise
            self._fail(exc)
        finally:
            self._batches.put(_STOP)
            writer.join()

    def _hand_over(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            self._batches.put(rows)

    def _write_batches(self) -> None:
        try:
            while (rows := self._batches.get()) is not _STOP:
                if self._error is None:
                    try:
                        self._writer.write(rows)
                        self.rows_written += len(rows)
                    except BaseException as exc:  # noqa: BLE001 - kept for finish() to raise
                        self._fail(exc)
        finally:
            try:
                self._writer.close()
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc)

    def _skip(self, exc: Exception) -> None:
        self.skipped += 1
        if not self._skip_reason:
            self._skip_reason = f"{type(exc).__name__}: {exc}"
            log.warning("catalog: a file history post could not be read: %s", self._skip_reason)

    def skipped_note(self) -> str | None:
        """What the user is told when posts were left out (None when none was)."""
        if not self.skipped:
            return None
        return (f"{self.skipped} file history post(s) from the server could not be read and are not in the "
                f"catalog (the first: {self._skip_reason}); a whole restore still has every file")

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            log.error("catalog: file history not stored: %s", exc)

    def _take(self, code: int, body: Any) -> None:
        rows = self._rows
        if code >= V2_UNIX_PATH and code <= V2_UNIX_NODE:
            self._take_v2(code, body)
            return
        if code == C.FH_ADD_FILE:
            append, type_bits, unix = rows.append, _TYPE_BITS, C.FS_UNIX
            for f in body.files:
                names, stats = f.names, f.stats
                # the usual entry (one UNIX name, a clean absolute path, one stat) without calls
                if len(names) == 1 and names[0].fs_type == unix and len(stats) == 1:
                    path = names[0].unix_name.encode("utf-8", "surrogateescape")
                    if path[:1] != b"/" or b"//" in path or b"/." in path or path[-1:] == b"/":
                        path = as_path(path)
                    s = stats[0]
                    parent, _, leaf = path.rpartition(b"/")
                    append((parent or b"/", leaf, f.node, s.size, type_bits.get(s.ftype, 0) | (s.fattr & 0o7777),
                            s.mtime, f.fh_info) if leaf else (b"", b"", f.node, s.size,
                                                              type_bits.get(s.ftype, 0) | (s.fattr & 0o7777),
                                                              s.mtime, f.fh_info))
                    continue
                name = _name(names)
                if name is None:
                    continue
                size, mode, mtime = _stat(stats)
                append((*split_path(as_path(name)), f.node, size, mode, mtime, f.fh_info))
        elif code == C.FH_ADD_DIR:
            paths, unix = self._paths, C.FS_UNIX
            entries = paths.entries
            for d in body.dirs:
                names, node, parent = d.names, d.node, d.parent
                if len(names) == 1 and names[0].fs_type == unix and node != parent:   # the usual entry
                    name = names[0].unix_name.encode("utf-8", "surrogateescape")
                    if name and name != b"." and b"/" not in name:
                        links = entries.get(node)
                        if links is None:
                            entries[node] = [(parent, name)]
                        else:
                            links.append((parent, name))
                        continue
                name = _name(names)
                if name is not None:
                    paths.add_dir(name, node, parent)
        else:
            paths, type_bits = self._paths, _TYPE_BITS
            entries, known, dir_path = paths.entries, paths.known, paths.dir_path
            for n in body.nodes:
                links, stats = entries.get(n.node), n.stats
                if links is not None and len(links) == 1 and len(stats) == 1:   # one name: its directory
                    parent, name = links[0]
                    above = known.get(parent) or dir_path(parent)
                    if above is not None:
                        s = stats[0]
                        rows.append((above, name, n.node, s.size, type_bits.get(s.ftype, 0) | (s.fattr & 0o7777),
                                     s.mtime, n.fh_info))
                        continue
                size, mode, mtime = _stat(stats)
                values = (n.node, size, mode, mtime, n.fh_info)
                resolved = paths.paths(n.node)
                if resolved is None:
                    paths.waiting.append((n.node, values))
                    continue
                for path in resolved:
                    rows.append((*split_path(path), *values))

    def _take_raw(self, version: int, code: int, record: bytes) -> None:
        """One undecoded post: the fast readers for v3/v4's usual entries, else the codec."""
        entries = None
        if version in (3, 4):
            reader = fh_reader(version)
            if code == C.FH_ADD_FILE:
                entries = reader.files(record)
                if entries is not None:
                    self._add_files(entries)
            elif code == C.FH_ADD_DIR:
                entries = reader.dirs(record)
                if entries is not None:
                    self._add_dirs(entries)
            elif code == C.FH_ADD_NODE:
                entries = reader.nodes(record)
                if entries is not None:
                    self._add_nodes(entries, reader)
        if entries is None:
            proto = protocol(version)
            body = _translator(version).to_internal(code, REQUEST, proto.decode_body(code, REQUEST, record))
            self._take(code, body)

    def _add_files(self, entries: list[tuple]) -> None:
        append, type_bits = self._rows.append, _TYPE_BITS
        for path, node, ftype, fattr, size, mtime, fh_info in entries:
            if path[:1] != b"/" or b"//" in path or b"/." in path or path[-1:] == b"/":
                path = as_path(path)
            parent, _, leaf = path.rpartition(b"/")
            mode = type_bits.get(ftype, 0) | (fattr & 0o7777)
            append((parent or b"/", leaf, node, size, mode, mtime, fh_info) if leaf
                   else (b"", b"", node, size, mode, mtime, fh_info))

    def _add_dirs(self, entries: list[tuple]) -> None:
        paths = self._paths
        links_of = paths.entries
        for name, node, parent in entries:
            if node != parent and name and name != b"." and b"/" not in name:
                links = links_of.get(node)
                if links is None:
                    links_of[node] = [(parent, name)]
                else:
                    links.append((parent, name))
            else:
                paths.add_dir(name, node, parent)

    def _add_nodes(self, entries: list[tuple], reader: Any) -> None:
        paths, type_bits, append = self._paths, _TYPE_BITS, self._rows.append
        links_of, known, dir_path = paths.entries, paths.known, paths.dir_path
        i_ftype, i_mtime, i_fattr, i_size = reader.i_ftype, reader.i_mtime, reader.i_fattr, reader.i_size
        for t in entries:
            node = t[-2]
            links = links_of.get(node)
            mode = type_bits.get(t[i_ftype], 0) | (t[i_fattr] & 0o7777)
            if links is not None and len(links) == 1:          # one name: its directory
                parent, name = links[0]
                above = known.get(parent) or dir_path(parent)
                if above is not None:
                    append((above, name, node, t[i_size], mode, t[i_mtime], t[-1]))
                    continue
            values = (node, t[i_size], mode, t[i_mtime], t[-1])
            resolved = paths.paths(node)
            if resolved is None:
                paths.waiting.append((node, values))
                continue
            for path in resolved:
                append((*split_path(path), *values))

    def _take_v2(self, code: int, body: Any) -> None:
        """v2's FH_ADD_UNIX_PATH/DIR/NODE: the stat carries fh_info; a path has no node."""
        def values(node: int | None, f: Any) -> tuple:
            return node, f.size, _TYPE_BITS.get(f.ftype, 0) | (f.mode & 0o7777), f.mtime, f.fh_info
        if code == V2_UNIX_PATH:
            for p in body.paths:
                path = as_path(p.name.encode("utf-8", "surrogateescape"))
                self._rows.append((*split_path(path), *values(None, p.fstat)))
        elif code == V2_UNIX_DIR:
            for d in body.dirs:
                self._paths.add_dir(d.name.encode("utf-8", "surrogateescape"), d.node, d.parent)
        else:
            for n in body.nodes:
                resolved = self._paths.paths(n.node)
                if resolved is None:
                    self._paths.waiting.append((n.node, values(n.node, n.fstat)))
                    continue
                for path in resolved:
                    self._rows.append((*split_path(path), *values(n.node, n.fstat)))

    def _resolve_waiting(self) -> None:
        """At the end, the nodes that came before their names (not on each DIR post: with all
        nodes first that would be quadratic)."""
        waiting, self._paths.waiting = self._paths.waiting, []
        for node, values in waiting:
            resolved = self._paths.paths(node)
            if resolved is None:
                self.unresolved += 1
                continue
            for path in resolved:
                self._rows.append((*split_path(path), *values))
        if self.unresolved:
            log.warning("catalog: %d file history nodes had no directory entry", self.unresolved)
