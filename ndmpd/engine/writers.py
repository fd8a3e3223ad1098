"""Writer processes for a restore: they create, fill and close regular files while the restore
parses the stream ahead.

Why processes and not threads: a restore's per-file work is a handful of system calls (openat,
write, fchmod, futimens, close), each releasing the GIL and wanting it back when it returns. A
writer thread next to a parser that always holds the GIL waits a whole switch interval (5 ms)
after each call, so a thread pool is slower than doing it inline. Each writer process has its own
interpreter: the parser's core runs Python while the writers' cores run the kernel's copies.

The file data goes through one shared ring (a memfd both sides map): the restore's stream reader
reads the stream straight into it (it is the reader's buffer, :meth:`StreamReader.adopt`), lends
each file's data where it lies and sends a small descriptor; the writer writes it from there, and
the reader reads over it only once the writer has reported the file.
Each writer reaches the file's directory from the target's fd one component at a time with
O_NOFOLLOW (the same :class:`Target` walk), so nothing it does can leave the target either. A file
goes to the writer its name hashes to, so two members with the same path are written in stream
order by one writer. What a writer cannot settle alone (a directory in the way of a file) comes
back to the restore, which handles it in stream order with the pool idle.
"""

from __future__ import annotations

import marshal
import mmap
import os
import select
import stat
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from . import xattrs
from .report import failure_of

RING_SIZE = 32 << 20
MAX_ITEM = 4 << 20              # larger files are written inline (they stream; no gain in copying)
MAX_IN_FLIGHT = 4096            # files sent and not yet reported (empty files use no ring space)
BATCH = 48                      # files per message to a writer
_MARSHAL = 2                    # messages are marshalled (plain tuples of ints and bytes, between two
                                # processes of this interpreter): version 2 keeps no table of shared
                                # objects: 2,000 instructions a file's descriptor, pickling 3,400
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

class WritersFailed(OSError):
    """A writer process ended before reporting what it was sent: the restore cannot go on."""


# what a writer reports for one file (besides its warnings)
WRITTEN, KEPT, AS_NEW, DIRECTORY, FAILED = range(5)


# One regular file for a writer, as a plain tuple (made and marshalled per file, so no class):
# (seq, parent parts, name, ring offset, size, mode, settled, uid, gid, mtime_ns, xattrs or None);
# settled: created with its final mode and owner, so no fchown/fchmod; uid -1: owners not restored.
FileSpec = tuple


@dataclass(slots=True)
class Outcome:
    """What became of one file sent to a writer."""

    seq: int
    code: int = WRITTEN
    text: str = ""              # FAILED: why
    kind: str = ""              # FAILED: the failure's kind (report.py)
    warnings: tuple[str, ...] = ()
    data: bytes = b""           # DIRECTORY: the file's data, for the restore to write itself
    ticket: Any = None          # what the restore handed in with the file (submit)


def apply_file_metadata(fd: int, mode: int, settled: bool, uid: int, gid: int, mtime_ns: int,
                        xattr_list: list | None) -> list[str]:
    """Owner, mode, xattrs and time of a file just written through ``fd`` (the restore's inline
    path and the writers share this); returns the xattr warnings."""
    if not settled:
        if uid >= 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    messages = list(xattrs.apply(fd, xattr_list)) if xattr_list else []
    os.utime(fd, ns=(mtime_ns, mtime_ns))
    return messages


