"""The restore target: every path is reached from the target's directory fd, one component at a
time, with O_NOFOLLOW. Nothing a stream plants (a symlink, a ``..``) can lead outside.
"""

from __future__ import annotations

import errno
import os
import stat

from .report import NO_DIRECTORY, NOT_FOUND, PERMISSION

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CACHE_LIMIT = 64


class Refused(Exception):
    """This entry may not be written where it asks to be; ``kind`` classifies why (report.py)."""

    def __init__(self, message: str, kind: str = PERMISSION) -> None:
        super().__init__(message)
        self.kind = kind


def fd_path(dir_fd: int, name: bytes) -> str:
    """A path naming ``name`` in ``dir_fd`` without resolving any parent again (for the calls,
    such as the xattr ones, that take no ``dir_fd``)."""
    return f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}"


def split_safe(path: bytes) -> list[bytes]:
    """The components of an archive path; refuses absolute paths and ``..``."""
    if path.startswith(b"/"):
        raise Refused("absolute path")
    parts = [part for part in path.split(b"/") if part and part != b"."]
    if b".." in parts:
        raise Refused("path contains '..'")
    return parts


class NameSplitter:
    """``tuple(split_safe(name))`` for the names of one stream, each directory part split once:
    the members of a directory share it, so a member costs a cut at its last slash and one
    dict lookup. The same components and the same refusals, by construction: ``a/b/leaf``
    splits as ``a/b`` and ``leaf`` do, and ``/leaf`` (an empty directory part) is absolute."""

    def __init__(self, limit: int = 4096) -> None:
        self._parents: dict[bytes, tuple[bytes, ...]] = {}
        self._limit = limit

    def __call__(self, name: bytes) -> tuple[bytes, ...]:
        head, slash, leaf = name.rpartition(b"/")
        parent = self._parents.get(head) if slash else ()
        if parent is None:
            if not head:
                raise Refused("absolute path")
            parent = tuple(split_safe(head))
            if len(self._parents) >= self._limit:
                self._parents.clear()
            self._parents[head] = parent
        if leaf and leaf != b".":
            if leaf == b"..":
                raise Refused("path contains '..'")
            return parent + (leaf,)
        return parent


class Target:
    """A directory that restores write into, and only into."""

    def __init__(self, path: str | bytes) -> None:
        os.makedirs(path, exist_ok=True)
        self._start(os.open(path, DIR_FLAGS))

    @classmethod
    def at(cls, fd: int) -> "Target":
        """The target whose directory is already open as ``fd`` (a writer process's view)."""
        target = cls.__new__(cls)
        target._start(fd)
        return target

    def _start(self, fd: int) -> None:
        self.fd = fd
        self._dirs: dict[tuple[bytes, ...], int] = {}
        self._new_file_gids: dict[int, int] = {}
        self.created: set[tuple[bytes, ...]] = set()     # directories this restore made (at 0700)
        self.opened: set[tuple[bytes, ...]] = set()      # every directory reached (or made) so far

    def cached(self, parts: tuple[bytes, ...]) -> int | None:
        """The fd of directory ``parts`` when it is open already (no walk, no system call)."""
        return self._dirs.get(parts) if parts else self.fd

    def close(self) -> None:
        self.forget()
        os.close(self.fd)

    def forget(self, under: tuple[bytes, ...] | None = None) -> None:
        """Drop cached directory fds (all, or those at and below ``under``)."""
        self._new_file_gids.clear()
        for key in list(self._dirs):
            if under is None or key[:len(under)] == under:
                os.close(self._dirs.pop(key))

    def directory(self, parts: tuple[bytes, ...], create: bool = True) -> int:
        """An fd of the directory ``parts`` below the target (made when missing and ``create``).

        A component that exists as anything but a real directory is refused, never followed.
        Walked from the deepest cached ancestor one component at a time (no recursion, so any
        depth works, and at most the cache's fds are open).
        """
        if not parts:
            return self.fd
        fd = self._dirs.get(parts)
        if fd is not None:
            return fd
        depth = len(parts) - 1
        while depth and parts[:depth] not in self._dirs:
            depth -= 1
        fd = self._dirs[parts[:depth]] if depth else self.fd
        while depth < len(parts):
            depth += 1
            fd = self._open_child(fd, parts[:depth], create)
        return fd

    def _open_child(self, parent: int, parts: tuple[bytes, ...], create: bool) -> int:
        name = parts[-1]
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise Refused(f"directory {os.fsdecode(b'/'.join(parts))} does not exist", NOT_FOUND) from None
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
                self.created.add(parts)
            except FileExistsError:
                pass
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Refused(f"{os.fsdecode(b'/'.join(parts))} is not a directory "
                              "(a symlink or file in the way is never followed)", NO_DIRECTORY) from None
            raise
        if len(self._dirs) >= _CACHE_LIMIT:
            self.forget()            # the parent may be closed now: it is not used again
        self._dirs[parts] = fd
        self.opened.add(parts)
        return fd

    def new_file_gid(self, dir_fd: int) -> int:
        """The group a file created in ``dir_fd`` gets: the directory's when it is setgid."""
        gid = self._new_file_gids.get(dir_fd)
        if gid is None:
            st = os.fstat(dir_fd)
            gid = st.st_gid if st.st_mode & stat.S_ISGID else os.getegid()
            self._new_file_gids[dir_fd] = gid
        return gid

    def lstat(self, dir_fd: int, name: bytes) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def remove(self, parts: tuple[bytes, ...], dir_fd: int, name: bytes, st: os.stat_result) -> None:
        """Remove whatever is at ``name`` (a directory with all it holds)."""
        if stat.S_ISDIR(st.st_mode):
            self.forget(parts)
            self._remove_tree(dir_fd, name)
        else:
            os.unlink(name, dir_fd=dir_fd)

    def _remove_tree(self, dir_fd: int, name: bytes) -> None:
        """Remove a directory and everything below it, depth first without recursion."""
        stack = [self._emptied(dir_fd, name)]          # (parent fd, name, fd, subdirectories left)
        try:
            while stack:
                parent, current, fd, subdirs = stack[-1]
                if subdirs:
                    stack.append(self._emptied(fd, subdirs.pop()))
                    continue
                stack.pop()
                os.close(fd)
                os.rmdir(current, dir_fd=parent)
        finally:
            for _, _, fd, _ in stack:
                os.close(fd)

    @staticmethod
    def _emptied(parent: int, name: bytes) -> tuple[int, bytes, int, list[bytes]]:
        """Open ``name``, unlink what is not a directory in it, and list its subdirectories."""
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            with os.scandir(fd) as entries:
                children = [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in entries]
            for child, is_dir in children:
                if not is_dir:
                    os.unlink(child, dir_fd=fd)
        except BaseException:
            os.close(fd)
            raise
        return parent, name, fd, [child for child, is_dir in children if is_dir]
