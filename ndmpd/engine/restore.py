"""The restore: a tar stream back into a directory, entry by entry, confined to it.

Each entry is placed through the selection (``PATH`` or ``PATH=NEW``), checked against
the existing-file policy, and written through :class:`Target` (directory fds, O_NOFOLLOW),
so no name, link or planted symlink leads outside the target. A member is one unit of
failure: whatever goes wrong with it (garbage in a field, an OS error, a refusal) is
reported with its :class:`Failure` and the rest goes on; only a stream that cannot be read
on (:class:`StreamError`) or an abort ends the run. Directory metadata is applied last,
deepest first, so adding children does not disturb restored times; directories the
restore had to create get the image's metadata when the image has them, else the mode
``mkdir -p`` would give. A target that existed before the restore keeps its own mode,
owner and xattrs (the image's root entry must never widen access to it).

Deletions recorded in an incremental's dumpdirs remove only what an earlier restore of the
same image directory put into that very directory: every directory restored from a member with
a dumpdir gets a record of the names this chain placed there (restored.py, an xattr on the
directory), and a name on disk the dumpdir no longer lists is deleted only when that record
holds it; a directory so deleted loses only what its own record holds, so it stays when anything
else is inside. The admin's own files, another volume's restores, and a subtree placed elsewhere
(``sub=``, an nlist ``/sub`` -> ``/vol``: its destination's record, if any, belongs to another
image directory) are never touched, so selective restores replay deletions under the same rule,
and nothing above the directories the restore itself places is ever looked at. Without xattrs
nothing is deleted (one warning says so). Renames: our incrementals carry GNU tar's rename
commands for renamed directories in the root's dumpdir (``R`` from, ``T`` to; ``X`` a temporary
name for empty ones; renames.py); each moves only a directory the record of the source's
directory holds (or this restore moved), both names inside what the restore places, never onto
an existing entry; a missing parent of the new name is made, and the records inside move with it.
"""

from __future__ import annotations

import os
import pwd
import grp
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from . import pax, restored, sparse, writers, xattrs
from .reader import (ByteSource, Member, ReadCancelled, StreamError, StreamReader, TruncatedStream,
                     member_problem)
from .select import Pick, Selection, clean_path
from .report import INVALID, Failure, Messages, bounded, failure_of
from .target import DIR_FLAGS, NameSplitter, Refused, Target, fd_path, split_safe

POLICIES = ("overwrite", "keep", "newer")
_KINDS = {pax.REGTYPE: "file", pax.AREGTYPE: "file", pax.CONTTYPE: "file", pax.LNKTYPE: "hard link",
          pax.SYMTYPE: "symlink", pax.CHRTYPE: "device", pax.BLKTYPE: "device", pax.FIFOTYPE: "FIFO"}
_NEW_FILE = writers.NEW_FILE
_REGULAR = (pax.REGTYPE, pax.AREGTYPE, pax.CONTTYPE)


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask would race other threads);
    where it cannot be read, assume every bit is masked so modes are always set explicitly."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


class RestoreAborted(Exception):
    """The job was cancelled."""


@dataclass(frozen=True)
class RestoreOptions:
    picks: tuple[Pick, ...] = ()
    existing: str = "overwrite"            # overwrite | keep | newer
    incremental: bool | None = None        # replay dumpdir deletions; None: when the stream is one
    owners: bool | None = None             # restore uid/gid; None: when running as root
    devices: bool | None = None            # create device nodes; None: when running as root
    xattrs: bool = True
    stop_when_done: bool = False           # direct access: stop once every pick is restored
    labels: Mapping[str, str] = field(default_factory=dict)   # direct access: the image's labels
                                           # (level, volume), read at its start, which the run skips
    whole_copy: bool = False               # the target is nothing but this image's copy (a replica's
                                           # staging subvolume): it takes the image root's metadata too
    workers: int = 2                       # writer processes for regular files (writers.py); 0: inline
    parallel_after: int = 256              # files restored inline before the writers start (starting
                                           # them costs about what restoring that many files does)


@dataclass
class RestoreResult:
    entries: int = 0
    files: int = 0
    written_by_writers: int = 0      # of ``files``, those the writer processes wrote (writers.py)
    bytes_read: int = 0
    refused: Messages = field(default_factory=Messages)
    warnings: Messages = field(default_factory=Messages)
    restored: list[bytes] = field(default_factory=list)   # placed paths of the picks found
    complete: bool = True
    end_of_archive: bool = False     # the image's end-of-archive blocks were read (nothing cut between members)

    @property
    def refused_count(self) -> int:
        return self.refused.count

    @property
    def warning_count(self) -> int:
        return self.warnings.count


@dataclass
class _Journal:
    """One directory restored from a member with a dumpdir: what its record will say."""

    owner: bytes
    foreign: set[bytes]     # what was there that no restore of this owner put there, nor this one yet


@dataclass
class _DirMeta:
    parts: tuple[bytes, ...]
    member: Member
    keep_own: bool = False          # a restore target that was there before: only its time is set


