"""An incremental's second process (stat_helper.py): the same image, less work in the dump,
and a helper that refuses, dies, hangs or is cancelled never costs a byte of the stream."""

from __future__ import annotations

import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

from ndmpd.engine.dump import DumpOptions, Dumper
from ndmpd.engine.sink import FdSink
from ndmpd.engine.stat_helper import StatHelper
from tests.engine_helpers import build_every_case, wait_for_stat_helper


def _dump(src: Path, stream: Path, **options) -> Dumper:
    with open(stream, "wb") as out:
        sink = FdSink(out.fileno())
        dumper = Dumper(src, sink, DumpOptions(readahead="off", **options))
        dumper.run()
        sink.close()
    return dumper


@pytest.fixture(autouse=True)
def fixed_salt(monkeypatch):
    """The rename records' temporary names are random per dump: the same for these."""
    monkeypatch.setattr(os, "urandom", lambda n: b"\0" * n)


@pytest.fixture
def patient(monkeypatch):
    """The dump waits for the helper's start (else a tree this small is listed before it)."""
    wait_for_stat_helper(monkeypatch)


def _settle() -> None:
    time.sleep(0.02)       # ctime/mtime after the base, even on coarse clocks


@pytest.fixture
def changed_tree(tmp_path):
    """Every kind of entry, 12 directories of 30 files (some nested), a level 0's directory
    index, then after the base: changed files, a new directory, a renamed one, a deleted file,
    a file turned into a directory."""
    src = build_every_case(tmp_path / "src")
    for d in range(12):
        folder = src / f"many{d:02d}" / ("inner" if d % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(30):
            (folder / f"f{f:02d}").write_bytes(bytes([f]) * (f * 37))
    os.link(src / "many01" / "f00", src / "many02" / "link-to-f00")
    level0 = _dump(src, tmp_path / "l0.tar")
    _settle()
    since = time.time_ns()
    _settle()
    for d in range(0, 12, 4):
        (src / f"many{d + 1:02d}" / "f07").write_bytes(b"changed")
    (src / "many05" / "f01").unlink()
    (src / "many04" / "f02").unlink()
    (src / "many04" / "f02").mkdir()
    (src / "brand-new" / "deeper").mkdir(parents=True)
    (src / "brand-new" / "deeper" / "x").write_bytes(b"new")
    os.rename(src / "many07", src / "many07-renamed")
    os.utime(src / "many01" / "f00")            # its hard link's ctime moves too
    return src, since, level0.result.dir_index


@pytest.mark.parametrize("known", [True, False], ids=["index", "no-index"])
@pytest.mark.parametrize("lean", [False, True], ids=["tape", "lean"])
@pytest.mark.parametrize("wait", [True, False], ids=["helper-up", "helper-starting"])
def test_the_image_is_byte_for_byte_the_one_without_the_helper(changed_tree, tmp_path, request, known, lean, wait):
    src, since, index = changed_tree
    if wait:
        request.getfixturevalue("patient")
    options = dict(since_ns=since, known_dirs=index if known else None, lean=lean and known,
                   excludes=("f2?",))
    _dump(src, tmp_path / "alone.tar", stat_helper=False, **options)
    dumper = _dump(src, tmp_path / "helped.tar", **options)
    assert (tmp_path / "alone.tar").read_bytes() == (tmp_path / "helped.tar").read_bytes()
    assert dumper.result.files >= 4


def test_the_dump_stats_only_its_share_and_what_it_writes(changed_tree, tmp_path, monkeypatch, patient):
    src, since, index = changed_tree
    entries = sum(len(names) + len(dirs) for _, dirs, names in os.walk(src))
    stats = []

    def counting(real):
        def counted(path, *args, **kwargs):
            stats.append(path)
            return real(path, *args, **kwargs)
        return counted
    monkeypatch.setattr(os, "stat", counting(os.stat))
    monkeypatch.setattr(os, "lstat", counting(os.lstat))
    dumper = _dump(src, tmp_path / "helped.tar", since_ns=since, known_dirs=index)
    assert dumper.result.files >= 4
    assert len(stats) < 0.8 * entries, "the helper listed none of the directories"
    assert dumper._helper.pid == 0                     # reaped at the end


def test_what_changes_after_the_helper_answered_is_dumped_as_the_dump_finds_it(tmp_path, monkeypatch, patient):
    """The helper's ``D`` and ``Y`` are stat'ed again: a file gone since its answer is left out,
    and one that became a directory is a directory."""
    src = tmp_path / "src"
    for d in ("a", "b"):
        (src / d).mkdir(parents=True)
        for f in ("gone", "kind", "kept"):
            (src / d / f).write_bytes(b"x")
    _settle()
    since = time.time_ns()
    _settle()
    for d in ("a", "b"):
        for f in ("gone", "kind", "kept"):
            (src / d / f).write_bytes(b"changed")
    real_take = StatHelper.take
    answered = []

    def stale_take(self, rel, stamp=None):
        answer = real_take(self, rel, stamp)
        if answer is not None:
            answered.append(rel)
            folder = src / os.fsdecode(rel)
            (folder / "gone").unlink()
            (folder / "kind").unlink()
            (folder / "kind").mkdir()
        return answer
    monkeypatch.setattr(StatHelper, "take", stale_take)
    _dump(src, tmp_path / "helped.tar", since_ns=since)
    assert answered, "the helper answered for no directory"
    members = {m.name.rstrip("/"): m for m in tarfile.open(tmp_path / "helped.tar")}
    for d in ("a", "b"):
        if d.encode() in answered:
            assert f"./{d}/gone" not in members and members[f"./{d}/kind"].isdir()
            assert members[f"./{d}"].pax_headers["GNU.dumpdir"].split("\0")[:2] == ["Ykept", "Dkind"]
        else:
            assert {f"./{d}/gone", f"./{d}/kind", f"./{d}/kept"} <= set(members)


def test_a_full_dump_starts_no_helper(tmp_path, monkeypatch):
    src = build_every_case(tmp_path / "src")
    monkeypatch.setattr(os, "posix_spawn", lambda *a, **k: pytest.fail("a level 0 needs no helper"))
    dumper = _dump(src, tmp_path / "l0.tar")
    assert dumper._helper is None and dumper.result.files > 5


def test_a_helper_that_cannot_start_leaves_the_dump_to_list_alone(changed_tree, tmp_path, monkeypatch):
    src, since, index = changed_tree
    _dump(src, tmp_path / "alone.tar", stat_helper=False, since_ns=since, known_dirs=index)

    def no_spawn(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "posix_spawn", no_spawn)
    _dump(src, tmp_path / "unhelped.tar", since_ns=since, known_dirs=index)
    assert (tmp_path / "alone.tar").read_bytes() == (tmp_path / "unhelped.tar").read_bytes()


def _helper_on(src: Path) -> tuple[StatHelper, int, threading.Event]:
    cancel = threading.Event()
    root = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    return StatHelper(root, 0, cancel), root, cancel


def test_a_directory_that_is_not_the_one_the_dump_saw_is_refused(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_bytes(b"x")
    os.symlink("b", tmp_path / "link")
    a, b = os.lstat(tmp_path / "a"), os.lstat(tmp_path / "b")
    helper, root, _ = _helper_on(tmp_path)
    try:
        assert helper.ask(b"a", b.st_ino, b.st_dev)       # another directory now at that name
        assert helper.ask(b"link", b.st_ino, b.st_dev)    # a symlink to it is never followed
        assert helper.ask(b"b", b.st_ino, b.st_dev)
        assert helper.ready(20)
        assert helper.take(b"link") is None
        assert helper.take(b"a") is None
        assert helper.take(b"b") == [b"Yf"]
        assert a.st_ino != b.st_ino
    finally:
        helper.stop()
        os.close(root)


def test_a_helper_that_dies_or_hangs_costs_only_its_share(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    helper, root, cancel = _helper_on(tmp_path)
    try:
        st = os.lstat(tmp_path / "a")
        assert helper.ask(b"a", st.st_ino, st.st_dev)
        assert helper.ready(20)
        assert helper.take(b"a") == []
        os.kill(helper.pid, signal.SIGSTOP)                     # hangs: the job is cancelled
        st = os.lstat(tmp_path / "b")
        assert helper.ask(b"b", st.st_ino, st.st_dev)
        threading.Timer(0.3, cancel.set).start()
        began = time.monotonic()
        assert helper.take(b"b") is None
        assert time.monotonic() - began < 5
        cancel.clear()
        pid = helper.pid
        os.kill(pid, signal.SIGKILL)                            # dies: nothing more is asked of it
        assert helper.take(b"b") is None
        assert not helper.ask(b"b", st.st_ino, st.st_dev)
    finally:
        helper.stop()
        os.close(root)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)                                         # reaped


def test_a_directory_taken_back_while_the_helper_starts_is_listed_once(tmp_path):
    """Before its first answer the dump does not wait: it takes the directory back, and the
    helper's answer, if it comes, is dropped; what it answers later is still in order."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / f"f-{d}").write_bytes(b"x")
    a, b = os.lstat(tmp_path / "a"), os.lstat(tmp_path / "b")
    helper, root, _ = _helper_on(tmp_path)
    try:
        assert helper.ask(b"a", a.st_ino, a.st_dev)
        assert helper.ask(b"b", b.st_ino, b.st_dev)
        first = helper.take(b"a")                       # most likely still starting: None
        assert helper.ready(20)
        assert helper.take(b"b") == [b"Yf-b"]
        assert first in (None, [b"Yf-a"])
    finally:
        helper.stop()
        os.close(root)
