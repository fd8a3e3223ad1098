"""Directories renamed since an incremental's base, found through the base's directory index,
and the GNU tar rename records that move them in a restore instead of resending them.

A directory is renamed when the base's index has its inode at another path than its parent's
base path plus its name now (a directory that only moved along with an ancestor is not: the
ancestor's record moves it). The records go into the root's dumpdir, where a restore replays
them before any deletion or extraction (GNU tar's incremen.c does the same with ``R``/``T``
pairs of paths relative to the archive's root). They come in two phases through temporary
names at the root, so swaps, cycles and nested renames need no ordering proof: first each
renamed directory, deepest old path first, goes to its own temporary name (its old ancestors
are still where the base had them); then each goes from there to its new path, shallowest
first (its new ancestors are then in place; a missing one is new, and the restore makes it).

A directory is the base's only when its stamp (dirid.py) agrees too: one that got a deleted
directory's inode number is new, not that one renamed (GNU tar ``-g``, going by number alone,
records such a rename). The stamp is asked of each directory listed (its fd is open) and of a
subdirectory only when the number alone would make it a rename.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import dirid
from .target import DIR_FLAGS

TEMPORARY_PREFIX = b".ndmpd-rename-"
_LEAF_LINKS = 2      # a directory's link count is 2 + its subdirectories on ext4, XFS, tmpfs and most
                     # others (find(1)'s leaf optimisation); btrfs and the like say 1, and are listed.
                     # Were a file system to say 2 wrongly, a renamed directory below would be found
                     # new by the walk and dumped whole: larger, never wrong.


@dataclass(frozen=True)
class Move:
    """One renamed directory: its inode, its path at the base, its path now."""

    ino: int
    old: bytes
    new: bytes


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


Stamper = Callable[[int, int], "int | None"]      # (directory fd, its device) -> its stamp


def find(root_fd: int, known: dict[int, bytes], scope: "frozenset[bytes] | None",
         skip: Callable[[bytes, bytes], bool], device: int | None,
         stamps: dict[int, int] | None = None, stamper: Stamper | None = None) -> list[Move]:
    """The renamed directories under ``root_fd``. ``scope`` None: every directory is listed;
    else only those (a change journal's changed directories, relative paths) and the new
    directories inside them. ``skip(parent, name)`` names directories the dump leaves out;
    ``device`` set: directories on another file system are not entered. With the base's
    ``stamps`` and a ``stamper``, a directory whose stamp is not the base's is new."""
    def base_path(fd: int, st: os.stat_result) -> bytes | None:
        old = known.get(st.st_ino)
        if old is None or stamps is None or stamper is None:
            return old
        return old if dirid.same(stamps.get(st.st_ino), stamper(fd, st.st_dev)) else None

    moves: list[Move] = []
    starts = [b""] if scope is None else sorted(scope)
    for start in starts:
        fd = _open_path(root_fd, start)
        if fd is None:
            continue
        stack = [(fd, start)]
        try:
            while stack:
                dir_fd, rel = stack.pop()
                try:
                    own = os.fstat(dir_fd)
                    if own.st_nlink == _LEAF_LINKS:
                        continue           # no subdirectory in it: nothing to list (see _LEAF_LINKS)
                    then = base_path(dir_fd, own) if rel else known.get(own.st_ino)   # the root is itself
                    for name, st in _subdirectories(dir_fd):
                        if skip(rel, name) or (device is not None and st.st_dev != device):
                            continue
                        path = _join(rel, name)
                        old = known.get(st.st_ino)
                        expected = _join(then, name) if then is not None else None
                        child = None
                        if old is not None and old != expected:
                            child = _open_child(dir_fd, name)     # (gone: by its number, as before)
                            old = base_path(child, st) if child is not None else old
                            if old is not None and old != expected:
                                moves.append(Move(st.st_ino, old, path))
                        if scope is None or old is None:       # the journal's scope: new ones too
                            child = child if child is not None else _open_child(dir_fd, name)
                            if child is not None:
                                stack.append((child, path))
                        elif child is not None:
                            os.close(child)
                finally:
                    os.close(dir_fd)
        finally:
            for dir_fd, _ in stack:
                os.close(dir_fd)
    unique = {move.ino: move for move in moves}          # a scope may list a directory twice
    return sorted(unique.values(), key=lambda move: move.new)


def _open_child(fd: int, name: bytes) -> int | None:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=fd)
    except OSError:
        return None


def _open_path(root_fd: int, rel: bytes) -> int | None:
    """An fd of directory ``rel`` below ``root_fd``, never through a symlink; None if gone."""
    fd = os.dup(root_fd)
    for part in rel.split(b"/") if rel else ():
        try:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


def _subdirectories(fd: int) -> list[tuple[bytes, os.stat_result]]:
    own = os.open(".", DIR_FLAGS, dir_fd=fd)      # scandir(fd) would share (and use up) fd's offset
    found = []
    try:
        with os.scandir(own) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            found.append((os.fsencode(entry.name), st))
                except OSError:
                    continue
    finally:
        os.close(own)
    return found


def temporary_names(root_fd: int, count: int) -> list[bytes]:
    """``count`` names free in the root now, for the records' first phase."""
    if not count:
        return []
    taken = {os.fsencode(name) for name in os.listdir(root_fd)}
    salt = os.urandom(4).hex().encode()
    names, n = [], 0
    while len(names) < count:
        name = TEMPORARY_PREFIX + salt + b"-%d" % n
        n += 1
        if name not in taken:
            names.append(name)
    return names


def records(moves: Iterable[Move], temporaries: list[bytes]) -> list[bytes]:
    """The dumpdir entries (without their NULs) that replay ``moves``: two phases, see above."""
    moves = list(moves)
    parked = list(zip(moves, temporaries))
    out: list[bytes] = []
    for move, temp in sorted(parked, key=lambda item: item[0].old.count(b"/"), reverse=True):
        out += [b"R" + move.old, b"T" + temp]
    for move, temp in sorted(parked, key=lambda item: item[0].new.count(b"/")):
        out += [b"R" + temp, b"T" + move.new]
    return out


class BasePaths:
    """A path now -> the path it had at the base, through the renamed directories."""

    def __init__(self, moves: Iterable[Move]) -> None:
        self._moved = {move.new: move.old for move in moves}

    def __call__(self, rel: bytes) -> bytes:
        head, tail = rel, b""
        while head:
            old = self._moved.get(head)
            if old is not None:
                return old + tail
            head, _, name = head.rpartition(b"/")
            tail = b"/" + name + tail
        return rel