class WriterPool:
    """``workers`` writer processes restoring regular files below the directory ``root_fd``."""

    def __init__(self, root_fd: int, workers: int, policy: str, ring_size: int = RING_SIZE) -> None:
        self.ring_size = ring_size
        self.max_item = min(MAX_ITEM, ring_size // 4)
        self._memfd = os.memfd_create("ndmpd-restore-ring", os.MFD_CLOEXEC)
        os.ftruncate(self._memfd, ring_size)
        self._ring = mmap.mmap(self._memfd, ring_size)
        self.view = memoryview(self._ring)
        self._lent: deque[tuple[int, int]] = deque()      # (seq, ring offset) of lent data, in order
        self._finished: set[int] = set()                  # reported, lent, not yet at the front
        self._sent: dict[int, tuple] = {}       # seq -> (ring offset, size, path, ticket), in flight
        self._procs: list[subprocess.Popen] = []
        self._commands: list[Connection] = []
        self._results: list[Connection] = []
        self._pending: list[list[tuple]] = []
        self._forget = [False] * workers
        self._outcomes: list = []               # an Outcome, or a bare ticket: written, no warnings
        self._workers = workers
        self.in_flight: dict[tuple[bytes, ...], int] = {}   # path -> files sent there, not reported
        self._count = 0
        self._poll = select.poll()              # the result pipes (one poll object: no per-call set-up)
        self._by_fd: dict[int, Connection] = {}
        try:
            for _ in range(workers):
                self._spawn(root_fd, policy)
        except BaseException:
            self.close(abort=True)
            raise

    def _spawn(self, root_fd: int, policy: str) -> None:
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ndmpd.engine.writers", str(root_fd), str(self._memfd),
                 str(cmd_r), str(res_w), policy],
                pass_fds=(root_fd, self._memfd, cmd_r, res_w), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL)
        except BaseException:
            for fd in (cmd_r, cmd_w, res_r, res_w):
                os.close(fd)
            raise
        os.close(cmd_r)
        os.close(res_w)
        self._procs.append(proc)
        self._commands.append(Connection(cmd_w, readable=False))
        self._results.append(Connection(res_r, writable=False))
        self._by_fd[res_r] = self._results[-1]
        self._poll.register(res_r, select.POLLIN)
        self._pending.append([])

    @property
    def busy(self) -> bool:
        """Files are in flight."""
        return self._count > 0

    @property
    def reported(self) -> bool:
        """Outcomes are waiting to be taken."""
        return bool(self._outcomes)

    def conflicts(self, parts: tuple[bytes, ...]) -> bool:
        """Whether a file in flight is at ``parts`` or at a directory above it."""
        in_flight = self.in_flight
        return bool(in_flight) and any(parts[:depth] in in_flight for depth in range(1, len(parts) + 1))

    # -- the reader's Lender: what of the ring it may read into --------------------------------

    def limit(self, position: int) -> int:
        """The start of the oldest lent region at or after ``position``, else the ring's end
        (lent regions behind ``position`` were lent in this lap of the ring)."""
        if self._lent:
            oldest = self._lent[0][1]
            if oldest >= position:
                return oldest
        return self.ring_size

    def wait(self) -> None:
        self._wait(block=True)

    def submit(self, spec: FileSpec, path: tuple[bytes, ...], ticket: tuple) -> bool:
        """Send one file (to be at ``path``) whose data the reader lent at its ring offset;
        True when outcomes are waiting to be taken (``reported``). Its outcome carries
        ``ticket`` back (a file written without a warning reports as the bare ticket, a tuple)."""
        seq, name, offset, size = spec[0], spec[2], spec[3], spec[4]
        if size:
            self._lent.append((seq, offset))
        self._sent[seq] = (offset, size, path, ticket)
        in_flight = self.in_flight
        in_flight[path] = in_flight.get(path, 0) + 1
        self._count += 1
        which = hash(name) % self._workers
        batch = self._pending[which]
        batch.append(spec)
        if len(batch) >= BATCH:
            self._send(which)
            self._wait(block=False)
        while self._count >= MAX_IN_FLIGHT:
            self._wait(block=True)
        return bool(self._outcomes)

    def outcomes(self) -> list:
        """What the writers have reported since the last call (without waiting)."""
        self._wait(block=False)
        done, self._outcomes = self._outcomes, []
        return done

    def drain(self) -> list:
        """Send everything, wait until every file is reported; the writers then drop their
        directory fds before their next file (the restore may change the tree meanwhile)."""
        for which in range(len(self._commands)):
            self._send(which)
        while self._count:
            self._wait(block=True)
        self._forget = [True] * len(self._commands)
        done, self._outcomes = self._outcomes, []
        return done

    def _send(self, which: int) -> None:
        batch = self._pending[which]
        if batch or self._forget[which]:
            try:
                self._commands[which].send_bytes(marshal.dumps((self._forget[which], batch), _MARSHAL))
            except OSError:
                raise WritersFailed(self._death()) from None
            self._forget[which] = False
            self._pending[which] = []

    def _wait(self, block: bool) -> None:
        if block:
            for which in range(len(self._commands)):     # never wait for what was not sent
                self._send(which)
        by_fd = self._by_fd
        for fd, _ in self._poll.poll(None if block else 0):
            conn = by_fd[fd]
            try:
                reports = marshal.loads(conn.recv_bytes())
            except (EOFError, OSError):
                raise WritersFailed(self._death()) from None
            for report in reports:
                self._settle(report)

    def _settle(self, report: tuple | int) -> None:
        """One file's report: its path is no longer in flight, its ring space comes back."""
        if report.__class__ is int:
            seq = report
            offset, size, path, ticket = self._sent.pop(seq)
            self._outcomes.append(ticket)
        else:
            outcome = Outcome(*report)
            seq = outcome.seq
            offset, size, path, outcome.ticket = self._sent.pop(seq)
            if outcome.code == DIRECTORY:
                outcome.data = bytes(self.view[offset:offset + size])
            self._outcomes.append(outcome)
        in_flight = self.in_flight
        left = in_flight[path] - 1
        if left:
            in_flight[path] = left
        else:
            del in_flight[path]
        self._count -= 1
        if size:
            lent = self._lent
            if lent[0][0] == seq:
                lent.popleft()
                finished = self._finished
                while lent and lent[0][0] in finished:
                    finished.discard(lent.popleft()[0])
            else:
                self._finished.add(seq)

    def _death(self) -> str:
        """Why the writers cannot go on: which one ended, and how (a dying one gets a moment)."""
        for patience in (0, 1):
            for proc in self._procs:
                try:
                    status = proc.wait(timeout=patience) if patience else proc.poll()
                except subprocess.TimeoutExpired:
                    continue
                if status is not None:
                    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
                    return f"a restore writer process (pid {proc.pid}) ended ({how}) with files unwritten"
        return "a restore writer process closed its pipe with files unwritten"

    def close(self, abort: bool = False) -> None:
        """Stop the writers: after what was sent (unless ``abort``, which kills them at once)."""
        for conn in self._commands:
            try:
                conn.close()
            except OSError:
                pass
        for proc in self._procs:
            if abort:
                proc.kill()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self._results:
            conn.close()
        self._procs, self._commands, self._results = [], [], []
        self.view.release()
        try:
            self._ring.close()
        except BufferError:             # a view of it is still held somewhere: it closes with it
            pass
        os.close(self._memfd)


