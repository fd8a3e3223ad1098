"""Level 1s against changes a quick walk could miss: a file whose mtime was put back but whose
ctime moved (chmod, chown, rename, xattr, truncate), a file renamed into an unchanged
directory, a directory replaced by a symlink, a hard link added to an old file, odd and long
names, a 50,000-entry directory, and a stat helper that dies mid-walk. Level 0 + level 1
restored must give the live tree, whether the stat helper answers, is not used, or dies."""

from __future__ import annotations

import os
import shutil
import signal
import tarfile
import time
from pathlib import Path

import pytest

from ndmpd.engine.dump import DumpOptions, Dumper
from ndmpd.engine.job import DumpRequest, dump_volume
from ndmpd.engine.restore import RestoreOptions
from ndmpd.engine.sink import FdSink
from ndmpd.engine.stat_helper import StatHelper
from tests.engine_helpers import IS_ROOT, restore_from, wait_for_stat_helper
from tests.trees import describe, differences

OLD = 1_000_000_000_123_456_789          # 2001: every "unchanged" mtime below is this one


def _dump(src: Path, state: Path, stream: Path, level: int):
    with open(stream, "wb") as out:
        return dump_volume(DumpRequest(source=src, key="vol", state_dir=state, level=level, update=True,
                                       snapshot="none"), out.fileno())


def _settle() -> None:
    time.sleep(0.02)       # ctime after the recorded dump date, even on coarse clocks


def _old(path: Path) -> None:
    os.utime(path, ns=(OLD, OLD), follow_symlinks=False)


@pytest.fixture(params=["helper-up", "alone", "helper-killed"])
def helper(request, monkeypatch):
    """How the level 1 lists: with the helper answering (the dump waits for its start), by
    itself, or with a helper killed after its first answer (the dump lists the rest itself)."""
    if request.param == "alone":
        monkeypatch.setattr(StatHelper, "ask", lambda self, rel, ino, dev: False)
        return request.param
    real_take = StatHelper.take
    wait_for_stat_helper(monkeypatch)
    if request.param == "helper-killed":
        def take_then_kill(self, rel, stamp=None):
            answer = real_take(self, rel, stamp)
            if self.pid:
                os.kill(self.pid, signal.SIGKILL)
            return answer
        monkeypatch.setattr(StatHelper, "take", take_then_kill)
    return request.param


def _tree(src: Path) -> None:
    for folder in ("a", "b", "c", "d/inner", "e", "quiet"):
        (src / folder).mkdir(parents=True)
    for name in ("chmod", "chown", "renamed-old", "xattr", "linked", "trunc", "recreated", "same"):
        (src / "a" / name).write_bytes(b"contents of " + name.encode())
    (src / "b" / "moving").write_bytes(b"moves into c")
    (src / "d" / "inner" / "f").write_bytes(b"in a directory that becomes a symlink")
    (src / "e" / "file-to-dir").write_bytes(b"f")
    (src / "e" / "dir-to-file").mkdir()
    (src / "e" / "dir-to-file" / "x").write_bytes(b"x")
    (src / "quiet" / "q").write_bytes(b"nothing changes here")
    odd = [b"new\nline", b"bad\xff\xfe", b"L" * 255, b" lead and trail "]
    for name in odd:
        (src / "c").joinpath(os.fsdecode(name)).write_bytes(b"odd " + name)
    for path in sorted(src.rglob("*"), reverse=True):
        _old(path)


def _change(src: Path) -> None:
    a = src / "a"
    os.chmod(a / "chmod", 0o600)
    os.chown(a / "chown", 4321, 8765)
    os.rename(a / "renamed-old", a / "renamed-new")
    os.setxattr(a / "xattr", "user.note", b"added after the base")
    os.link(a / "linked", src / "c" / "hard-link")
    os.truncate(a / "trunc", 4)
    (a / "recreated").unlink()
    (a / "recreated").write_bytes(b"a new file under an old name")
    os.rename(src / "b" / "moving", src / "c" / "moved-in")
    shutil.rmtree(src / "d")
    os.symlink("c", src / "d")
    (src / "e" / "file-to-dir").unlink()
    (src / "e" / "file-to-dir").mkdir()
    shutil.rmtree(src / "e" / "dir-to-file")
    (src / "e" / "dir-to-file").write_bytes(b"now a file")
    (src / "c" / "new\nline").write_bytes(b"changed, mtime put back")
    os.chmod(src / "e", 0o750)
    for path in [a / "chmod", a / "chown", a / "renamed-new", a / "xattr", a / "linked", a / "trunc",
                 a / "recreated", src / "c" / "moved-in", src / "e" / "file-to-dir", src / "e" / "dir-to-file",
                 src / "c" / "new\nline", src / "e", a, src / "b", src / "c"]:
        _old(path)                    # every mtime as before: only the ctimes tell


