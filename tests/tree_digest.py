"""A fast whole-tree comparator for trees of 100,000+ files, compared many times in a run.

One walk per tree (scandir + lstat) gives, per path: type and mode, owner, size, ns mtime,
content digest, symlink target, xattrs and hard-link group — what ``tests/trees.py describe``
checks for these trees, minus holes. Reading contents and xattrs is the slow part, so a
``TreeDigest`` remembers them per inode, keyed by (inode, ctime ns, size, mtime ns): any change
to a file's data or xattrs moves its ctime, and an entry is only remembered when its ctime is
older than the tree's freeze time by more than a clock tick (so a later change within the same
tick cannot reuse it). Use one ``TreeDigest`` per side (inode numbers are per filesystem);
``verify=True`` rereads everything (use it to confirm a difference).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

from ndmpd.engine.xattrs import RESERVED_PREFIX

RESERVED_XATTRS = (RESERVED_PREFIX.encode(),)     # the engine's own bookkeeping, not the tree's
_MARGIN_NS = 1_000_000_000


def _xattrs(path: bytes) -> tuple:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in sorted(names):
        if name.encode().startswith(RESERVED_XATTRS) or name.startswith("security.selinux"):
            continue
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            pass
    return tuple(out)


def _content(path: bytes) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class TreeDigest:
    """Describes trees of one filesystem, remembering unchanged files' contents between walks."""

    def __init__(self, exclude: tuple[str, ...] = (".ndmpd-snapshots",), dir_times: bool = True) -> None:
        self.exclude = {os.fsencode(e) for e in exclude}
        self.dir_times = dir_times
        self.cache: dict[tuple, tuple] = {}
        self.read = 0                   # files whose contents the last walk read

    def walk(self, root: Path | str, frozen_at: float | None = None, verify: bool = False) -> dict[bytes, tuple]:
        """path (relative, bytes) -> description. ``frozen_at``: a wall-clock time at or before
        which the tree stopped changing (a snapshot's creation); None: remember nothing."""
        root = os.fsencode(root)
        limit = None if frozen_at is None else int(frozen_at * 1e9) - _MARGIN_NS
        tree: dict[bytes, tuple] = {}
        links: dict[int, list[bytes]] = {}
        self.read = 0
        st = os.lstat(root)
        tree[b"."] = ("d", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, _xattrs(root))
        stack = [b""]
        while stack:
            rel_dir = stack.pop()
            with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
                entries = list(it)
            for entry in entries:
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                if not rel_dir and entry.name in self.exclude:
                    continue
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    stack.append(rel)
                    tree[rel] = ("d", stat.S_IMODE(mode), st.st_uid, st.st_gid,
                                 st.st_mtime_ns if self.dir_times else None, self._extra(entry.path, st, limit, verify))
                    continue
                if stat.S_ISREG(mode):
                    kind = "f"
                    if st.st_nlink > 1:
                        links.setdefault(st.st_ino, []).append(rel)
                else:
                    kind = stat.filemode(mode)[0]
                tree[rel] = (kind, stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                             self._extra(entry.path, st, limit, verify))
        for group in links.values():
            names = tuple(sorted(group))
            for rel in group:
                tree[rel] = tree[rel] + (names,)
        return tree

    def _extra(self, path: bytes, st: os.stat_result, limit: int | None, verify: bool) -> tuple:
        """(content digest or symlink target, xattrs), remembered per unchanged inode."""
        key = (st.st_ino, st.st_ctime_ns, st.st_size, st.st_mtime_ns)
        if not verify and (hit := self.cache.get(key)) is not None:
            return hit
        if stat.S_ISREG(st.st_mode):
            body = _content(path)
            self.read += 1
        elif stat.S_ISLNK(st.st_mode):
            body = os.readlink(path)
        else:
            body = None
        value = (body, _xattrs(path))
        if limit is not None and st.st_ctime_ns < limit:
            self.cache[key] = value
        return value


def differences(a: dict, b: dict, limit: int = 20) -> list[str]:
    """Readable differences between two walks (empty when identical), at most ``limit``."""
    out = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            if path not in a or path not in b:
                out.append(f"{path!r}: only in {'second' if path not in a else 'first'}")
            else:
                out.append(f"{path!r}: {a[path]!r} != {b[path]!r}")
            if len(out) >= limit:
                break
    return out


def timed_walk(digest: TreeDigest, root: Path | str, frozen_at: float | None = None) -> tuple[dict, float]:
    """``digest.walk`` and its duration in seconds."""
    start = time.monotonic()
    tree = digest.walk(root, frozen_at)
    return tree, time.monotonic() - start
