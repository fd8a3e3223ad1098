"""A change journal for one volume: which directories changed since a time, from fanotify.

A lean replication update (dump.py) walks the whole tree to find what changed: ~2.8 µs a
file, seconds at a million files. The journal watches the volume's filesystem
(``FAN_MARK_FILESYSTEM``, ``FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID``:
the directory and the object of every event) and remembers, per
directory file handle, when something last changed in it: a create, delete or rename of a
name in it, a write or attribute change (chmod, chown, times, xattrs) of a file in it or of
the directory itself. Handles are resolved to paths only when asked (open_by_handle_at on
the volume's root), so renames of directories after the event still give today's path.

It answers ``changed_since(base_ns)`` only when it can prove it saw everything since the
base: it was watching before ``base_ns``, never lost events since (``FAN_Q_OVERFLOW`` or a
read error resets it), and no changed file has more than one link (its other names live in
directories it cannot name). Otherwise the answer is None and the dump walks. Writes
through a shared mmap are not reported by fanotify; a volume written that way must not
use the journal.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import stat
import struct
import threading
import time
from pathlib import Path

from construct import Int8ul, Int16ul, Int32sl, Int32ul, Int64ul, Struct

log = logging.getLogger("ndmpd.engine.journal")

# fanotify_init flags, event bits, info types (linux/fanotify.h)
FAN_CLOEXEC, FAN_NONBLOCK = 0x1, 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_FID, FAN_REPORT_DFID_NAME, FAN_REPORT_TARGET_FID = 0x200, 0xC00, 0x1000
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_MODIFY, FAN_ATTRIB, FAN_CLOSE_WRITE = 0x2, 0x4, 0x8
FAN_MOVED_FROM, FAN_MOVED_TO, FAN_CREATE, FAN_DELETE = 0x40, 0x80, 0x100, 0x200
FAN_DELETE_SELF, FAN_MOVE_SELF = 0x400, 0x800
FAN_Q_OVERFLOW, FAN_ONDIR = 0x4000, 0x40000000
WATCHED = (FAN_MODIFY | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE
           | FAN_DELETE | FAN_DELETE_SELF | FAN_MOVE_SELF | FAN_ONDIR)
INFO_FID, INFO_DFID_NAME, INFO_DFID = 1, 2, 3
METADATA_VERSION = 3

EventMetadata = Struct("event_len" / Int32ul, "vers" / Int8ul, "reserved" / Int8ul,
                       "metadata_len" / Int16ul, "mask" / Int64ul, "fd" / Int32sl, "pid" / Int32sl)
InfoHeader = Struct("info_type" / Int8ul, "pad" / Int8ul, "len" / Int16ul)
InfoFid = Struct("hdr_type" / Int8ul, "hdr_pad" / Int8ul, "hdr_len" / Int16ul, "fsid0" / Int32sl, "fsid1" / Int32sl,
                 "handle_bytes" / Int32ul, "handle_type" / Int32sl)     # then f_handle, then a name


def _flat(layout: Struct) -> struct.Struct:
    """The layout as a ``struct.Struct``, unpacked in place (as send_stream.py does: construct's
    interpreter per event would cost more than the events)."""
    return struct.Struct("<" + "".join(field.fmtstr.lstrip("<") for field in layout.subcons))


_META, _INFO_HDR, _INFO_FID = _flat(EventMetadata), _flat(InfoHeader), _flat(InfoFid)
_HANDLE_HEAD = struct.Struct("<Ii")                         # struct file_handle without f_handle
_BUFFER = 256 * 1024
MAX_REMEMBERED = 1_000_000      # handles kept (the mark covers the whole filesystem); past it the
                                # journal forgets and proves nothing until a new base


class JournalUnavailable(OSError):
    """fanotify cannot watch this volume (not root, kernel or filesystem without support)."""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    return libc


class ChangeJournal:
    """Watches one volume's filesystem from :meth:`start` to :meth:`stop` (a reader thread)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.realpath(root))
        self._root_b = os.fsencode(self.root)
        self._lock = threading.Lock()
        self._changed: dict[bytes, int] = {}      # directory handle (type + bytes) -> last event ns
        self._files: dict[bytes, int] = {}        # changed non-directory handle -> last event ns
        self._since_ns: int | None = None         # watching without loss since then (None: not)
        self._fd = -1
        self._mount_fd = -1
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1
        self._libc = _libc()

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin watching; raises JournalUnavailable when fanotify cannot."""
        libc = self._libc
        fd = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME | FAN_REPORT_FID
                                | FAN_REPORT_TARGET_FID,
                                os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise JournalUnavailable(err, f"fanotify_init: {os.strerror(err)} (the journal needs root)")
        if libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, WATCHED, -1, self._root_b) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise JournalUnavailable(err, f"fanotify_mark {self.root}: {os.strerror(err)}")
        self._fd = fd
        self._mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe()
        with self._lock:
            self._since_ns = time.time_ns()       # the mark is in place: nothing from here on is missed
        self._thread = threading.Thread(target=self._run, name=f"journal {self.root}", daemon=True)
        self._thread.start()
        log.info("change journal watching %s", self.root)

    def stop(self) -> None:
        """Stop watching; later questions get None."""
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            self._since_ns = None
            for fd in (self._fd, self._mount_fd, self._stop_r, self._stop_w):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._mount_fd = self._stop_r = self._stop_w = -1

    @property
    def watching_since(self) -> int | None:
        return self._since_ns

    # -- events ----------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        stop_r = self._stop_r               # stop() sets the attribute to -1 when it closes the pipe
        poller.register(stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if stop_r in ready:
                return
            with self._lock:
                if self._fd < 0:            # stop() gave up waiting and closed the descriptors:
                    return                  # polling their numbers now would spin (or watch another's)
                self._drain()

    def _drain(self) -> None:
        """Read every queued event (fsnotify queues them within the syscall that made them, so
        after this returns, all changes made before the call are counted). Caller holds the lock."""
        while True:
            try:
                data = os.read(self._fd, _BUFFER)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(f"read error: {exc}")
                return
            if not data:
                return
            self._parse(data, time.time_ns())

    def _lose(self, why: str) -> None:
        log.warning("change journal %s lost events (%s); updates walk until it has seen a whole one", self.root, why)
        self._changed.clear()
        self._files.clear()
        self._since_ns = time.time_ns()

    def _parse(self, data: bytes, now: int) -> None:
        pos, end = 0, len(data)
        while pos + _META.size <= end:
            event_len, vers, _, meta_len, mask, fd, _pid = _META.unpack_from(data, pos)
            if vers != METADATA_VERSION or event_len < meta_len or pos + event_len > end:
                self._lose(f"unexpected event record (version {vers})")
                return
            if fd >= 0:
                os.close(fd)
            if mask & FAN_Q_OVERFLOW:
                self._lose("queue overflow")
            else:
                self._event(data, pos + meta_len, pos + event_len, mask, now)
            pos += event_len
        if len(self._changed) + len(self._files) > MAX_REMEMBERED:
            self._lose(f"more than {MAX_REMEMBERED} changed objects to remember")

    def _event(self, data: bytes, pos: int, end: int, mask: int, now: int) -> None:
        on_dir = bool(mask & FAN_ONDIR)
        while pos + _INFO_HDR.size <= end:
            info_type, _, length = _INFO_HDR.unpack_from(data, pos)
            if length < _INFO_FID.size or pos + length > end:
                return
            _, _, _, _, _, handle_bytes, handle_type = _INFO_FID.unpack_from(data, pos)
            start = pos + _INFO_FID.size
            handle = _HANDLE_HEAD.pack(handle_bytes, handle_type) + data[start:start + handle_bytes]
            if info_type in (INFO_DFID_NAME, INFO_DFID):
                self._changed[handle] = now           # the directory the name is in
            elif info_type == INFO_FID:
                (self._changed if on_dir else self._files)[handle] = now   # the object itself
            pos += length

    # -- questions -------------------------------------------------------------------------

    def changed_since(self, base_ns: int) -> set[bytes] | None:
        """Directories (paths relative to the volume, b"" its root) in which something changed
        at or after ``base_ns``; None when that cannot be proved (the dump then walks)."""
        with self._lock:
            if self._fd < 0 or self._since_ns is None or self._since_ns >= base_ns:
                return None
            self._drain()
            if self._since_ns >= base_ns:
                return None
            dirs = [h for h, t in self._changed.items() if t >= base_ns]
            files = [h for h, t in self._files.items() if t >= base_ns]
            found: set[bytes] = set()
            for handle in files:
                where = self._resolve(handle, file=True)
                if where is _UNPROVABLE:
                    return None
                if where is not None:
                    found.add(where)                  # the directory the file is in now
            for handle in dirs:
                where = self._resolve(handle, file=False)
                if where is _UNPROVABLE:
                    return None
                if where is not None:
                    found.add(where)
            return found

    def _resolve(self, handle: bytes, file: bool) -> "bytes | None | object":
        """The volume-relative path of a directory handle, or of a file handle's directory;
        None when it is gone or outside the volume; _UNPROVABLE for a file with several names,
        or when the path the kernel gives does not lead back to it (a disconnected dentry)."""
        fd = self._libc.open_by_handle_at(self._mount_fd, handle, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
        if fd < 0:
            err = ctypes.get_errno()
            if err in (errno.ESTALE, errno.ENOENT):
                return None                           # deleted: its parent's delete event covers it
            raise OSError(err, f"open_by_handle_at: {os.strerror(err)}")
        try:
            st = os.fstat(fd)
            if file and not stat.S_ISDIR(st.st_mode):
                if st.st_nlink > 1:
                    return _UNPROVABLE
                if st.st_nlink == 0:
                    return None
            path = os.readlink(b"/proc/self/fd/%d" % fd)
        finally:
            os.close(fd)
        if path.endswith(b" (deleted)") and not os.path.lexists(path):
            return None
        try:
            here = os.lstat(path)
        except OSError:
            here = None
        if here is None or (here.st_dev, here.st_ino) != (st.st_dev, st.st_ino):
            return _UNPROVABLE              # moved meanwhile, or a dentry not connected to its parents
        if file and not stat.S_ISDIR(st.st_mode):
            path = os.path.dirname(path)
        if path == self._root_b:
            return b""
        if not path.startswith(self._root_b + b"/"):
            return None
        return path[len(self._root_b) + 1:]


_UNPROVABLE = object()


def start_journals(volumes: "list[tuple[str, Path]]") -> dict[str, ChangeJournal]:
    """A started journal per (name, path); one fanotify cannot watch is left out with a
    warning (not root, or its filesystem gives no file handles): that volume's updates walk."""
    journals = {}
    for name, path in volumes:
        journal = ChangeJournal(path)
        try:
            journal.start()
        except (JournalUnavailable, OSError) as exc:
            log.warning("volume %s: journal = true, but %s; its replication updates walk the tree", name, exc)
            continue
        journals[name] = journal
    return journals


def stop_journals(journals: dict[str, ChangeJournal]) -> None:
    for journal in journals.values():
        journal.stop()