class Restorer:
    """Reads one stream from a file descriptor into a target directory."""

    def __init__(self, target: str | bytes, source: "int | ByteSource", options: RestoreOptions = RestoreOptions(),
                 report: Callable[[str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None,
                 entry_done: Callable[[Member, bytes, Failure | None], None] | None = None) -> None:
        self.target_path = target
        self.source = source
        self.options = options
        self.report_hook = report
        self.progress = progress
        self.cancel = cancel or threading.Event()
        self.entry_done = entry_done
        self.selection = Selection(list(options.picks))
        self._selective = bool(self.selection)
        self._xattrs = options.xattrs
        self.result = RestoreResult()
        self._euid = os.geteuid()
        self._root = self._euid == 0
        self._umask = current_umask()
        self._unsettled_bits = ~0o777 | self._umask    # a mode with any of these is set after creating
        self._owners = options.owners if options.owners is not None else self._root
        self._devices = options.devices if options.devices is not None else self._root
        self._owner_skips = 0
        self._dirs: list[_DirMeta] = []
        self._labels: dict[str, str] = {}
        self._uid_by_name: dict[bytes, int | None] = {}
        self._gid_by_name: dict[bytes, int | None] = {}
        self._id_pairs: dict[tuple, tuple[int, int]] = {}    # (uname, gname, uid, gid) -> local ids
        self._pending = {pick.source for pick in self.selection.picks}
        self._open_dir_picks: set[bytes] = set()
        self._lone_links: dict[int, list[tuple[Member, tuple[bytes, ...]]]] = {}   # first link's offset
        self._target_existed = False
        self._ancestors: dict[bytes, Member] = {}     # unselected image directories above a pick
        self._pick_sources = tuple(pick.source for pick in self.selection.picks if pick.source)
        self._stands_for = _directories_above(self.selection.picks)
        self._journals: dict[tuple[bytes, ...], _Journal] = {}
        self._renames: list[tuple[bytes, bytes]] = []   # (from, to) image paths this restore replayed
        self._moved_in: set[tuple[bytes, ...]] = set()   # where those renames put directories
        self._no_records = ""                          # why records cannot be kept (warned once)
        self._pool: writers.WriterPool | None = None
        self._workers = options.workers
        self._inline_files = 0                         # regular files written before the writers start
        self._seq = 0
        self._reader: StreamReader | None = None    # the one reading into the writers' ring
        self._split = NameSplitter()                 # member name -> its components (split_safe)

    @property
    def labels(self) -> dict[str, str]:
        """The image's global header labels (volume, level, date token, base), once read."""
        return dict(self._labels)

    def run(self, offset: int = 0) -> RestoreResult:
        """Restore the stream, which starts at stream ``offset`` (a header boundary)."""
        if offset:
            self._seek(offset)
        self._target_existed = os.path.isdir(self.target_path)
        target = Target(self.target_path)
        reader = StreamReader(self.source, offset, warn=self.warn, cancel=self.cancel)
        self._labels = reader.labels
        if offset:
            reader.labels.update(self.options.labels)   # they decide which deletions are replayed
        stopped = True                  # by an abort or a failure: the writers are not waited for
        try:
            try:
                one, cancel, progress, result = self._one, self.cancel, self.progress, self.result
                stop_when_done = self.options.stop_when_done and self._selective
                count = 0
                for member in reader.members():
                    count += 1
                    if not count & 31 and cancel.is_set():    # (every refill of the reader checks too)
                        raise RestoreAborted("restore aborted")
                    one(target, reader, member)
                    if progress and result.entries % 512 == 0:
                        progress(reader.offset, result.entries)
                    if stop_when_done and self._all_done(member):
                        break
                self.result.end_of_archive = reader.end_of_archive
                self._quiet(target)
                self._restore_lone_links(target)
            except TruncatedStream as exc:
                self.result.complete = False
                self.warn(f"truncated stream: {exc}")
            except ReadCancelled:
                raise RestoreAborted("restore aborted") from None
            stopped = False
        finally:
            self.result.bytes_read = reader.offset - offset
            self._stop_writers(target, stopped)
            self._finish_dirs(target)
            target.close()
        if self._owner_skips:
            self.warn(f"ownership not restored for {self._owner_skips} entries (not running as root)")
        return self.result

    def _seek(self, offset: int) -> None:
        if not isinstance(self.source, int):
            self.source.seek(offset)
            return
        try:
            os.lseek(self.source, offset, os.SEEK_SET)
        except OSError:
            left = offset
            while left:
                got = len(os.read(self.source, min(left, 1 << 20)))
                if not got:
                    raise TruncatedStream(f"stream ends before offset {offset}") from None
                left -= got

    # -- one member ----------------------------------------------------------------------

    def _one(self, target: Target, reader: StreamReader, member: Member) -> None:
        """One member, start to end; any failure of its own is reported and ends only it."""
        try:
            problem = member_problem(member)
            if problem:
                raise Refused(problem, INVALID)
            parts = self._split(member.name)
            if self._selective:
                path = b"/".join(parts)
                placed = self.selection.place(path)
                if placed is None:
                    if member.typeflag == pax.DIRTYPE and self._above_a_pick(path):
                        self._ancestors[path] = member
                    return
                self._mark(path)
                parts = tuple(split_safe(placed))
            if self._pool is not None or self._workers:
                if self._send(target, reader, member, parts):
                    return                             # a writer reports it (_settle)
            written = self._extract(target, reader, member, b"/".join(self._split(member.name)), parts)
        except (StreamError, RestoreAborted, writers.WritersFailed):
            raise
        except Exception as exc:                       # this member's own failure, whatever it is
            self._failed(member, failure_of(exc))
            return
        self._placed(member, parts, written)

    def _placed(self, member: Member, parts: tuple[bytes, ...], written: bool) -> None:
        """A member is done: at ``parts`` now (``written``), or kept out by the policy."""
        if written and self._journals:
            self._note_written(parts)
        self.result.entries += 1
        if self.entry_done:
            self.entry_done(member, b"/".join(parts), None)

    def _failed(self, member: Member, failure: Failure) -> None:
        self.refuse(member.name, failure.text)
        self._done(member, b"", failure)

    # -- the writers (writers.py) ----------------------------------------------------------

    def _send(self, target: Target, reader: StreamReader, member: Member, parts: tuple[bytes, ...]) -> bool:
        """Hand a plain regular file to the writers (True), else make sure none of them is busy
        with anything this member's restore could touch (False: it is restored inline)."""
        pool = self._pool
        if (member.typeflag in _REGULAR and parts and member.realsize is None      # not sparse
                and (pool is None or member.size <= pool.max_item)):
            if pool is None:
                pool = self._start_writers(target, reader)
                if pool is None:
                    return False
            if parts not in target.opened:            # a directory of this restore is never in the way
                return self._hand_over(target, reader, member, parts, pool)
        if pool is not None and pool.busy and (member.typeflag != pax.DIRTYPE or pool.conflicts(parts)):
            self._quiet(target)                        # (a directory's dumpdir may need it too: _directory)
        return False

    def _start_writers(self, target: Target, reader: StreamReader) -> "writers.WriterPool | None":
        """The writers, once ``parallel_after`` files are restored; the reader reads on into
        their ring."""
        if self._inline_files < self.options.parallel_after:
            self._inline_files += 1
            return None
        try:
            pool = writers.WriterPool(target.fd, self._workers, self.options.existing)
        except (OSError, ValueError) as exc:
            self._workers = 0
            self.warn(f"restoring without writer processes: {failure_of(exc).text}")
            return None
        reader.adopt(pool.view, pool)
        self._pool, self._reader = pool, reader
        return pool

    def _hand_over(self, target: Target, reader: StreamReader, member: Member, parts: tuple[bytes, ...],
                   pool: "writers.WriterPool") -> bool:
        parent = parts[:-1]
        dir_fd = target.cached(parent)
        if dir_fd is None:
            if pool.conflicts(parent):
                self._quiet(target)
            dir_fd = target.directory(parent)
        settled = self._created_settled(target, dir_fd, member)
        uid = gid = -1
        if not self._owners:
            self._owner_skips += 1
        elif not settled:
            uid, gid = self._ids(member)
        size = member.size
        offset = reader.lend(size)[0] if size else 0
        self._seq = seq = self._seq + 1
        if pool.submit((seq, parent, parts[-1], offset, size, member.mode, settled, uid, gid, member.mtime_ns,
                        member.xattrs if self._xattrs else None), parts, (member, parts)):
            self._settle(target, pool.outcomes())
        return True

    def _quiet(self, target: Target) -> None:
        """Wait until the writers have written (and reported) every file sent to them."""
        if self._pool is not None and self._pool.busy:
            self._settle(target, self._pool.drain())

    def _settle(self, target: Target, outcomes: list) -> None:
        """What the writers report, as if each file had been restored inline; a file with a
        directory in its way is restored here, in stream order, with the writers idle."""
        back = []
        result, journals, entry_done = self.result, self._journals, self.entry_done
        written = 0                     # files reported written, no warning, counted at the end
        for outcome in outcomes:
            if outcome.__class__ is tuple:              # the usual report: the bare (member, parts)
                if journals:
                    self._note_written(outcome[1])
                if entry_done:                          # (it sees the counts as they are)
                    result.files += 1
                    result.written_by_writers += 1
                    result.entries += 1
                    entry_done(outcome[0], b"/".join(outcome[1]), None)
                else:
                    written += 1
                continue
            member, parts = outcome.ticket
            for message in outcome.warnings:
                self.warn(f"{os.fsdecode(member.name)}: {message}")
            code = outcome.code
            if code == writers.WRITTEN:
                result.files += 1
                result.written_by_writers += 1
                self._placed(member, parts, True)
            elif code == writers.FAILED:
                self._failed(member, Failure(outcome.text, outcome.kind))
            elif code == writers.DIRECTORY:
                back.append((outcome.seq, member, parts, outcome.data))
            else:
                self.warn(f"{os.fsdecode(b'/'.join(parts))}: "
                          + ("exists; kept" if code == writers.KEPT else "existing copy is as new; kept"))
                self._placed(member, parts, False)
        result.files += written                         # (_placed's count, for them together)
        result.written_by_writers += written
        result.entries += written
        if back:
            self._quiet(target)
            for _, member, parts, data in sorted(back, key=lambda item: item[0]):
                self._write_back(target, member, parts, data)

    def _write_back(self, target: Target, member: Member, parts: tuple[bytes, ...], data: bytes) -> None:
        """A file a writer found a directory in the way of, restored inline from its data."""
        try:
            written = self._regular_file(target, _Held(data), member, parts)
        except Exception as exc:
            self._failed(member, failure_of(exc))
            return
        self._placed(member, parts, written)

    def _stop_writers(self, target: Target, stopped: bool) -> None:
        """The writers finish what they were sent; its reports count unless the restore stopped."""
        pool = self._pool
        if pool is None:
            return
        try:
            if not stopped:
                self._quiet(target)
        finally:
            self._pool = None
            self._workers = 0
            self._reader.release()
            pool.close()

    def _above_a_pick(self, path: bytes) -> bool:
        prefix = path + b"/" if path else b""
        return any(source.startswith(prefix) for source in self._pick_sources)

    def _note_written(self, parts: tuple[bytes, ...]) -> None:
        """``parts`` now holds what the image put there: its directory's record will say so."""
        if parts:
            journal = self._journals.get(parts[:-1])
            if journal is not None and journal.foreign:
                journal.foreign.discard(parts[-1])      # the image's now

    def _done(self, member: Member, placed: bytes, failure: Failure | None) -> None:
        if self.entry_done:
            self.entry_done(member, placed, failure)

    def _extract(self, target: Target, reader: StreamReader, member: Member, path: bytes,
                 parts: tuple[bytes, ...]) -> bool:
        """Place one member; True when it is now at ``parts`` (False: kept out by the policy,
        or a hard link fetched at the end)."""
        kind = member.typeflag
        if not parts:                       # the root of the dump: the target itself
            if kind != pax.DIRTYPE:
                raise Refused(f"a {_KINDS.get(kind, 'non-directory')} entry named "
                              f"{os.fsdecode(member.name)!r} would be the restore target itself", INVALID)
            return self._directory(target, member, path, parts)
        if kind == pax.DIRTYPE:
            return self._directory(target, member, path, parts)
        dir_fd = target.directory(parts[:-1])
        name = parts[-1]
        if kind in _REGULAR:
            return self._regular_file(target, reader, member, parts)
        if kind == pax.LNKTYPE:                 # (what is in its way goes once its source is found)
            return self._hard_link(target, member, parts)
        if not self._make_room(target, parts, dir_fd, name, member):
            return False
        if kind == pax.SYMTYPE:
            os.symlink(member.linkname, name, dir_fd=dir_fd)
            self._metadata_path(dir_fd, name, member)
        elif kind in (pax.CHRTYPE, pax.BLKTYPE):
            if not self._devices:
                raise Refused("device node (only root may create device nodes)")
            mode = member.mode | (stat.S_IFCHR if kind == pax.CHRTYPE else stat.S_IFBLK)
            os.mknod(name, mode, os.makedev(member.devmajor, member.devminor), dir_fd=dir_fd)
            self._metadata_path(dir_fd, name, member)
        elif kind == pax.FIFOTYPE:
            os.mkfifo(name, member.mode, dir_fd=dir_fd)
            self._metadata_path(dir_fd, name, member)
        else:
            raise Refused(f"unknown member type {kind!r}")
        return True

    def _regular_file(self, target: Target, reader: "StreamReader | _Held", member: Member,
                      parts: tuple[bytes, ...]) -> bool:
        """A regular file, created new (the existing-file policy settles what is there)."""
        dir_fd = target.directory(parts[:-1])
        name = parts[-1]
        settled = self._created_settled(target, dir_fd, member)
        create_mode = member.mode if settled else 0o600
        try:                            # the common case first: nothing there yet
            fd = os.open(name, _NEW_FILE, create_mode, dir_fd=dir_fd)
        except FileExistsError:
            if not self._make_room(target, parts, dir_fd, name, member):
                return False
            fd = os.open(name, _NEW_FILE, create_mode, dir_fd=dir_fd)
        self._regular(reader, member, fd, dir_fd, name, settled)
        return True

    def _created_settled(self, target: Target, dir_fd: int, member: Member) -> bool:
        """True when a file created with the member's mode already has its final owner and
        mode (the usual case: root restoring root's files), so fchown and fchmod can be
        skipped. Never for set-id bits (fchown would clear them) or bits the umask drops."""
        if member.mode & self._unsettled_bits:
            return False
        if not self._owners:
            return True
        return self._ids(member) == (self._euid, target.new_file_gid(dir_fd))

    def _make_room(self, target: Target, parts: tuple[bytes, ...], dir_fd: int, name: bytes,
                   member: Member) -> bool:
        """Apply the existing-file policy; True when the entry should be written."""
        existing = target.lstat(dir_fd, name)
        if existing is None:
            return True
        policy = self.options.existing
        if policy == "keep":
            self.warn(f"{os.fsdecode(b'/'.join(parts))}: exists; kept")
            return False
        if policy == "newer" and existing.st_mtime_ns >= member.mtime_ns:
            self.warn(f"{os.fsdecode(b'/'.join(parts))}: existing copy is as new; kept")
            return False
        target.remove(parts, dir_fd, name, existing)
        return True

    # -- kinds ---------------------------------------------------------------------------

    def _directory(self, target: Target, member: Member, path: bytes, parts: tuple[bytes, ...]) -> bool:
        existed = self._target_existed
        if parts:
            parent = target.directory(parts[:-1])
            existing = target.lstat(parent, parts[-1])
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                if not self._make_room(target, parts, parent, parts[-1], member):
                    return False
                existing = None
            existed = existing is not None and parts not in target.created
        if member.dumpdir is not None and (existed or self._replays_deletions()):
            self._quiet(target)             # what is in it is listed, deleted or moved: writers idle
        fd = target.directory(parts)
        if member.dumpdir is not None:
            self._journal(target, parts, path, fd, member.dumpdir, fresh=not existed)
        # where the restore goes (the target, or where the image's root is placed) keeps its own
        # mode, owner and xattrs when it was there before: the image must not widen access to it
        kept = replace(member, dumpdir=None) if member.dumpdir else member   # the names are done with:
        # kept until the end for its metadata only, a directory must not hold its whole listing
        self._dirs.append(_DirMeta(parts, kept, existed and (not parts or not path) and not self.options.whole_copy))
        return True

    def _replays_deletions(self) -> bool:
        """An incremental (by the option, else by the image's level) replays its deletions."""
        wanted = self.options.incremental
        if wanted is None:
            level = self._labels.get("level", "0") or "0"
            wanted = level.isdigit() and int(level) > 0
        return wanted

    def _owner(self, path: bytes) -> bytes:
        return restored.owner_of(self._labels.get("volume", ""), path)

    def _journal(self, target: Target, parts: tuple[bytes, ...], path: bytes, fd: int,
                 dumpdir: list[bytes], fresh: bool) -> None:
        """Start the record of a directory with a dumpdir, first deleting what the dumpdir no
        longer lists and this image directory's earlier restores put there."""
        owner = self._owner(path)
        replay = self._replays_deletions()
        if replay and any(entry[:1] == b"R" for entry in dumpdir):
            self._replay_renames(target, dumpdir)
            fd = target.directory(parts)
        before = None if fresh else self._record(fd)
        if before is not None and before.owner not in (owner, self._owner(self._original(path))):
            before = None                   # another image directory's: none of its names are ours
        on_disk = [] if fresh else _names_in(fd)
        earlier = self._journals.get(parts)
        if earlier is not None:             # the same directory again: what it had is known
            earlier.owner = owner
        else:
            foreign = {name for name in on_disk if before is None or name not in before}
            self._journals[parts] = _Journal(owner, foreign)
        if before is None or not replay:
            return
        listed = _listed(dumpdir)
        for name in on_disk:
            if name in listed or name not in before:
                continue
            try:
                st = target.lstat(fd, name)
                if st is not None:
                    self._remove_restored(target, parts + (name,), fd, name, st, path)
            except OSError as exc:
                self.warn(f"{os.fsdecode(b'/'.join(parts + (name,)))}: no longer in the image, but not "
                          f"deleted: {failure_of(exc).text}")

    def _original(self, path: bytes) -> bytes:
        """The image path ``path`` had before the renames this restore replayed."""
        for source, moved in reversed(self._renames):
            if path == moved or path.startswith(moved + b"/"):
                path = source + path[len(moved):]
        return path

    def _replay_renames(self, target: Target, dumpdir: list[bytes]) -> None:
        """GNU tar's rename commands (``R`` from, ``T`` to, ``X`` a temporary name for empty
        ones; image paths), replayed under the deletion rule: only what this image directory's
        earlier restores put there (or this restore moved) is moved, never onto anything."""
        temporary = b""
        moved_here: dict[bytes, bytes] = {}       # where this replay moved a directory -> from where
        entries = iter(dumpdir)
        for entry in entries:
            if entry[:1] == b"X":
                temporary = clean_path(entry[1:])
                continue
            if entry[:1] != b"R":
                continue
            follow = next(entries, b"")
            if follow[:1] != b"T":
                continue
            source = clean_path(entry[1:]) or temporary
            moved = clean_path(follow[1:]) or temporary
            try:
                self._rename(target, source, moved, source in moved_here)
                moved_here[moved] = source
                self._renames.append((source, moved))
            except (Refused, OSError, ValueError) as exc:
                self.warn(f"rename {os.fsdecode(source)} -> {os.fsdecode(moved)} not replayed: "
                          f"{failure_of(exc).text}")
                if source in moved_here:            # parked by this replay's first phase: back where
                    self._move_back(target, source, moved_here.pop(source))    # it was, never left
                                                                               # under a temporary name

    def _move_back(self, target: Target, parked: bytes, origin: bytes) -> None:
        try:
            self._rename(target, parked, origin, True)
            self._renames.append((parked, origin))
        except (Refused, OSError, ValueError) as exc:
            self.warn(f"{os.fsdecode(parked)}: not moved back to {os.fsdecode(origin)}: {failure_of(exc).text}")

    def _rename(self, target: Target, source: bytes, moved: bytes, ours: bool) -> None:
        placed = [self.selection.place(path) if self.selection else path for path in (source, moved)]
        if None in placed:
            raise Refused("outside what this restore places")
        src, dst = (tuple(split_safe(path)) for path in placed)
        if not src or not dst or dst[:len(src)] == src:
            raise Refused("not a rename of one entry to another place")
        src_dir = os.dup(target.directory(src[:-1], create=False))
        try:
            if not ours:
                parent = source.rpartition(b"/")[0]
                record = self._record(src_dir)
                owners = (self._owner(parent), self._owner(self._original(parent)))
                if record is None or record.owner not in owners or src[-1] not in record:
                    raise Refused("no restore of this image put it there")
            st = target.lstat(src_dir, src[-1])
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise Refused("no directory there")
            dst_dir = target.directory(dst[:-1])          # a new directory's: made, as GNU tar does
            if target.lstat(dst_dir, dst[-1]) is not None:
                raise Refused("something is already there")
            target.forget(src)
            if ours or self._all_ours(src_dir, src[-1], source):
                os.rename(src[-1], dst[-1], src_dir_fd=src_dir, dst_dir_fd=target.directory(dst[:-1]))
            else:
                self._move_ours(src_dir, src[-1], source, target.directory(dst[:-1]), dst[-1], moved)
            self._rehome(target.directory(dst), source, moved)
            self._moved_in.add(dst)
        finally:
            os.close(src_dir)

    def _all_ours(self, parent: int, name: bytes, image_path: bytes) -> bool:
        """Whether directory ``name`` holds only what restores of ``image_path`` put there (then
        it moves whole; else only those names move, and what the admin put there stays). One
        with no record at all (too many names for an xattr here) moves whole: its parent's
        record vouches for it, and nothing tells what in it is foreign."""
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            record = self._record(fd)
            if record is None:
                return True
            if record.owner not in (self._owner(image_path),
                                                      self._owner(self._original(image_path))):
                return False
            return all(child in record for child in _names_in(fd))
        finally:
            os.close(fd)

    def _move_ours(self, src_parent: int, name: bytes, source: bytes, dst_parent: int, new_name: bytes,
                   moved: bytes) -> None:
        """Move only what this image directory's restores put into ``name``: a new directory
        takes those names (subdirectories the same way, as far as their records reach)."""
        stack = [(os.dup(src_parent), name, source, os.dup(dst_parent), new_name, moved)]
        try:
            while stack:
                s_parent, s_name, s_path, d_parent, d_name, d_path = stack.pop()
                try:
                    if self._all_ours(s_parent, s_name, s_path):
                        os.rename(s_name, d_name, src_dir_fd=s_parent, dst_dir_fd=d_parent)
                        continue
                    s_fd = os.open(s_name, DIR_FLAGS, dir_fd=s_parent)
                    try:
                        record = self._record(s_fd)
                        if record is not None and record.owner not in (self._owner(s_path),
                                                                       self._owner(self._original(s_path))):
                            record = None               # another image directory's: nothing moves
                        os.mkdir(d_name, 0o700, dir_fd=d_parent)
                        d_fd = os.open(d_name, DIR_FLAGS, dir_fd=d_parent)
                        try:
                            names = set()
                            for child in _names_in(s_fd):
                                if record is None or child not in record:
                                    continue
                                names.add(child)
                                if stat.S_ISDIR(os.lstat(child, dir_fd=s_fd).st_mode):
                                    stack.append((os.dup(s_fd), child, _child_path(s_path, child),
                                                  os.dup(d_fd), child, _child_path(d_path, child)))
                                else:
                                    os.rename(child, child, src_dir_fd=s_fd, dst_dir_fd=d_fd)
                            if not self._no_records:
                                restored.write(d_fd, self._owner(s_path), names)   # rehomed below
                        finally:
                            os.close(d_fd)
                    finally:
                        os.close(s_fd)
                finally:
                    os.close(s_parent)
                    os.close(d_parent)
        finally:
            for frame in stack:
                os.close(frame[0])
                os.close(frame[3])
        self.warn(f"{os.fsdecode(source)}: holds what no restore put there; only the restored names "
                  f"moved to {os.fsdecode(moved)}")

    def _rehome(self, fd: int, source: bytes, moved: bytes) -> None:
        """The records in a moved directory and below belong to the image directories of their
        new paths now (else the next incremental could delete nothing in them)."""
        if self._no_records:
            return
        stack = [(os.open(".", DIR_FLAGS, dir_fd=fd), b"")]
        try:
            while stack:
                dir_fd, tail = stack.pop()
                try:
                    record = self._record(dir_fd)
                    if record is None or record.owner not in (self._owner(source + tail),
                                                              self._owner(self._original(source + tail))):
                        continue                    # not this image directory's: nothing below is ours
                    restored.reown(dir_fd, record, self._owner(moved + tail))
                    for name in _names_in(dir_fd):
                        if name in record and stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
                            stack.append((os.open(name, DIR_FLAGS, dir_fd=dir_fd), tail + b"/" + name))
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            self.warn(f"{os.fsdecode(moved)}: records not moved with it: {failure_of(exc).text}")
        finally:
            for dir_fd, _ in stack:
                os.close(dir_fd)

    def _record(self, fd: int) -> restored.Record | None:
        try:
            return restored.read(fd)
        except restored.Unsupported as exc:
            self._cannot_record(exc)
            return None

    def _cannot_record(self, exc: Exception) -> None:
        if not self._no_records:
            self._no_records = str(exc)
            self.warn(f"cannot keep the record of restored names here ({exc}): incrementals restored "
                      "here delete nothing")

    def _remove_restored(self, target: Target, parts: tuple[bytes, ...], fd: int, name: bytes,
                         st: os.stat_result, path: bytes) -> None:
        """Remove what this image directory's restores put at ``name``: anything but a directory
        outright; a directory only as far as its own records reach, iteratively (any depth)."""
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)
            return
        target.forget(parts)
        stack = [self._emptied_by_record(fd, name, _child_path(path, name), b"/".join(parts))]
        try:
            while stack:
                parent, current, dir_fd, image_path, shown, subdirs, kept = stack[-1]
                if subdirs:
                    child = subdirs.pop()
                    stack.append(self._emptied_by_record(dir_fd, child, _child_path(image_path, child),
                                                         shown + b"/" + child))
                    continue
                stack.pop()
                os.close(dir_fd)
                if not kept:
                    try:
                        os.rmdir(current, dir_fd=parent)
                    except OSError:
                        kept = True
                if kept:
                    self.warn(f"{os.fsdecode(shown)}: no longer in the image, but kept: it holds what "
                              "no restore of it put there")
                    if stack:
                        stack[-1][6] = True
        finally:
            for frame in stack:
                os.close(frame[2])

    def _emptied_by_record(self, parent: int, name: bytes, image_path: bytes, shown: bytes) -> list:
        """Open directory ``name``, unlink the non-directories its record holds, and list the
        subdirectories it holds: [parent, name, fd, image path, shown path, subdirectories,
        whether something stays]."""
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            record = self._record(fd)
            if record is None or record.owner not in (self._owner(image_path),
                                                      self._owner(self._original(image_path))):
                return [parent, name, fd, image_path, shown, [], True]
            subdirs, kept = [], False
            with os.scandir(fd) as entries:
                children = [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in entries]
            for child, is_dir in children:
                if child not in record:
                    kept = True
                elif is_dir:
                    subdirs.append(child)
                else:
                    os.unlink(child, dir_fd=fd)
        except BaseException:
            os.close(fd)
            raise
        return [parent, name, fd, image_path, shown, subdirs, kept]

    def _regular(self, reader: StreamReader, member: Member, fd: int, dir_fd: int, name: bytes,
                 settled: bool) -> None:
        try:
            if member.is_sparse:
                self._sparse_data(reader, member, fd)
            else:
                for chunk in reader.chunks(member.size):
                    while chunk:
                        chunk = chunk[os.write(fd, chunk):]
            self._metadata_fd(fd, member, settled)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)   # never leave a half-written file behind
            raise
        os.close(fd)
        self.result.files += 1

    def _sparse_data(self, reader: StreamReader, member: Member, fd: int) -> None:
        left = member.size
        if member.sparse_map is not None:
            extents = member.sparse_map
        else:
            def map_block() -> bytes:            # the map lies inside the member's data, never past it
                nonlocal left
                if left < pax.BLOCK:
                    raise ValueError("the map runs past the member's data")
                left -= pax.BLOCK
                return reader.read_block()
            try:
                extents, _ = sparse.decode_map(map_block)
                sparse.check_extents(extents, member.realsize or 0)
            except ValueError as exc:
                raise Refused(f"bad sparse map: {exc}", INVALID) from None
        for offset, length in extents:
            if self.cancel.is_set():
                raise RestoreAborted("restore aborted")
            if length > left:
                raise Refused("sparse map larger than the member")
            position = offset
            for chunk in reader.chunks(length):
                position += os.pwrite(fd, chunk, position)
            left -= length
        os.ftruncate(fd, member.realsize or 0)

    def _hard_link(self, target: Target, member: Member, parts: tuple[bytes, ...]) -> bool:
        """Link ``parts`` to the file the member names. Nothing at ``parts`` is removed before
        that file is known to be there, and a link to itself (or to the file already there)
        leaves it as it is: bad links lose nothing."""
        source = clean_path(member.linkname)
        placed = self.selection.place(source)
        existing = None
        if placed is not None:
            src_parts = tuple(split_safe(placed))
            if not src_parts:
                raise Refused("hard link to the target directory")
            src_dir = target.directory(src_parts[:-1], create=False)
            existing = target.lstat(src_dir, src_parts[-1])
        name = parts[-1]
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            src_dir = os.dup(src_dir)       # finding it may have evicted dir_fd from the cache: both anew
            try:
                dir_fd = target.directory(parts[:-1])
                here = target.lstat(dir_fd, name)
                if here is not None and (here.st_dev, here.st_ino) == (existing.st_dev, existing.st_ino):
                    return True             # that very file is there already (a link to itself)
                if src_parts[:len(parts)] == parts:
                    raise Refused(f"hard link to {os.fsdecode(source)}, inside the directory its name "
                                  "holds (making room would remove its own source)")
                if not self._make_room(target, parts, dir_fd, name, member):
                    return False
                os.link(src_parts[-1], name, src_dir_fd=src_dir, dst_dir_fd=target.directory(parts[:-1]),
                        follow_symlinks=False)
            finally:
                os.close(src_dir)
            return True
        if member.link_offset is None or member.link_offset >= member.offset or not self._can_seek_back():
            raise Refused(f"hard link to {os.fsdecode(source)}, which this restore does not include "
                          "(select that name too, or restore with direct access)")
        if not self._make_room(target, parts, target.directory(parts[:-1]), name, member):
            return False
        self._lone_links.setdefault(member.link_offset, []).append((member, parts))   # fetched at the end
        return False

    def _can_seek_back(self) -> bool:
        if not isinstance(self.source, int):
            return bool(getattr(self.source, "seekable", False))
        try:
            os.lseek(self.source, 0, os.SEEK_CUR)
        except OSError:
            return False
        return True

    def _restore_lone_links(self, target: Target) -> None:
        """Hard links selected without their first link: their contents are fetched from the
        first link's member (found through the link's offset record) after the scan."""
        for offset, links in sorted(self._lone_links.items()):
            try:
                self._seek(offset)
                reader = StreamReader(self.source, offset, warn=self.warn, cancel=self.cancel)
                first = next(reader.members(), None)
                if (first is None or first.typeflag not in (pax.REGTYPE, pax.AREGTYPE, pax.CONTTYPE)
                        or clean_path(first.name) != clean_path(links[0][0].linkname)):
                    raise Refused("its first link is not where the image says")
                _, parts = links[0]
                dir_fd = os.dup(target.directory(parts[:-1]))    # stays open whatever the cache evicts
                try:
                    fd = os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=dir_fd)
                    self._regular(reader, first, fd, dir_fd, parts[-1], False)
                    self._note_written(parts)
                    for _, more in links[1:]:
                        os.link(parts[-1], more[-1], src_dir_fd=dir_fd, dst_dir_fd=target.directory(more[:-1]),
                                follow_symlinks=False)
                        self._note_written(more)
                finally:
                    os.close(dir_fd)
            except StreamError as exc:
                for member, _ in links:
                    self.refuse(member.name, str(exc))
                    self._done(member, b"", Failure(str(exc)))
                if isinstance(exc, ReadCancelled):
                    raise RestoreAborted("restore aborted") from None
            except Exception as exc:
                failure = failure_of(exc)
                for member, _ in links:
                    self.refuse(member.name, failure.text)
                    self._done(member, b"", failure)
        self._lone_links.clear()

    # -- metadata ------------------------------------------------------------------------

    def _ids(self, member: Member) -> tuple[int, int]:
        """The local ids of the archived user/group names, else the archived numbers (as tar -p)."""
        key = (member.uname, member.gname, member.uid, member.gid)
        pair = self._id_pairs.get(key)
        if pair is None:
            if len(self._id_pairs) >= 4096:
                self._id_pairs.clear()
            pair = self._id_pairs[key] = self._looked_up_ids(member)
        return pair

    def _looked_up_ids(self, member: Member) -> tuple[int, int]:
        uid = pax.lookup_once(self._uid_by_name, member.uname,
                              lambda n: pwd.getpwnam(os.fsdecode(n)).pw_uid, None) if member.uname else None
        gid = pax.lookup_once(self._gid_by_name, member.gname,
                              lambda n: grp.getgrnam(os.fsdecode(n)).gr_gid, None) if member.gname else None
        return (member.uid if uid is None else uid), (member.gid if gid is None else gid)

    def _metadata_fd(self, fd: int, member: Member, settled: bool = False) -> None:
        if not self._owners:
            self._owner_skips += 1
        uid, gid = self._ids(member) if self._owners and not settled else (-1, -1)
        for message in writers.apply_file_metadata(fd, member.mode, settled, uid, gid, member.mtime_ns,
                                                   member.xattrs if self.options.xattrs else None):
            self.warn(f"{os.fsdecode(member.name)}: {message}")

    def _metadata_path(self, dir_fd: int, name: bytes, member: Member) -> None:
        is_link = member.typeflag == pax.SYMTYPE
        if self._owners:
            os.chown(name, *self._ids(member), dir_fd=dir_fd, follow_symlinks=False)
        else:
            self._owner_skips += 1
        if not is_link:
            os.chmod(name, member.mode, dir_fd=dir_fd, follow_symlinks=False)
        if member.xattrs and self.options.xattrs and not is_link:
            for message in xattrs.apply(fd_path(dir_fd, name), member.xattrs):
                self.warn(f"{os.fsdecode(member.name)}: {message}")
        os.utime(name, ns=(member.mtime_ns, member.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def _finish_dirs(self, target: Target) -> None:
        """Directory modes, owners and times last, deepest first: the image's directories, then
        those the restore created on the way (the metadata of the image directory each stands
        for, see _directories_above, else the ``mkdir -p`` mode). A restore target that was
        there before only gets its time."""
        target.forget()
        restored = {meta.parts for meta in self._dirs}
        made = [(parts, self._ancestors.get(self._stands_for.get(b"/".join(parts), b"\0")))
                for parts in target.created - restored]
        work = [(meta.parts, meta.member, meta.keep_own) for meta in self._dirs] + [m + (False,) for m in made]
        for parts, member, keep_own in sorted(work, key=lambda item: len(item[0]), reverse=True):
            try:
                fd = target.directory(parts, create=False) if parts else target.fd
                journal = self._journals.get(parts)
                if journal is not None:
                    self._write_record(fd, parts, journal)
                if member is None:
                    os.fchmod(fd, 0o777 & ~self._umask)
                elif keep_own:
                    os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))
                else:
                    if parts in self._moved_in and self.options.xattrs:
                        xattrs.drop_others(fd, member.xattrs or [])
                    self._metadata_fd(fd, member)
            except Exception as exc:
                self.warn(f"{os.fsdecode(b'/'.join(parts)) or '.'}: directory metadata not "
                          f"restored: {failure_of(exc).text}")
        target.forget()

    def _write_record(self, fd: int, parts: tuple[bytes, ...], journal: _Journal) -> None:
        """What the directory holds now but what was there before from elsewhere: this
        owner's earlier restores (less what was deleted) and this restore. Only foreign names are
        tracked while restoring (usually none), never every file placed."""
        if self._no_records:
            return
        foreign = journal.foreign
        names = {name for name in _names_in(fd) if name not in foreign}
        try:
            if not restored.write(fd, journal.owner, names):
                self.warn(f"{os.fsdecode(b'/'.join(parts)) or '.'}: {len(names)} restored names do not fit "
                          "in an xattr here: incrementals restored here will delete nothing in it")
        except restored.Unsupported as exc:
            self._cannot_record(exc)

    # -- selection progress ----------------------------------------------------------------

    def _mark(self, path: bytes) -> None:
        for source in list(self._pending):
            if path == source:
                self._pending.discard(source)
                self._open_dir_picks.add(source)
                self.result.restored.append(path)

    def _all_done(self, member: Member) -> bool:
        """Direct access: every pick seen, and every picked directory left behind."""
        path = clean_path(member.name)
        for source in list(self._open_dir_picks):
            inside = not source or path == source or path.startswith(source + b"/")
            if not inside or (path == source and member.typeflag != pax.DIRTYPE):
                self._open_dir_picks.discard(source)
        return not self._pending and not self._open_dir_picks

    # -- reporting -----------------------------------------------------------------------

    def refuse(self, name: bytes, why: str) -> None:
        message = bounded(f"{os.fsdecode(name)}: refused: {why}")
        self.result.refused.add(message)
        if self.report_hook:
            self.report_hook(message)

    def warn(self, message: str) -> None:
        message = bounded(message)
        self.result.warnings.add(message)
        if self.report_hook:
            self.report_hook(message)


