"""The dump: walk a (snapshot) tree and write it as a pax stream.

One ``lstat`` per entry (names listed once, as raw bytes, relative to the directory fd), every
open relative to its directory fd with O_NOFOLLOW, data by ``sendfile`` or one ``preadv``
into the sink's buffer. Directories are written before their contents, each with a GNU
dumpdir (the names it holds), so an incremental restore reproduces deletions and renames;
GNU tar reads the same records with ``-G``.

A lean incremental (``DumpOptions.lean``: a replication update, applied onto the very tree
of its base) writes a directory's dumpdir only when the directory itself changed since the
base (its ctime moved, or it is new or renamed per the base's index): a create, delete or
rename in a directory always moves its ctime, so an unchanged one has nothing to replay. It
still descends into every directory for the files that changed; an unchanged directory that
holds some gets a header without a dumpdir (its times come back after the replay of those
files touched it), and one that holds none is not written at all. The bytes then follow the
change, not the tree. Tape images are never lean: every directory is listed, as GNU tar's
listed-incremental format expects.

With ``DumpOptions.changed_dirs`` (a change journal's answer: journal.py) a lean dump does
not walk at all: it lists only those directories, opens just the names on the way to them,
takes new directories whole, and builds the next held directory index from the base's plus
what it listed (a directory it did not list has the same names as at the base).

A directory renamed since the base (the base's index has its inode at another path than its
parent's move alone explains) is not resent: the root's dumpdir carries GNU tar's rename
records for it (``R`` old path, ``T`` new path; renames.py), which a restore (ours, or GNU
tar ``-G``) replays before anything else, so the replica's copy moves with its hard links and
only what changed inside follows.

A directory is the base's only when its stamp (dirid.py: the inode generation, else the birth
time) is the base's too: ext4 and XFS give a deleted directory's inode number to the next one
made, and that one is new (taken whole), not the deleted one renamed. Each directory entered is
stamped once through the fd it is listed by, and the stamps go into the next directory index.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import dirid, pax, renames, sparse, xattrs
from .history import HistoryEntry
from .prefetch import LARGE, WINDOW_BYTES, Prefetch
from .report import Messages
from .select import Excluder
from .sink import FdSink
from .stat_helper import Answer, StatHelper, classify, sorted_names
from .target import DIR_FLAGS, fd_path

if TYPE_CHECKING:                  # loaded by a dump that may read ahead (with subprocess): an
    from .readahead import ReadAhead    # incremental's start-up, most of its time, goes without

_S_IFMT, _S_IFDIR, _S_IFREG = 0o170000, stat.S_IFDIR, stat.S_IFREG
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_PROGRESS_EVERY = 512
CTIME_SLACK_NS = 100_000_000       # lean: a directory or file whose ctime is this close before the
                                   # base counts as changed (ctime comes from the coarse clock, which
                                   # lags the base's time.time_ns() by up to a tick; a lean image has
                                   # no full listing to mend a miss with)


HAND_OVER = 0.5                    # of the directories an incremental lists, the helper's share: an entry
                                   # costs it ~10,100 instructions, the dump ~10,400 alone and a few hundred
                                   # with the helper's answer (callgrind), so a half evens the two out
_UPCOMING_SCAN = 64                # directory entries after a large file looked through for the next ones
TAR_RECORD = 10240                 # GNU tar's default record (blocking factor 20)


class DumpAborted(Exception):
    """The job was cancelled; the stream is incomplete."""


class DumpMeter:
    """A running dump's progress, read from any thread at any time (DATA_GET_STATE).

    It reads the sink's byte count and the walk's running total when asked, so the dump
    pays nothing per record or per file for it; figures never go backwards."""

    def __init__(self) -> None:
        self._dumper: "Dumper | None" = None
        self._high = 0
        self.finished = False

    def attach(self, dumper: "Dumper") -> None:
        self._dumper = dumper

    def processed(self) -> int:
        """Stream bytes produced so far (handed to the data connection or the mover)."""
        dumper = self._dumper
        if dumper is not None:
            self._high = max(self._high, dumper.sink.offset)
        return self._high

    def discovered(self) -> int:
        """About how many stream bytes the entries listed so far make (a lower bound of the
        whole stream while the walk goes on)."""
        dumper = self._dumper
        return dumper.discovered if dumper is not None else 0

    def finish(self, total: int) -> None:
        self._high, self.finished = max(self._high, total), True


@dataclass(frozen=True)
class DumpOptions:
    """What to dump and how."""

    since_ns: int | None = None                 # incremental: what changed at or after this time
    known_dirs: dict[int, bytes] | None = None  # dir inode -> path at the base dump (renames)
    known_stamps: dict[int, int] | None = None  # dir inode -> its stamp at the base (None: by number alone)
    excludes: tuple[str, ...] = ()
    only: tuple[bytes, ...] = ()                # FILES: just these paths (relative) and what is under them
    live: bool = False                          # no snapshot: report files changing while read
    xattrs: bool = True
    one_filesystem: bool = True
    skip_root_names: frozenset[bytes] = frozenset()   # never dumped (the snapshot directory)
    labels: dict[str, str] = field(default_factory=dict)  # NDMPD.* global records
    lean: bool = False              # replication update: dumpdirs only of directories changed since the base
    changed_dirs: frozenset[bytes] | None = None    # lean with known_dirs: only these directories changed
                                                    # (relative paths, b"" the root), from a change journal
    readahead: str = "auto"         # reads of the files ahead of the walk (readahead.py): "auto" once the
                                    # cache proves cold, "always" from the start, "off"
    prefetch: str = "auto"          # reads of large files ahead of their copy (prefetch.py): "auto" for
                                    # a file that proves cold, "always", "off"
    stat_helper: bool = True        # an incremental walk hands a share of its directories to a second
                                    # process to list and stat (stat_helper.py); same stream


@dataclass
class DumpResult:
    """What a dump wrote, what it warned of, and the directory index for later levels."""

    bytes_written: int = 0
    entries: int = 0
    files: int = 0
    warnings: Messages = field(default_factory=Messages)
    changed: int = 0                 # files that changed while being read (live dumps)
    dir_index: dict[int, bytes] = field(default_factory=dict)
    dir_stamps: dict[int, int] = field(default_factory=dict)   # dir inode -> stamp, where the fs gives one
    read_ahead: int = 0              # files the read-ahead helper asked the kernel for (cold cache)
    prefetched: int = 0              # bytes of large files read ahead of their copy (cold cache)

    @property
    def warning_count(self) -> int:
        return self.warnings.count


HistoryCallback = Callable[[HistoryEntry], None]
ProgressCallback = Callable[[int, int], None]


class _Frame:
    """A directory being written: its fd, archive prefix and the children still to go."""

    __slots__ = ("fd", "rel", "ino", "children", "next", "full")

    def __init__(self, fd: int, rel: bytes, ino: int, children: list, full: bool) -> None:
        self.fd, self.rel, self.ino, self.children, self.next, self.full = fd, rel, ino, children, 0, full


class Dumper:
    """Writes one tree as a pax stream into a sink; runs in the calling (worker) thread."""

    def __init__(self, root: str | bytes, sink: FdSink, options: DumpOptions = DumpOptions(),
                 history: HistoryCallback | None = None, progress: ProgressCallback | None = None,
                 warn: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.root = os.fsencode(root)
        self.sink = sink
        self.options = options
        self.history = history
        self.progress = progress
        self.warn_hook = warn
        self.cancel = cancel or threading.Event()
        self.result = DumpResult()
        self._headers = pax.HeaderWriter()
        self._excluder = Excluder(options.excludes)
        self._only = frozenset(p.strip(b"/") for p in options.only)
        self._on_the_way = frozenset(b"/".join(p.split(b"/")[:n]) for p in self._only
                                     for n in range(1, p.count(b"/") + 1))    # their parent directories
        self._links: dict[tuple[int, int], tuple[bytes, int]] = {}   # inode: first name, its offset
        self._since = options.since_ns
        self._lean_since = (options.since_ns - CTIME_SLACK_NS
                            if options.lean and options.since_ns is not None else None)
        self._xattrs = options.xattrs
        self._live = options.live
        self._open_flags = _FILE_FLAGS | os.O_NOATIME   # less O_NOATIME once refused
        self.discovered = 0            # stream bytes of the entries listed so far (DumpMeter)
        restricted = (options.changed_dirs if options.lean and self._lean_since is not None
                      and options.known_dirs is not None and not options.only else None)
        self._changed = restricted
        self._toward: dict[bytes, set[bytes]] = {}     # directory -> names leading to changed ones
        for path in restricted or ():
            parts = path.split(b"/") if path else []
            for n in range(len(parts)):
                self._toward.setdefault(b"/".join(parts[:n]), set()).add(parts[n])
        self._kids: dict[bytes, list[tuple[bytes, int]]] = {}   # listed directory -> its subdirectories
        self._rename_records: list[bytes] = []      # the root dumpdir's R/T entries
        self._base_path = renames.BasePaths(())      # a path now -> its path at the base
        self._moved: set[int] = set()               # the renamed directories: always listed, as a
                                                    # reused inode can pass a new directory for one
        self._stamper = dirid.Stamper()
        self._readahead: ReadAhead | None = None
        self._prefetch: Prefetch | None = None
        self._helper: StatHelper | None = None
        self._seen_dirs = self._handed = 0          # directories it could take, and those it took
        self._position = 0                          # directory entries stepped over (ReadAhead's count)
        self._stack: list[_Frame] = []

    # -- driver --------------------------------------------------------------------------

    def run(self) -> DumpResult:
        """Write the whole tree and the end-of-archive blocks."""
        root_fd = os.open(self.root, DIR_FLAGS)
        root_st = os.fstat(root_fd)
        self._root_dev = root_st.st_dev
        if self.options.labels:
            records = b"".join(pax.pax_record(f"NDMPD.{k}".encode(), str(v).encode())
                               for k, v in sorted(self.options.labels.items()))
            self.sink.write(pax.extended_header(records, pax.XGLTYPE))
        if self._since is not None and self.options.known_dirs is not None and not self._only:
            found = renames.find(root_fd, self.options.known_dirs, self._rename_scope(),
                                 self._rename_skips, root_st.st_dev if self.options.one_filesystem else None,
                                 self.options.known_stamps, self._stamper)
            self._base_path = renames.BasePaths(found)
            self._moved = {move.ino for move in found}
            self._rename_records = renames.records(found, renames.temporary_names(root_fd, len(found)))
        stack: list[_Frame] = self._stack
        if self.options.prefetch != "off":
            sink = self.sink
            self._prefetch = Prefetch(lambda: sink.offset, eager=self.options.prefetch == "always")
        if self.options.readahead != "off" and not self._only and self._changed is None:
            from .readahead import ReadAhead
            self._readahead = ReadAhead(root_fd, root_st.st_dev if self.options.one_filesystem else None,
                                        self.options.skip_root_names, self.options.excludes,
                                        self._since if self._lean_since is None else self._lean_since,
                                        self._where, eager=self.options.readahead == "always")
            self.sink.on_miss = self._readahead.missed
        elif self.options.stat_helper and self._since is not None and not self._only and self._changed is None:
            self._helper = StatHelper(root_fd, self._since if self._lean_since is None else self._lean_since,
                                      self.cancel)
        try:
            self._enter(stack, root_fd, b"", root_st, root_st.st_ino, full=self._since is None,
                        inside=not self._only, stamp=self._stamper(root_fd, root_st.st_dev))
            while stack:
                self._step(stack)
            self.sink.write(pax.ZERO_BLOCK * 2)
            self.sink.zeros(-self.sink.offset % TAR_RECORD)   # whole 10 KiB records, as GNU tar writes
            self.sink.drain()
        finally:
            if self._helper is not None:
                self._helper.stop()
            if self._prefetch is not None:
                self._prefetch.stop()
                self.result.prefetched = self._prefetch.bytes_read
            if self._readahead is not None:
                self._readahead.stop()
                self.sink.on_miss = None
                self.result.read_ahead = self._readahead.files_asked
            for frame in stack:
                os.close(frame.fd)
        if self._changed is not None:
            self.result.dir_index, self.result.dir_stamps = self._merged_index(root_st.st_ino)
        self.result.bytes_written = self.sink.offset
        if self.progress:
            self.progress(self.sink.offset, self.result.entries)
        return self.result

    def _step(self, stack: list[_Frame]) -> None:
        """Step through the top directory's entries until one is a directory (entered, or
        passed over) or the directory ends (closed and popped); its files go in one loop, the
        lookups done once per directory and not per file."""
        frame = stack[-1]
        children, dir_fd, prefix, parent = frame.children, frame.fd, frame.rel, frame.ino
        cancel, progress, result = self.cancel, self.progress, self.result
        walked = self._readahead.walked if self._readahead is not None else None   # the read-ahead's view
        regular = self._regular
        dot = b"./" + prefix           # a file's archive name is this plus its name: one join a file
        end = len(children)
        while frame.next < end:
            name, st, include = children[frame.next]
            frame.next += 1
            if walked is not None:
                self._position += 1
                walked[0] = self._position
            if cancel.is_set():
                raise DumpAborted("dump aborted")
            kind = st.st_mode & _S_IFMT
            if kind == _S_IFDIR:
                self._directory(stack, frame, name, prefix + name, st, inside=include)
                if progress and result.entries % _PROGRESS_EVERY == 0:
                    progress(self.sink.offset, result.entries)
                return
            if include:
                try:
                    if kind == _S_IFREG and st.st_nlink == 1:
                        regular(dir_fd, name, dot + name, st, parent)    # the common case
                    else:
                        self._member(dir_fd, name, prefix + name, st, parent)
                except FileNotFoundError:
                    self.warn(f"{self._show(prefix + name)}: vanished before it was read; not archived")
            if progress and result.entries % _PROGRESS_EVERY == 0:
                progress(self.sink.offset, result.entries)
        os.close(frame.fd)
        stack.pop()

    def _directory(self, stack: list[_Frame], frame: _Frame, name: bytes, rel: bytes,
                   st: os.stat_result, inside: bool) -> None:
        if self.options.one_filesystem and st.st_dev != self._root_dev:
            self._write_dir(rel, st, frame.ino, [], b"")
            self.warn(f"{self._show(rel)}: mount point of another file system; its contents are not dumped")
            return
        moved_or_new = self._moved_or_new(st, rel)
        if (self._changed is not None and not frame.full and not moved_or_new and st.st_ino not in self._moved
                and rel not in self._changed and rel not in self._toward):
            return                     # the journal: nothing changed in or under it since the base
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=frame.fd)
        except (FileNotFoundError, NotADirectoryError):
            self.warn(f"{self._show(rel)}: vanished before it was read; not archived")
            return
        except PermissionError as exc:
            self.warn(f"{self._show(rel)}: cannot open: {exc.strerror}; not archived")
            return
        stamp = self._stamper(fd, st.st_dev)
        if not moved_or_new and self._reused(st.st_ino, stamp):
            moved_or_new = True        # a new directory that got a deleted one's inode number
        # with the base's index, a directory inside a new one is new too, unless renamed there
        full = moved_or_new if self.options.known_dirs is not None else frame.full or moved_or_new
        self._enter(stack, fd, rel, st, frame.ino, full, inside, stamp)

    def _where(self) -> tuple[int, list[bytes]]:
        """The walk position and the path of the next entry (the read-ahead jumps there)."""
        position = self._position
        stack = self._stack
        if not stack:
            return position, []
        frame = stack[-1]
        parts = frame.rel.rstrip(b"/").split(b"/") if frame.rel else []
        children = frame.children
        index = frame.next
        parts.append(children[index][0] if index < len(children) else b"\xff" * 256)
        return position, parts

    def _moved_or_new(self, st: os.stat_result, rel: bytes) -> bool:
        """A directory that is new or was renamed since the base: everything in it is dumped.

        Without the base's directory index, any directory whose ctime moved is taken whole
        (larger, never wrong).
        """
        if self._since is None:
            return True
        known = self.options.known_dirs
        if known is None:
            return st.st_ctime_ns >= self._since
        return known.get(st.st_ino) != self._base_path(rel)    # renamed ones move by the records

    def _reused(self, ino: int, stamp: int | None) -> bool:
        """Whether the directory of inode ``ino`` and ``stamp`` is not the base's directory of
        that number (its stamp differs: a new one given a deleted one's number)."""
        stamps = self.options.known_stamps
        return (stamps is not None and self._since is not None and self.options.known_dirs is not None
                and not dirid.same(stamps.get(ino), stamp))

    def _rename_scope(self) -> "frozenset[bytes] | None":
        """Where renamed directories can be found: with a journal, only in the directories it
        names (a rename changes the new parent); else everywhere (None)."""
        return self._changed

    def _rename_skips(self, rel: bytes, name: bytes) -> bool:
        """A directory the dump does not write (excluded, or the snapshot directory)."""
        if not rel and name in self.options.skip_root_names:
            return True
        path = rel + b"/" + name if rel else name
        return bool(self._excluder) and self._excluder.excluded(name, path)

    def _enter(self, stack: list[_Frame], fd: int, rel: bytes, st: os.stat_result, parent_ino: int,
               full: bool, inside: bool, stamp: int | None) -> None:
        """List a directory, write its header with the dumpdir, and queue its children.

        A directory only on the way to what FILES selects (not ``inside``) is written with
        the entries it leads to; its dumpdir still names the others, as not dumped."""
        if stamp is not None:
            self.result.dir_stamps[st.st_ino] = stamp
        if (self._changed is not None and not full and rel not in self._changed
                and not (not rel and self._rename_records) and st.st_ino not in self._moved):
            self.result.dir_index[st.st_ino] = rel        # only on the way to changed directories:
            stack.append(_Frame(fd, rel + b"/" if rel else b"", st.st_ino,   # not listed, not written
                                self._on_the_way_to_changes(fd, rel), full))
            return
        helper = self._helper
        answer = helper.take(rel, stamp) if helper is not None and helper.asked(rel) else None
        if full:
            answer = None              # (asked before its stamp proved it new) every file goes
        children, dumpdir = self._list(fd, rel, full, inside, answer)
        if helper is not None:
            self._hand_over(helper, rel, children, full)
        self.result.dir_index[st.st_ino] = rel
        if not rel and self._rename_records:
            dumpdir = dumpdir + self._rename_records     # after the names, as GNU tar writes them
        listing: list[bytes] | None = dumpdir
        if (self._lean_since is not None and not full and st.st_ctime_ns < self._lean_since
                and not (not rel and self._rename_records) and st.st_ino not in self._moved):
            listing = None                          # unchanged since the base: nothing to replay here
            if not any(include and not stat.S_ISDIR(child.st_mode) for _, child, include in children):
                stack.append(_Frame(fd, rel + b"/" if rel else b"", st.st_ino, children, full))
                return                              # nor any file of its own that changed: not written
        try:
            xattr_records = xattrs.read_records(fd) if self._xattrs else b""
        except OSError:
            xattr_records = b""
        self._write_dir(rel, st, parent_ino, listing, xattr_records)
        stack.append(_Frame(fd, rel + b"/" if rel else b"", st.st_ino, children, full))

    def _hand_over(self, helper: StatHelper, rel: bytes, children: list, full: bool) -> None:
        """Ask the helper for its share of the subdirectories the walk will list for changes
        (one taken whole needs every stat here, and one on another file system is not entered)."""
        prefix = rel + b"/" if rel else b""
        known = self.options.known_dirs is not None
        other_fs = self.options.one_filesystem
        for name, st, _ in children:
            if st.st_mode & _S_IFMT != _S_IFDIR or (other_fs and st.st_dev != self._root_dev):
                continue
            child = prefix + name
            moved_or_new = self._moved_or_new(st, child)
            if moved_or_new or (full and not known):
                continue                    # _directory takes it whole
            self._seen_dirs += 1
            if self._handed < self._seen_dirs * HAND_OVER and helper.ask(child, st.st_ino, st.st_dev):
                self._handed += 1

    def _list(self, fd: int, rel: bytes, full: bool, inside: bool = True,
              answer: Answer | None = None) -> tuple[list, list[bytes]]:
        """The directory's children to step through (name order) and its dumpdir entries.

        The names are sorted once, as bytes, before anything else (one lstat each follows);
        both lists come out in that order. An incremental's unchanged file is only a dumpdir entry (``N``): it is
        not among the children unless the read-ahead counts the walk's entries (it steps
        over each), so a level 1 costs a stat per unchanged file and nothing more. With the
        helper's ``answer`` (stat_helper.py) the names come marked, and only the directories
        and changed files are stat'ed here."""
        excluder = self._excluder if self._excluder else None      # its truth is a call: once
        since = self._since if self._lean_since is None else self._lean_since
        by_journal = self._changed is not None
        keep_unchanged = self._readahead is not None
        if (rel and excluder is None and inside and not full and since is not None and not self._only
                and not by_journal and not keep_unchanged):
            return self._changes(fd, since, answer)   # an incremental's usual directory
        children: list[tuple[bytes, os.stat_result, bool]] = []
        dumpdir: list[bytes] = []
        prefix = rel + b"/" if rel else b""
        skip = self.options.skip_root_names if not rel else ()
        only, on_the_way = self._only, self._on_the_way
        base_since = self._since
        listed = 0                     # header + data bytes of what this directory will write
        unchanged = 0
        lstat = os.stat
        add_child, add_entry = children.append, dumpdir.append
        marked = answer is not None
        for name in answer if marked else sorted_names(fd):
            if marked:
                if name[0] == 78 and excluder is None:     # b"N": the helper found it unchanged
                    unchanged += 1                         # (and the root, with its skips, is
                    add_entry(name)                        # never handed over)
                    continue
                entry, name = name, name[1:]
            if name in skip:
                continue
            if excluder is not None and excluder.excluded(name, prefix + name):
                add_entry(b"N" + name)
                continue
            if marked and entry[0] == 78:
                unchanged += 1
                add_entry(entry)
                continue
            try:
                st = lstat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            is_dir = st.st_mode & _S_IFMT == _S_IFDIR
            chosen = inside or prefix + name in only
            if not chosen and not (is_dir and prefix + name in on_the_way):
                add_entry((b"D" if is_dir else b"N") + name)
                continue
            if is_dir:
                add_child((name, st, chosen))      # for a directory: inside FILES or not
                add_entry(b"D" + name)
                continue
            include = full or since is None or st.st_mtime_ns >= since or st.st_ctime_ns >= since
            if (include and not full and by_journal and st.st_nlink > 1
                    and st.st_ctime_ns < base_since and st.st_mtime_ns < base_since):
                include = False    # in only by the ctime slack; its other names are in directories
                                   # not listed, and the journal saw no change of it (else no answer)
            if include:
                add_child((name, st, True))
                add_entry(b"Y" + name)
                listed += st.st_size
            else:
                unchanged += 1
                if keep_unchanged:
                    add_child((name, st, False))
                add_entry(b"N" + name)
        unchanged = unchanged if not keep_unchanged else 0
        self.discovered += listed + 1024 * (len(children) + unchanged)    # data, plus about a header per entry
        if by_journal:
            self._kids[rel] = [(name, st.st_ino) for name, st, _ in children
                               if stat.S_ISDIR(st.st_mode) and st.st_dev == self._root_dev]
        return children, dumpdir

    def _changes(self, fd: int, since: int, answer: Answer | None) -> tuple[list, list[bytes]]:
        """``_list`` of a directory listed for changes, with nothing excluded, no FILES and no
        journal: the dumpdir is the entries as :func:`classify` marks them (the helper's, or this
        process's), and only the ``D`` and ``Y`` ones are looked at (with the helper's answer,
        stat'ed again here: what the stream says of them is this process's own lstat)."""
        if answer is None:
            dumpdir, wanted, stats = classify(fd, since)
        else:
            dumpdir, wanted, stats = answer, answer.wanted, self._stat_again(fd, answer)
        children = []
        listed = 0
        gone: list[int] = []
        for at, st in zip(wanted, stats):
            entry = dumpdir[at]
            if st is None:                                   # gone since the helper's lstat
                gone.append(at)
                continue
            if st.st_mode & _S_IFMT == _S_IFDIR:
                code = 68                                    # b"D"
            elif st.st_mtime_ns >= since or st.st_ctime_ns >= since:
                code = 89                                    # b"Y"
                listed += st.st_size
            else:
                dumpdir[at] = b"N" + entry[1:]               # (its times went back since)
                continue
            if entry[0] != code:
                dumpdir[at] = bytes((code,)) + entry[1:]
            children.append((entry[1:], st, True))
        for at in reversed(gone):
            del dumpdir[at]
        self.discovered += listed + 1024 * len(dumpdir)    # data, plus about a header per entry
        return children, dumpdir

    @staticmethod
    def _stat_again(fd: int, answer: Answer) -> list[os.stat_result | None]:
        """This process's lstat of the helper's ``D`` and ``Y`` entries (None: gone since)."""
        stats: list[os.stat_result | None] = []
        lstat = os.lstat
        for at in answer.wanted:
            try:
                stats.append(lstat(answer[at][1:], dir_fd=fd))
            except FileNotFoundError:
                stats.append(None)
        return stats

    def _on_the_way_to_changes(self, fd: int, rel: bytes) -> list:
        """The subdirectories of an unchanged directory that lead to changed ones (no listing)."""
        prefix = rel + b"/" if rel else b""
        skip = self.options.skip_root_names if not rel else ()
        children = []
        for name in sorted(self._toward.get(rel, ())):
            if name in skip or (self._excluder and self._excluder.excluded(name, prefix + name)):
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue               # gone since the journal answered: the next update sees it
            if stat.S_ISDIR(st.st_mode):
                children.append((name, st, True))
        return children

    def _merged_index(self, root_ino: int) -> tuple[dict[int, bytes], dict[int, int]]:
        """The whole tree's directory index and stamps after a journal-driven dump: a directory
        listed now has the subdirectories found; any other has the same ones as at the base
        (nothing was created, deleted or renamed in it), under its path now (an ancestor may
        have moved). A directory not entered is the base's (else the journal would name it:
        it was made since), with the base's stamp."""
        known = self.options.known_dirs or {}
        known_stamps = self.options.known_stamps or {}
        entered = self.result.dir_stamps
        base: dict[bytes, list[tuple[bytes, int]]] = {}
        for ino, path in known.items():
            if path:
                parent, _, name = path.rpartition(b"/")
                base.setdefault(parent, []).append((name, ino))
        index: dict[int, bytes] = {}
        todo = [(b"", root_ino)]
        while todo:
            rel, ino = todo.pop()
            if ino in index:
                continue
            index[ino] = rel
            prefix = rel + b"/" if rel else b""
            kids = self._kids.get(rel)
            if kids is None:
                then = known.get(ino)
                kids = base.get(then, []) if then is not None else []
            for name, child in kids:
                todo.append((prefix + name, child))
        stamps = {}
        for ino in index:
            stamp = entered.get(ino, known_stamps.get(ino))
            if stamp is not None:
                stamps[ino] = stamp
        return index, stamps

    # -- members -------------------------------------------------------------------------

    def _write_dir(self, rel: bytes, st: os.stat_result, parent_ino: int, dumpdir: list[bytes] | None,
                   xattr_records: bytes) -> None:
        """A directory's header; with its dumpdir unless ``dumpdir`` is None (lean: metadata only)."""
        records = xattr_records
        if dumpdir is not None:
            records += pax.pax_record(b"GNU.dumpdir", b"\0".join(dumpdir) + b"\0\0" if dumpdir else b"\0")
        name = b"./" + rel + b"/" if rel else b"./"
        self._emit_header(rel, st, parent_ino, name, pax.DIRTYPE, 0, records)

    def _member(self, dir_fd: int, name: bytes, rel: bytes, st: os.stat_result, parent_ino: int) -> None:
        mode = st.st_mode
        arcname = b"./" + rel
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._links.get(key)
            if first is not None:
                self._emit_header(rel, st, parent_ino, arcname, pax.LNKTYPE, 0, pax.link_offset_record(first[1]),
                                  linkname=first[0])
                return
            self._links[key] = (arcname, self.sink.offset)
        if stat.S_ISREG(mode):
            self._regular(dir_fd, name, arcname, st, parent_ino)
            return
        records = self._path_xattrs(dir_fd, name)
        if stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=dir_fd)
            self._emit_header(rel, st, parent_ino, arcname, pax.SYMTYPE, 0, records, linkname=target)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = pax.CHRTYPE if stat.S_ISCHR(mode) else pax.BLKTYPE
            self._emit_header(rel, st, parent_ino, arcname, kind, 0, records,
                              devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev))
        elif stat.S_ISFIFO(mode):
            self._emit_header(rel, st, parent_ino, arcname, pax.FIFOTYPE, 0, records)
        else:
            self.warn(f"{self._show(rel)}: socket skipped (tar cannot archive sockets)")

    def _path_xattrs(self, dir_fd: int, name: bytes) -> bytes:
        if not self._xattrs:
            return b""
        try:
            return xattrs.read_records(fd_path(dir_fd, name))
        except OSError:
            return b""

    def _regular(self, dir_fd: int, name: bytes, arcname: bytes, st: os.stat_result,
                 parent_ino: int) -> None:
        """A regular file's headers and data; its path (``arcname`` less ``./``) is cut only
        where it is said (file history, warnings): a warm dump's every file comes here."""
        try:
            fd = os.open(name, self._open_flags, dir_fd=dir_fd)
        except PermissionError:
            if self._open_flags == _FILE_FLAGS:
                raise
            self._open_flags = _FILE_FLAGS     # O_NOATIME needs ownership or CAP_FOWNER
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        result = self.result
        try:
            records = b""
            if self._xattrs:                # one listxattr when it has none (most files)
                try:
                    listed = os.listxattr(fd)
                except OSError:
                    listed = True           # read_records says what this error means
                if listed:
                    records = xattrs.read_records(fd)
            size = st.st_size
            if size > pax.BLOCK and st.st_blocks * 512 < size:       # sparse.looks_sparse, inline
                extents = sparse.data_extents(fd, size)
                if not sparse.is_dense(extents, size):
                    changed_before = result.changed
                    rel = arcname[2:]
                    self._sparse(fd, rel, arcname, st, parent_ino, records, extents)
                    self._check_unchanged(fd, rel, st, changed_before)
                    return
            sink = self.sink
            head = self._headers.headers(arcname, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns,
                                         pax.REGTYPE, b"", 0, 0, records)
            if size >= LARGE and self._prefetch is not None:
                self._prefetch.reading(fd, dir_fd, name, st, sink.offset + len(head), self._upcoming)
            result.entries += 1
            if self.history is not None:   # the history hears of the entry before its data is read
                self.history(HistoryEntry(arcname[2:], st, parent_ino, sink.offset))
            copied = sink.member(head, fd, size)
            result.files += 1
            if copied < size:
                self._shrank(arcname[2:], size - copied)
            elif self._live:                # (one that shrank is reported already)
                now = os.fstat(fd)
                if now.st_size != size or now.st_mtime_ns != st.st_mtime_ns:
                    self._changed_while_read(arcname[2:], st, now)
        finally:
            os.close(fd)

    def _upcoming(self) -> list[tuple[bytes, os.stat_result]]:
        """The large files the dump copies next, in walk order: those that follow in the
        directory being written, up to its next subdirectory and a window's worth of bytes
        (hard links left out: a later name's data is not in the stream)."""
        frame = self._stack[-1]
        children = frame.children
        files: list[tuple[bytes, os.stat_result]] = []
        total = 0
        for index in range(frame.next, min(len(children), frame.next + _UPCOMING_SCAN)):
            name, st, include = children[index]
            kind = st.st_mode & _S_IFMT
            if kind == _S_IFDIR:
                break                  # its contents come first
            if (include and kind == _S_IFREG and st.st_nlink == 1 and st.st_size >= LARGE
                    and st.st_blocks * 512 >= st.st_size):       # a sparse one's holes are not read
                files.append((name, st))
                total += st.st_size
                if total >= WINDOW_BYTES:
                    break
        return files

    def _sparse(self, fd: int, rel: bytes, arcname: bytes, st: os.stat_result, parent_ino: int,
                records: bytes, extents: list[sparse.Extent]) -> None:
        mapping = sparse.encode_map(extents)
        stored = len(mapping) + sum(length for _, length in extents)
        head, _, base = arcname.rpartition(b"/")
        placeholder = head + b"/GNUSparseFile.0/" + (base if len(base) < 60 and base.isascii() else b"file")
        records += (pax.pax_record(b"GNU.sparse.major", b"1") + pax.pax_record(b"GNU.sparse.minor", b"0")
                    + pax.pax_record(b"GNU.sparse.name", arcname)
                    + pax.pax_record(b"GNU.sparse.realsize", b"%d" % st.st_size))
        self._emit_header(rel, st, parent_ino, placeholder, pax.REGTYPE, stored, records)
        self.result.files += 1
        self.sink.write(mapping)
        for offset, length in extents:
            if length:
                self._copy(fd, rel, offset, length)
        self.sink.zeros(-stored % pax.BLOCK)

    def _copy(self, fd: int, rel: bytes, offset: int, length: int) -> None:
        copied = self.sink.copy_from(fd, offset, length)
        if copied < length:
            self.sink.zeros(length - copied)
            self._shrank(rel, length - copied)

    def _shrank(self, rel: bytes, missing: int) -> None:
        self.result.changed += 1
        self.warn(f"{self._show(rel)}: shrank while being read; {missing} bytes archived as zeros")

    def _check_unchanged(self, fd: int, rel: bytes, st: os.stat_result, changed_before: int) -> None:
        if not self.options.live or self.result.changed != changed_before:
            return            # already reported (it shrank)
        now = os.fstat(fd)
        if now.st_size != st.st_size or now.st_mtime_ns != st.st_mtime_ns:
            self._changed_while_read(rel, st, now)

    def _changed_while_read(self, rel: bytes, st: os.stat_result, now: os.stat_result) -> None:
        self.result.changed += 1
        grew = " (it grew; the archived copy stops at the size it had)" if now.st_size > st.st_size else ""
        self.warn(f"{self._show(rel)}: changed while being read; the archived copy may be torn{grew}")

    def _emit_header(self, rel: bytes, st: os.stat_result, parent_ino: int, arcname: bytes,
                     typeflag: bytes, size: int, records: bytes, linkname: bytes = b"",
                     devmajor: int = 0, devminor: int = 0) -> None:
        offset = self.sink.offset
        self.sink.write(self._headers.headers(arcname, st.st_mode, st.st_uid, st.st_gid, size,
                                          st.st_mtime_ns, typeflag, linkname, devmajor, devminor, records))
        self.result.entries += 1
        if self.history is not None:
            self.history(HistoryEntry(rel, st, parent_ino, offset))

    # -- reporting -------------------------------------------------------------------------

    def warn(self, message: str) -> None:
        self.result.warnings.add(message)
        if self.warn_hook:
            self.warn_hook(message)

    @staticmethod
    def _show(rel: bytes) -> str:
        return os.fsdecode(rel) or "."
