"""A second process for an incremental's walk: it lists and stats directories the dump hands it.

A level 1 of a tree where little changed is one ``lstat`` per entry and nothing else, and in
CPython most of that is the interpreter's work around the system call (building a
``stat_result``), on one core. The dump hands every other directory it will list for changes
(not one taken whole) to this helper, on the other core, which lists it, lstats each name and
answers with the names in the dump's order, each marked ``D`` (a directory), ``Y`` (changed at
or after the base) or ``N`` (unchanged). The dump lstats again only what it writes (the ``D``
and ``Y`` entries: the directories and the few changed files) and takes an ``N`` as it is, so
its stream is byte for byte the one it writes alone; the helper only decides which names are
unchanged files, by the very test the dump applies.

The helper works on the request the dump will reach first (the smallest path in walk order,
which for names sorted as bytes is the order of their component tuples), checks that the
directory it opened is the one the dump saw (device and inode), and refuses anything else;
its answer carries the directory's stamp (dirid.py), and the dump takes it only if the
directory it opened itself has that stamp (not another one given the same inode number);
a refusal, a helper that dies or one that cannot start makes the dump list that directory
itself. It ends when the dump closes its request pipe (end of the dump, abort, or the dump's
death). Started with ``posix_spawn`` (no fork of a threaded server) as ``python -I -S``,
importing nothing of the package but this module and dirid.py: its start-up is the
interpreter's alone.

Until its first answer (the interpreter's start, ~20 ms) the dump does not wait for it: it
lists a directory asked for itself and withdraws the request; so a small incremental is never
slower than the dump alone, and a large one hands over what comes after the start.

Wire (both ways, ``\\0``-separated, names never hold a ``\\0``): a request is ``INO DEV PATH``
(INO 0: withdrawn); an answer is ``PATH STAMP LENGTH`` (STAMP empty when the file system gives
none) and then LENGTH bytes: the positions of the
``D`` and ``Y`` entries (space-separated) and the entries, ``\\0``-joined; LENGTH -1 for a
refusal. With the positions the dump finds what it stats again without a look at each name.
"""

from __future__ import annotations

import heapq
import os
import select
import sys
import time

from .dirid import Stamper, same

TYPE_CHECKING = False              # (not typing's: the helper process imports nothing it does not use)
if TYPE_CHECKING:
    import threading

_S_IFMT, _S_IFDIR = 0o170000, 0o040000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC   # target.DIR_FLAGS
_CHUNK = 1 << 20
MAX_WAITING = 4096      # directories asked for and not yet taken: beyond it the dump lists its own
_POLL = 0.2             # seconds between looks at the job's cancel event while waiting for an answer
_REFUSED = b"-1"


def sorted_names(fd: int) -> list[bytes]:
    """A directory's names as bytes, sorted: listed through its /proc/self/fd link, which gives
    bytes straight away (a listing of the fd itself gives str, and encoding each name back
    costs more than the lstat that follows); without /proc, the fd's own listing."""
    try:
        names = os.listdir(b"/proc/self/fd/%d" % fd)
    except (FileNotFoundError, NotADirectoryError, PermissionError):     # no /proc (or not ours)
        names = [os.fsencode(name) for name in os.listdir(fd)]
    names.sort()
    return names


def classify(fd: int, since: int) -> tuple[list[bytes], list[int], list[os.stat_result]]:
    """A directory's entries in name order, each ``D`` (a directory), ``Y`` (a file changed at or
    after ``since``) or ``N`` (unchanged) + name; the positions of the D and Y ones, and their
    lstat. One loop for the dump and the helper: both decide by this very test."""
    lstat = os.lstat
    entries: list[bytes] = []
    wanted: list[int] = []
    stats: list[os.stat_result] = []
    add = entries.append
    for name in sorted_names(fd):
        try:
            st = lstat(name, dir_fd=fd)
        except FileNotFoundError:
            continue                           # gone before its lstat: not listed
        if st.st_mode & _S_IFMT == _S_IFDIR:
            code = b"D"
        elif st.st_mtime_ns >= since or st.st_ctime_ns >= since:
            code = b"Y"
        else:
            add(b"N" + name)
            continue
        wanted.append(len(entries))
        stats.append(st)
        add(code + name)
    return entries, wanted, stats


class Answer(list):
    """The helper's answer for a directory: its entries as :func:`classify` lists them, and in
    ``wanted`` the positions of the ``D`` and ``Y`` ones (those the dump stats again)."""

    __slots__ = ("wanted",)

    def __init__(self, entries: list[bytes], wanted: list[int]) -> None:
        super().__init__(entries)
        self.wanted = wanted

    @classmethod
    def parse(cls, body: bytes) -> "Answer":
        fields = body.split(b"\0")
        return cls(fields[1:], [int(at) for at in fields[0].split()])


