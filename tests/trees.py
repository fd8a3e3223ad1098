"""Describe a directory tree completely, so two trees can be compared for identity."""

from __future__ import annotations

import hashlib
import os
import stat

from ndmpd.engine import sparse
from ndmpd.engine.xattrs import RESERVED_PREFIX


def _xattrs(path: bytes) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(RESERVED_PREFIX):
            continue                 # ndmpd's own bookkeeping (the restore's record), not the tree's
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            pass
    return out


def describe(root: str | bytes, times: bool = True, owners: bool = True, dir_times: bool = True) -> dict:
    """path -> everything a restore must reproduce (content digest, holes, links, metadata)."""
    root = os.fsencode(root)
    tree: dict = {}
    inodes: dict = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [b""] if dirpath == root else []:
            pass
        for name in dirnames + filenames + ([b"."] if dirpath == root else []):
            path = os.path.join(dirpath, name) if name != b"." else root
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry = {"mode": stat.filemode(st.st_mode), "xattrs": _xattrs(path)}
            if owners:
                entry["owner"] = (st.st_uid, st.st_gid)
            if times and (dir_times or not stat.S_ISDIR(st.st_mode)) and rel != b".":
                entry["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256()
                with open(path, "rb") as f:       # holes read as zeros: hash the data extents only
                    holes = sparse.data_extents(f.fileno(), st.st_size)
                    for offset, length in holes:
                        digest.update(b"@%d:" % offset)
                        f.seek(offset)
                        while length:
                            block = f.read(min(length, 1 << 20))
                            if not block:
                                break
                            digest.update(block.rstrip(b"\0") and block)
                            length -= len(block)
                entry.update(size=st.st_size, sha=digest.hexdigest(),
                             sparse=not sparse.is_dense(holes, st.st_size) and st.st_blocks * 512 < st.st_size)
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            tree[rel] = entry
    for group in inodes.values():
        for rel in group:
            tree[rel]["links"] = tuple(sorted(group))
    return tree


def differences(a: dict, b: dict) -> list[str]:
    """Human-readable differences between two descriptions (empty when identical)."""
    out = []
    for path in sorted(set(a) | set(b)):
        if path not in a or path not in b:
            out.append(f"{path!r}: only in {'second' if path not in a else 'first'}")
        elif a[path] != b[path]:
            keys = [k for k in set(a[path]) | set(b[path]) if a[path].get(k) != b[path].get(k)]
            out.append(f"{path!r}: " + ", ".join(f"{k} {a[path].get(k)!r} != {b[path].get(k)!r}" for k in keys))
    return out