class _Held:
    """A file's data already read (what a writer handed back), read as a StreamReader's."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def chunks(self, count: int) -> list[memoryview]:
        return [memoryview(self._data)[:count]]


def _names_in(fd: int) -> list[bytes]:
    """The names in a directory, read through a new open file description: ``scandir(fd)`` shares
    ``fd``'s offset, and a btrfs directory read to its end once lists nothing more through it."""
    own = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    try:
        with os.scandir(own) as entries:
            return [os.fsencode(entry.name) for entry in entries]
    finally:
        os.close(own)


def _listed(dumpdir: list[bytes]) -> set[bytes]:
    """The names a dumpdir lists (its ``R``/``T``/``X`` entries are commands, not names)."""
    return {entry[1:] for entry in dumpdir if entry[:1] in b"YND"}


def _child_path(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


def _directories_above(picks: list[Pick]) -> dict[bytes, bytes]:
    """Placed directory -> the image directory it stands for: the directories above a pick's
    destination stand, height for height, for those above its source (``dir/sub/file`` restored
    as ``prefix/dir/sub/file``: ``prefix/dir/sub`` is ``dir/sub``, ``prefix/dir`` is ``dir``, and
    ``prefix`` stands for nothing in the image)."""
    above: dict[bytes, bytes] = {}
    for pick in picks:
        source = pick.source.split(b"/")[:-1] if pick.source else []
        placed = pick.target.split(b"/")[:-1] if pick.target else []
        while source and placed:
            above.setdefault(b"/".join(placed), b"/".join(source))
            source, placed = source[:-1], placed[:-1]
    return above