class StatHelper:
    """The dump's side: asks the helper for directories, takes its answers in walk order."""

    def __init__(self, root_fd: int, since_ns: int, cancel: "threading.Event") -> None:
        self._root_fd = root_fd
        self._since = since_ns
        self._cancel = cancel
        self._pid = 0
        self._requests = self._replies = -1
        self._failed = False
        self._answers: dict[bytes, tuple[int | None, Answer] | None] = {}
        self._waiting: set[bytes] = set()
        self._withdrawn: set[bytes] = set()   # taken back while it started: its answer is dropped
        self._answering = False               # it has answered once: from then on the dump waits
        self._buffer = bytearray()

    def ask(self, rel: bytes, ino: int, dev: int) -> bool:
        """Ask for directory ``rel`` (inode ``ino`` on ``dev``); False: list it yourself."""
        if self._failed or len(self._waiting) >= MAX_WAITING or (not self._pid and not self._start()):
            return False
        try:
            os.write(self._requests, b"%d\0%d\0%s\0" % (ino, dev, rel))
        except OSError:
            self._give_up()
            return False
        self._waiting.add(rel)
        return True

    @property
    def pid(self) -> int:
        """The helper's process id (0 before it starts and once it is reaped)."""
        return self._pid

    def asked(self, rel: bytes) -> bool:
        return rel in self._waiting

    def take(self, rel: bytes, stamp: int | None = None) -> Answer | None:
        """The entries of a directory asked for (``D``/``Y``/``N`` + name, sorted by name), or
        None when the dump is to list it itself (refused, helper gone, job cancelled, the
        directory the helper listed has not the ``stamp`` of the one the dump opened, or the
        helper still starting: a small tree is done before an interpreter starts, and the dump
        never waits longer than it would take alone for that)."""
        self._waiting.discard(rel)
        if rel not in self._answers and not self._failed:
            self._receive(wait=False)              # what has come in already
        while rel not in self._answers:
            if self._failed:
                return None
            if not self._answering:
                self._withdraw(rel)
                return None
            if not self._receive(wait=True):
                return None
        answer = self._answers.pop(rel)
        if answer is None or not same(stamp, answer[0]):
            return None
        return answer[1]

    def ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the helper's first answer (for a caller that would
        rather wait than list alone: the tests); True once it answers."""
        deadline = time.monotonic() + timeout
        while not self._answering and not self._failed and time.monotonic() < deadline:
            if not self._receive(wait=False):
                time.sleep(0.01)
        return self._answering

    def _withdraw(self, rel: bytes) -> None:
        self._withdrawn.add(rel)
        try:
            os.write(self._requests, b"0\x000\x00%s\x00" % rel)     # inode 0: never a directory's
        except OSError:
            self._give_up()

    def _receive(self, wait: bool) -> bool:
        """Read what the helper sent and file its complete answers; False: nothing came (or
        nothing will: cancelled, helper gone)."""
        poll = select.poll()              # (a server's fds can lie beyond select's reach)
        poll.register(self._replies, select.POLLIN)
        while not poll.poll(_POLL * 1000 if wait else 0):
            if not wait or self._cancel.is_set():
                return False
        try:
            data = os.read(self._replies, _CHUNK)
        except OSError:
            data = b""
        if not data:
            self._give_up()
            return False
        buffer = self._buffer
        buffer += data
        while True:
            head = buffer.find(b"\0")
            stamp_end = buffer.find(b"\0", head + 1) if head >= 0 else -1
            mid = buffer.find(b"\0", stamp_end + 1) if stamp_end >= 0 else -1
            if mid < 0:
                return True
            rel, length = bytes(buffer[:head]), bytes(buffer[stamp_end + 1:mid])
            stamp = int(buffer[head + 1:stamp_end]) if stamp_end > head + 1 else None
            end = mid + 1 + (int(length) if length != _REFUSED else 0)
            if len(buffer) < end:
                return True
            self._answering = True
            if rel in self._withdrawn:
                self._withdrawn.discard(rel)
            elif length == _REFUSED:
                self._answers[rel] = None
            else:
                self._answers[rel] = (stamp, Answer.parse(bytes(buffer[mid + 1:end])))
            del buffer[:end]

    def _start(self) -> bool:
        import fcntl
        if not sys.executable:             # embedded without an interpreter to run: list alone
            self._failed = True
            return False
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; sys.path.insert(0, {here!r}); "
                "from ndmpd.engine.stat_helper import serve; serve(int(sys.argv[1]))")
        request_r, request_w = os.pipe2(os.O_CLOEXEC)
        reply_r, reply_w = os.pipe2(os.O_CLOEXEC)
        # copies above 2 and 3, so no dup2 below overwrites a source before it is copied
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (request_r, reply_w, self._root_fd)]
        try:
            self._pid = os.posix_spawn(
                sys.executable, [sys.executable, "-I", "-S", "-c", code, str(self._since)], os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, high[0], 0), (os.POSIX_SPAWN_DUP2, high[1], 1),
                              (os.POSIX_SPAWN_DUP2, high[2], 3)])
        except OSError:
            os.close(request_w)
            os.close(reply_r)
            self._failed = True
            return False
        finally:
            for fd in (*high, request_r, reply_w):
                os.close(fd)
        self._requests, self._replies = request_w, reply_r
        return True

    def _give_up(self) -> None:
        self._failed = True
        self._waiting.clear()

    def stop(self) -> None:
        """End the helper and reap it; idempotent."""
        for fd in (self._requests, self._replies):
            if fd >= 0:
                os.close(fd)
        self._requests = self._replies = -1
        if self._pid:
            try:
                os.kill(self._pid, 9)          # what it is doing is no longer wanted (it writes
                                               # nothing; and a stopped process ignores SIGTERM)
                os.waitpid(self._pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self._pid = 0
        self._failed = True


# -- the helper process ------------------------------------------------------------------


class _Stopped(Exception):
    """The dump closed its end."""


class _Server:
    """Answers the dump's requests (fd 0) on fd 1, listing under the root (fd 3)."""

    def __init__(self, since: int) -> None:
        self._since = since
        self._pending: list[tuple[list[bytes], bytes, int, int]] = []
        self._withdrawn: set[bytes] = set()
        self._buffer = b""
        self._stamper = Stamper()
        os.set_blocking(1, False)

    def run(self) -> None:
        try:
            while True:
                if not self._pending:
                    self._read()               # nothing to do until the dump asks
                elif select.select([0], [], [], 0)[0]:
                    self._read()
                if self._pending:
                    _, rel, ino, dev = heapq.heappop(self._pending)
                    if rel in self._withdrawn:
                        self._withdrawn.discard(rel)   # the dump listed it itself
                    else:
                        self._send(rel + b"\0" + self._answer(rel, ino, dev))
        except (_Stopped, BrokenPipeError):
            return

    def _read(self) -> None:
        data = os.read(0, _CHUNK)
        if not data:
            raise _Stopped
        fields = (self._buffer + data).split(b"\0")
        self._buffer = b""
        whole = len(fields) - 1 - (len(fields) - 1) % 3        # complete requests' fields
        self._buffer = b"\0".join(fields[whole:])
        for at in range(0, whole, 3):
            rel, ino = fields[at + 2], int(fields[at])
            if ino == 0:
                self._withdrawn.add(rel)
            else:
                heapq.heappush(self._pending, (rel.split(b"/"), rel, ino, int(fields[at + 1])))

    def _send(self, data: bytes) -> None:
        """Write an answer, reading requests meanwhile (neither side ever blocks the other)."""
        view = memoryview(data)
        while view:
            readable, writable, _ = select.select([0], [1], [])
            if readable:
                self._read()
            if writable:
                try:
                    view = view[os.write(1, view):]
                except BlockingIOError:
                    pass

    def _answer(self, rel: bytes, ino: int, dev: int) -> bytes:
        fd = 3
        try:
            for part in rel.split(b"/"):
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if fd != 3:
                    os.close(fd)
                fd = child
            seen = os.fstat(fd)
            if seen.st_ino != ino or seen.st_dev != dev:
                return b"\0" + _REFUSED + b"\0"   # not the directory the dump saw there
            stamp = self._stamper(fd, dev)
            entries, wanted, _ = classify(fd, self._since)
        except OSError:
            return b"\0" + _REFUSED + b"\0"       # the dump lists it, and meets the error itself
        finally:
            if fd != 3:
                os.close(fd)
        body = b"\0".join([b" ".join([b"%d" % at for at in wanted]), *entries])
        return b"%s\0%d\0%s" % (b"" if stamp is None else b"%d" % stamp, len(body), body)


def serve(since: int) -> None:
    """The helper's entry point (see StatHelper._start)."""
    _Server(since).run()