@pytest.mark.skipif(not IS_ROOT, reason="chown needs root")
def test_level_0_and_1_restore_to_the_live_tree_when_only_ctimes_moved(tmp_path, helper):
    src, state = tmp_path / "src", tmp_path / "state"
    _tree(src)
    _dump(src, state, tmp_path / "l0.tar", 0)
    _settle()
    _change(src)
    _dump(src, state, tmp_path / "l1.tar", 1)
    with tarfile.open(tmp_path / "l1.tar") as archive:
        written = {member.name for member in archive.getmembers() if member.isfile()}
    assert "./quiet/q" not in written and "./a/same" not in written, "the level 1 is no level 1"
    out = tmp_path / "out"
    for level in (0, 1):
        result = restore_from(tmp_path / f"l{level}.tar", out)
        assert not result.refused, result.refused
    assert differences(describe(src), describe(out)) == []


def test_a_directory_of_50000_entries_answers_over_many_reads(tmp_path, helper):
    """Its helper answer (1.6 MB) spans many pipe reads; the level 1 takes exactly the three
    files whose ctimes moved, and its dumpdir lists every name."""
    if helper == "alone":
        pytest.skip("the helper's answer is what is under test")
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    names = [f"entry-{n:06d}-padded-to-thirty" for n in range(50_000)]
    for name in names:
        os.close(os.open(big / name, os.O_CREAT | os.O_WRONLY, 0o644))
    (big / "sub").mkdir()               # a directory among them: asked for while the answer is long
    _settle()
    since = time.time_ns()              # (the base: what a level 0 now would record)
    _settle()
    changed = [names[0], names[25_000], names[-1]]
    for name in changed:
        os.chmod(big / name, 0o600)
    _dumper_image(src, tmp_path / "l1.tar", since_ns=since)
    with tarfile.open(tmp_path / "l1.tar") as archive:
        members = archive.getmembers()
    assert sorted(m.name for m in members if m.isfile()) == sorted(f"./big/{name}" for name in changed)
    listing = next(m for m in members if m.name == "./big").pax_headers["GNU.dumpdir"].split("\0")
    assert {entry[1:] for entry in listing if entry} == set(names) | {"sub"}


def _dumper_image(src: Path, stream: Path, **options):
    with open(stream, "wb") as out:
        sink = FdSink(out.fileno())
        dumper = Dumper(str(src), sink, DumpOptions(readahead="off", **options))
        dumper.run()
        sink.close()
    return dumper.result


def test_a_rename_the_restore_cannot_finish_leaves_no_temporary_name(tmp_path):
    """A deleted directory's inode reused by a new one reads as a rename to where a file of the
    base still is; the second phase cannot land there, and the directory parked under its
    temporary name went back where it was (then the image deleted it, as the live tree did)."""
    src = tmp_path / "src"
    (src / "d" / "inner").mkdir(parents=True)
    (src / "d" / "inner" / "f").write_bytes(b"f")
    (src / "e").mkdir()
    (src / "e" / "file-to-dir").write_bytes(b"a file at the base")
    base = _dumper_image(src, tmp_path / "l0.tar")
    _settle()
    since = time.time_ns()
    _settle()
    inner = os.stat(src / "d" / "inner").st_ino
    shutil.rmtree(src / "d")
    (src / "e" / "file-to-dir").unlink()
    (src / "e" / "file-to-dir").mkdir()
    index = {ino: path for ino, path in base.dir_index.items() if ino != inner}
    index[os.stat(src / "e" / "file-to-dir").st_ino] = b"d/inner"      # as when the inode is reused
    _dumper_image(src, tmp_path / "l1.tar", since_ns=since, known_dirs=index)
    with tarfile.open(tmp_path / "l1.tar") as archive:
        root = next(m for m in archive.getmembers() if m.name == ".")
    assert "\0Rd/inner\0" in root.pax_headers["GNU.dumpdir"], "the image holds no rename"
    out = tmp_path / "out"
    restore_from(tmp_path / "l0.tar", out)
    result = restore_from(tmp_path / "l1.tar", out, RestoreOptions(incremental=True))
    assert differences(describe(src), describe(out)) == []
    assert any("not replayed" in warning for warning in result.warnings)
