"""GNU tar as the oracle of a restore: the same image extracted by ``tar -xf`` (as root, owners
and permissions kept) and by ndmpd, each into its own scratch directory beside canaries that
must stay untouched, then compared entry by entry on what a user relies on: type, content or
link target, mode, owner, mtime (ns), user xattrs and which names share an inode."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ndmpd.engine.restore import RestoreOptions, RestoreResult
from tests.engine_helpers import restore_from

TAR = shutil.which("tar")


def _xattrs(path: Path) -> tuple:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names
                        if n.startswith("user.") and not n.startswith("user.ndmpd.")))


def snapshot(root: Path) -> dict[bytes, tuple]:
    """Every entry below ``root`` (root included, as b''): what a restore is judged by."""
    entries: dict[bytes, tuple] = {}
    inodes: dict[int, list[bytes]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames + ([b""] if dirpath == base else []):
            path = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(path, base) if path != base else b""
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    body = f.read()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                body = None
            else:
                body = st.st_rdev
            entries[rel] = (kind, body, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                            st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None,
                            _xattrs(Path(os.fsdecode(path))))
    for names in inodes.values():
        for name in names:
            entries[name] += (tuple(sorted(names)),)
    return entries


@dataclass
class Compared:
    tar: dict[bytes, tuple]
    ndmpd: dict[bytes, tuple]
    result: RestoreResult
    tar_stderr: str

    started: int = 0

    def differences(self, root: bool = False) -> dict[bytes, tuple]:
        """Entry -> (tar's, ndmpd's) where they differ (the target directory itself left out
        unless ``root``; a directory the image never names has the time it was made on each
        side, so its time is not compared)."""
        names = set(self.tar) | set(self.ndmpd)
        return {n: (self.tar.get(n), self.ndmpd.get(n)) for n in sorted(names)
                if (root or n) and self._comparable(self.tar.get(n)) != self._comparable(self.ndmpd.get(n))}

    def _comparable(self, entry: tuple | None) -> tuple | None:
        if entry is not None and entry[0] == stat.S_IFDIR and entry[5] >= self.started:
            return entry[:5] + (None,) + entry[6:]
        return entry


def world(scratch: Path) -> Path:
    """Canaries around the scratch targets: a file, a directory and a symlink outside."""
    outside = scratch / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "canary").write_bytes(b"canary")
    (outside / "dir" / "inner").write_bytes(b"inner")
    os.symlink("canary", outside / "link")
    return outside


def compare(scratch: Path, image: bytes, options: RestoreOptions = RestoreOptions(workers=0),
            tar_args: tuple[str, ...] = ()) -> Compared:
    """Extract ``image`` with tar and with ndmpd; assert nothing outside either target moved."""
    outside = world(scratch)
    before = snapshot(outside)
    started = time.time_ns() - 50_000_000   # (file times come from a clock that may lag a tick)
    stream = scratch / "image.tar"
    stream.write_bytes(image)
    by_tar, by_ndmpd = scratch / "tar", scratch / "ndmpd"
    by_tar.mkdir()
    by_ndmpd.mkdir()
    done = subprocess.run([TAR, "-xf", str(stream), "--same-owner", "--same-permissions", "--xattrs",
                           "--xattrs-include=user.*", "-C", str(by_tar), *tar_args],
                          capture_output=True, text=True, timeout=30)
    result = restore_from(stream, by_ndmpd, options)
    assert snapshot(outside) == before, "something outside the targets changed"
    return Compared(snapshot(by_tar), snapshot(by_ndmpd), result, done.stderr, started)