# -- the writer process ----------------------------------------------------------------------


def _write_one(target, ring: memoryview, policy: str, item: tuple) -> tuple | int:
    """One file, created new (the existing-file policy settles what is there); the report is
    the bare seq when all went well."""
    seq, parent, name, offset, size, mode, settled, uid, gid, mtime_ns, xattr_list = item
    fd = -1
    try:
        dir_fd = target.cached(parent)
        if dir_fd is None:
            dir_fd = target.directory(parent, create=False)
        create_mode = mode if settled else 0o600
        try:
            fd = os.open(name, NEW_FILE, create_mode, dir_fd=dir_fd)
        except FileExistsError:
            existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(existing.st_mode):
                return (seq, DIRECTORY)
            if policy == "keep":
                return (seq, KEPT)
            if policy == "newer" and existing.st_mtime_ns >= mtime_ns:
                return (seq, AS_NEW)
            os.unlink(name, dir_fd=dir_fd)
            fd = os.open(name, NEW_FILE, create_mode, dir_fd=dir_fd)
        try:
            data = ring[offset:offset + size]
            while data:
                data = data[os.write(fd, data):]
            if settled and not xattr_list:          # the usual file: only its time is left
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                warnings = None
            else:
                warnings = apply_file_metadata(fd, mode, settled, uid, gid, mtime_ns, xattr_list)
        except BaseException:
            os.close(fd)
            fd = -1
            os.unlink(name, dir_fd=dir_fd)          # never a half-written file under its name
            raise
        os.close(fd)
        return (seq, WRITTEN, "", "", tuple(warnings)) if warnings else seq
    except Exception as exc:
        failure = failure_of(exc)
        return (seq, FAILED, failure.text, failure.kind)


def _serve(root_fd: int, mem_fd: int, cmd_fd: int, res_fd: int, policy: str) -> None:
    from .target import Target
    ring_map = mmap.mmap(mem_fd, 0, prot=mmap.PROT_READ)
    ring = memoryview(ring_map)
    target = Target.at(root_fd)
    commands = Connection(cmd_fd, writable=False)
    results = Connection(res_fd, readable=False)
    while True:
        try:
            forget, batch = marshal.loads(commands.recv_bytes())
        except EOFError:
            return
        if forget:
            target.forget()
        results.send_bytes(marshal.dumps([_write_one(target, ring, policy, item) for item in batch], _MARSHAL))


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
