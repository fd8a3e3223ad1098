"""Trees with every kind of file, and one-call dump/restore through the engine API."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

from ndmpd.engine.dump import DumpOptions, Dumper, DumpResult
from ndmpd.engine.restore import RestoreOptions, Restorer, RestoreResult
from ndmpd.engine.sink import FdSink
from ndmpd.engine.stat_helper import StatHelper

IS_ROOT = os.geteuid() == 0


def acl_blob(other_uid: int = 65534) -> bytes:
    """A POSIX access ACL (user::rw-, user:UID:r--, group::r--, mask::r--, other::r--)."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, other_uid), (0x04, 4, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def build_every_case(root: Path) -> Path:
    """Regular, empty, sparse, hard-linked (across directories), symlinks (short and 300-byte
    targets), FIFO, devices (root only), xattrs, an ACL, ns mtimes, long and non-UTF-8 names,
    owners (root only), special modes, an empty directory with its own metadata."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "dir" / "file").write_bytes(b"hello\n" * 1000)
    (root / "zero").write_bytes(b"")
    os.link(root / "dir" / "file", root / "dir" / "sub" / "hard")
    os.link(root / "dir" / "file", root / "top-hard")
    os.symlink("dir/file", root / "rel_link")
    os.symlink("/nonexistent/" + "x" * 290, root / "long_link")
    os.mkfifo(root / "fifo")
    with open(root / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(b"island" * 1000)
        f.seek((64 << 20) - 5)
        f.write(b"tail!")
    with open(root / "hole-at-end", "wb") as f:
        f.write(b"head" * 2000)
        f.truncate(32 << 20)
    deep = root / "deep" / "/".join(["d" * 60] * 5)
    deep.mkdir(parents=True)
    (deep / ("n" * 200)).write_bytes(b"deep file")
    (root / os.fsdecode(b"caf\xe9-latin1")).write_bytes(b"latin-1 name")
    (root / "ünïcödé name").write_bytes(b"utf-8 name")
    os.setxattr(root / "dir" / "file", "user.comment", b"binary \x00\xff value")
    os.setxattr(root / "dir", "user.dir-attr", b"on a directory")
    os.setxattr(root / "zero", "system.posix_acl_access", acl_blob())
    os.chmod(root / "dir" / "sub", 0o2750)
    os.chmod(root / "empty", 0o1777)
    os.chmod(root / "zero", 0o640)
    if IS_ROOT:
        os.mknod(root / "chr", 0o620 | 0o020000, os.makedev(1, 3))
        os.mknod(root / "blk", 0o660 | 0o060000, os.makedev(7, 200))
        os.chown(root / "dir" / "file", 1234, 5678)
        os.chown(root / "rel_link", 4321, 8765, follow_symlinks=False)
        os.chown(root / "empty", 65534, 65534)
    stamp = 981173106_987654321
    for path in [root / "dir" / "file", root / "empty", root / "deep", root / "sparse", root / "dir" / "sub"]:
        os.utime(path, ns=(stamp, stamp))
    os.utime(root / "rel_link", ns=(915148800_123456789, 915148800_123456789), follow_symlinks=False)
    os.utime(root, ns=(stamp, stamp))
    return root


def dump_to(root: Path, stream: Path, options: DumpOptions = DumpOptions(), **kwargs) -> DumpResult:
    with open(stream, "wb") as out:
        sink = FdSink(out.fileno())
        try:
            return Dumper(str(root), sink, options, **kwargs).run()
        finally:
            sink.close(drain=False)


def restore_from(stream: Path, target: Path, options: RestoreOptions = RestoreOptions(), offset: int = 0,
                 **kwargs) -> RestoreResult:
    with open(stream, "rb") as source:
        return Restorer(str(target), source.fileno(), options, **kwargs).run(offset)


def gnu_tar(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(["tar", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def wait_for_stat_helper(monkeypatch) -> None:
    """Make a dump wait for its stat helper's start (else a tree this small is listed before
    the helper answers, and the helper's answers go untested)."""
    real_ask = StatHelper.ask

    def ask_and_wait(self, rel, ino, dev):
        asked = real_ask(self, rel, ino, dev)
        if asked:
            assert self.ready(20), "the helper never answered"
        return asked
    monkeypatch.setattr(StatHelper, "ask", ask_and_wait)


def make_level_1_changes(src: Path, new_inside: str) -> None:
    """The changes the level-1 tests restore over a level 0 of their tree: a deletion, a
    directory renamed, a new file, and a file become a directory holding ``new_inside``."""
    (src / "a" / "one").unlink()
    (src / "a" / "b").rename(src / "a" / "moved")
    (src / "c" / "new").write_text("new")
    (src / "c" / "three").unlink()
    (src / "c" / "three").mkdir()
    (src / "c" / "three" / new_inside).write_text("file became a directory")
