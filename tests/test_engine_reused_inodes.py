"""A directory made after another was deleted often gets the deleted one's inode number (ext4,
XFS). An incremental takes it as new, whole, not as the deleted one renamed (GNU tar ``-g`` does
take it for a rename), so level 0 + 1 restore to the tree through our restore and GNU tar's,
even where the new directory's files look older than the base; a real rename is still a rename
record; indexes written before stamps still work, by number alone."""

from __future__ import annotations

import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import pytest

from ndmpd.engine import dirid
from ndmpd.engine.dump import DumpOptions
from ndmpd.engine.dumpdates import DumpDates
from ndmpd.engine.job import DumpRequest, dump_volume
from ndmpd.engine.journal import ChangeJournal
from ndmpd.engine.restore import RestoreOptions
from ndmpd.engine.stat_helper import StatHelper
from tests.engine_helpers import dump_to, gnu_tar, restore_from, wait_for_stat_helper
from tests.loopfs import ext4_mount, tmpfs_mount
from tests.trees import describe, differences

TRIES = 200             # directories made, at most, for one to get the wanted inode number


@pytest.fixture(params=["ext4", "tmpfs"])
def volume(request, tmp_path):
    """A file system of the test's own, where inode numbers come only from the test."""
    mount = ext4_mount if request.param == "ext4" else tmpfs_mount
    with mount(tmp_path) as mnt:
        yield mnt


def _restores_as_the_source_by_ndmpd_and_gnu_tar(src: Path, streams: list[Path], tmp_path: Path) -> None:
    """The level 0 and 1 ``streams`` restored in turn by ndmpd and by ``tar -G`` both give ``src``."""
    ours, theirs = tmp_path / "ours", tmp_path / "gnu"
    theirs.mkdir()
    for stream in streams:
        assert restore_from(stream, ours).refused == []
        gnu_tar("-x", "-G", "-p", "-f", str(stream), cwd=theirs)
    assert differences(describe(src), describe(ours)) == []
    assert differences(describe(src), describe(theirs)) == []


def _dump(src: Path, state: Path, stream: Path, **kwargs):
    with open(stream, "wb") as out:
        return dump_volume(DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", **kwargs),
                           out.fileno())


def _root_renames(stream: Path) -> list[bytes]:
    """The root dumpdir's rename records (R/T entries), in order."""
    with tarfile.open(stream) as archive:
        root = next(m for m in archive.getmembers() if m.name == ".")
    entries = root.pax_headers["GNU.dumpdir"].encode("utf-8", "surrogateescape").split(b"\0")
    return [entry for entry in entries if entry[:1] in (b"R", b"T")]


def _seed(src: Path) -> dict[str, int]:
    """``old`` (files, a subdirectory, an xattr, its own mode) to be deleted, and ``moving`` to
    be renamed; their inode numbers."""
    (src / "old" / "sub").mkdir(parents=True)
    (src / "moving").mkdir()
    (src / "old" / "f1").write_text("only in old")
    (src / "old" / "same").write_text("old's same")
    (src / "old" / "sub" / "g").write_text("old's g")
    (src / "moving" / "m").write_text("moves along")
    os.setxattr(src / "old", "user.mark", b"old's")
    os.chmod(src / "old", 0o700)
    return {name: os.stat(src / name).st_ino for name in ("old", "old/sub")}


def _make_with_number(parent: Path, name: str, ino: int) -> None:
    """Make directory ``parent/name`` with inode number ``ino`` (free now); the directories
    made on the way that got another number stay, renamed; skips where none gets it."""
    for n in range(TRIES):
        (parent / name).mkdir()
        if os.stat(parent / name).st_ino == ino:
            return
        (parent / name).rename(parent / f"pad-{name}-{n}")
    pytest.skip(f"{TRIES} new directories, none given the deleted one's inode number "
                "(tmpfs counts its numbers up and never gives one twice)")


def _delete_and_reuse(src: Path, numbers: dict[str, int]) -> None:
    """``old`` deleted; ``new`` made with its inode number, and ``new/sub`` with old/sub's;
    ``moving`` renamed for real."""
    shutil.rmtree(src / "old")
    _make_with_number(src, "new", numbers["old"])
    _make_with_number(src / "new", "sub", numbers["old/sub"])
    (src / "new" / "same").write_text("new's same")
    (src / "new" / "sub" / "h").write_text("new's h")
    (src / "moving").rename(src / "moved")


def _settle() -> None:
    time.sleep(0.02)       # ctime/mtime after the recorded dump date, even on coarse clocks


def test_a_new_directory_with_a_deleted_ones_number_is_new_not_renamed(volume, tmp_path):
    src, state = volume / "src", tmp_path / "state"
    numbers = _seed(src)
    streams = [tmp_path / "l0.tar", tmp_path / "l1.tar"]
    _dump(src, state, streams[0], level=0, update=True)
    _settle()
    _delete_and_reuse(src, numbers)
    level1 = _dump(src, state, streams[1], level=1, update=True)
    assert level1.base.known_stamps, "the level 0's index has the directories' stamps"
    assert [entry for entry in _root_renames(streams[1]) if not entry.startswith((b"R.", b"T."))] == \
        [b"Rmoving", b"Tmoved"], "the real rename only: new is not old renamed"
    _restores_as_the_source_by_ndmpd_and_gnu_tar(src, streams, tmp_path)


def test_files_older_than_the_base_in_a_reused_directory_still_go(tmp_path):
    """A file made in the clock tick the base was taken in has times before the base (ctime
    comes from the coarse clock): in a directory taken for a renamed one it would be kept from
    the old directory (``same``) or left out (``sub/h``); a new directory goes whole."""
    with ext4_mount(tmp_path) as mnt:
        src = mnt / "src"
        numbers = _seed(src)
        level0 = dump_to(src, tmp_path / "l0.tar", DumpOptions(labels={"volume": "vol", "level": "0"}))
        _delete_and_reuse(src, numbers)
        since = time.time_ns() + 1                   # the base as if taken after these changes
        options = DumpOptions(since_ns=since, known_dirs=level0.dir_index, known_stamps=level0.dir_stamps,
                              labels={"volume": "vol", "level": "1"})
        dump_to(src, tmp_path / "l1.tar", options)
        out = tmp_path / "out"
        for stream in ("l0.tar", "l1.tar"):
            assert restore_from(tmp_path / stream, out).refused == []
        assert (out / "new" / "same").read_text() == "new's same"
        assert (out / "new" / "sub" / "h").read_text() == "new's h"
        assert differences(describe(src), describe(out)) == []


def test_gnu_tar_takes_such_a_directory_for_the_deleted_one_renamed(tmp_path):
    """What GNU tar -g makes of the same changes (for the record): by inode number alone, a
    rename; it still restores the tree, sending a renamed directory's files whole."""
    with ext4_mount(tmp_path) as mnt:
        src, snar, out = mnt / "src", tmp_path / "snar", tmp_path / "out"
        numbers = _seed(src)
        out.mkdir()
        gnu_tar("-C", str(src), "-g", str(snar), "--format=posix", "-cf", str(tmp_path / "l0.tar"), ".")
        _settle()
        _delete_and_reuse(src, numbers)
        made = gnu_tar("-C", str(src), "-g", str(snar), "--format=posix", "-cvf", str(tmp_path / "l1.tar"), ".")
        assert "./new: Directory has been renamed from './old'" in made.stderr.replace("‘", "'").replace("’", "'")
        for stream in ("l0.tar", "l1.tar"):
            gnu_tar("-x", "-G", "-p", "-f", str(tmp_path / stream), cwd=out)
        assert differences(describe(src), describe(out)) == []


@pytest.mark.parametrize("journaled", [False, True])
def test_a_replication_update_takes_it_as_new_too(tmp_path, journaled):
    with ext4_mount(tmp_path) as mnt:
        src, state, replica, stream = mnt / "src", tmp_path / "state", tmp_path / "replica", tmp_path / "u.tar"
        numbers = _seed(src)
        journal = ChangeJournal(src) if journaled else None
        if journal is not None:
            journal.start()
        try:
            time.sleep(0.15)                          # past the lean rule's ctime slack
            token = _dump(src, state, stream, hold="r").dump_date
            assert restore_from(stream, replica, RestoreOptions(whole_copy=True)).refused == []
            _delete_and_reuse(src, numbers)
            update = _dump(src, state, stream, journal=journal, base_token=token, level=1, hold="r")
            assert update.result.dir_stamps, "the held index has stamps"
            assert [e for e in _root_renames(stream) if not e.startswith((b"R.", b"T."))] == [b"Rmoving", b"Tmoved"]
            assert restore_from(stream, replica, RestoreOptions(whole_copy=True)).refused == []
            assert differences(describe(src), describe(replica)) == []
        finally:
            if journal is not None:
                journal.stop()


def test_a_directory_moved_into_a_new_one_of_its_old_parents_number_moves_by_a_record(tmp_path):
    """p deleted after its c moved into a new q that got p's number: q is new, so c is no
    longer "inside p, moved along with it", it moves by a record of its own (not resent)."""
    with ext4_mount(tmp_path) as mnt:
        src, state = mnt / "src", tmp_path / "state"
        (src / "p" / "c" / "d").mkdir(parents=True)
        (src / "p" / "f").write_text("p's f")
        (src / "p" / "c" / "g").write_text("c's g")
        (src / "p" / "c" / "d" / "h").write_text("d's h")
        number = os.stat(src / "p").st_ino
        streams = [tmp_path / "l0.tar", tmp_path / "l1.tar"]
        _dump(src, state, streams[0], level=0, update=True)
        _settle()
        (src / "p" / "c").rename(src / "parked")
        shutil.rmtree(src / "p")
        _make_with_number(src, "q", number)
        (src / "parked").rename(src / "q" / "c")
        (src / "q" / "new").write_text("new in q")
        _dump(src, state, streams[1], level=1, update=True)
        records = _root_renames(streams[1])
        assert [e for e in records if not e.startswith((b"R.", b"T."))] == [b"Rp/c", b"Tq/c"]
        with tarfile.open(streams[1]) as archive:
            names = set(archive.getnames())
        assert "./q/new" in names and "./q/c/g" not in names, "c moves, q's own files go"
        _restores_as_the_source_by_ndmpd_and_gnu_tar(src, streams, tmp_path)


def test_an_index_from_before_stamps_is_read_and_compares_by_number(tmp_path):
    with ext4_mount(tmp_path) as mnt:
        src, state = mnt / "src", tmp_path / "state"
        numbers = _seed(src)
        level0 = _dump(src, state, tmp_path / "l0.tar", level=0, update=True)
        dates = DumpDates(state)
        date = int(level0.dump_date)
        paths, stamps = dates.load_stamped_index("vol", date)
        assert paths == level0.result.dir_index and stamps == level0.result.dir_stamps
        new = dates._index_path("vol", date)
        old = new.with_suffix(".idx")
        old.write_bytes(b"".join(_old_entry(ino, rel) for ino, rel in paths.items()))   # the format before
        new.unlink()
        assert dates.load_stamped_index("vol", date) == (paths, None)
        _settle()
        _delete_and_reuse(src, numbers)
        level1 = _dump(src, state, tmp_path / "l1.tar", level=1, update=True)
        assert level1.base.known_dirs == paths and level1.base.known_stamps is None
        assert b"Rold" in _root_renames(tmp_path / "l1.tar"), "by number alone, as before: a rename"
        out = tmp_path / "out"
        for stream in ("l0.tar", "l1.tar"):
            assert restore_from(tmp_path / stream, out).refused == []
        assert differences(describe(src), describe(out)) == []
        assert sorted(p.suffix for p in new.parent.iterdir()) == [".idx", ".idx2"]   # level 1's: stamped


def _old_entry(ino: int, rel: bytes) -> bytes:
    """An index entry as written before stamps: inode, path length, path."""
    return ino.to_bytes(8, "little") + len(rel).to_bytes(4, "little") + rel


def test_stamps_are_generations_on_ext4_birth_times_on_tmpfs(volume):
    (volume / "d").mkdir()
    before = dirid.stamp_of(volume / "d")
    kind, _ = dirid.split(before)
    ino = os.stat(volume / "d").st_ino
    (volume / "d").rmdir()
    if volume.name == "ext4":
        assert kind == 1
        _make_with_number(volume, "d", ino)
        assert dirid.stamp_of(volume / "d") != before, "the generation is drawn anew"
    else:
        assert kind == 2 and dirid.split(before)[1] > 0
    assert dirid.join(*dirid.split(before)) == before
    assert dirid.same(None, before) and dirid.same(before, None) and dirid.same(before, before)


def test_the_stat_helper_answer_for_another_directory_of_that_number_is_not_taken(tmp_path, monkeypatch):
    wait_for_stat_helper(monkeypatch)
    with ext4_mount(tmp_path) as mnt:
        (mnt / "a").mkdir()
        (mnt / "a" / "f").write_text("f")
        seen = os.lstat(mnt / "a")
        stamp = dirid.stamp_of(mnt / "a")              # the directory the dump has open
        shutil.rmtree(mnt / "a")
        _make_with_number(mnt, "a", seen.st_ino)       # another one now at that name and number
        root = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        helper = StatHelper(root, 0, threading.Event())
        try:
            assert helper.ask(b"a", seen.st_ino, seen.st_dev)
            assert helper.take(b"a", stamp) is None, "listed another directory: the dump lists its own"
            assert helper.ask(b"a", seen.st_ino, seen.st_dev)
            assert helper.take(b"a", dirid.stamp_of(mnt / "a")) == []
        finally:
            helper.stop()
            os.close(root)


def test_an_index_keeps_stamps_of_either_kind_and_none(tmp_path):
    dates = DumpDates(tmp_path / "state")
    paths = {2: b"", 11: b"a", 12: b"a/b", 13: b"c"}
    stamps = {11: 4_000_000_000, 12: dirid.BIRTH_TAG | ((-5) & ((1 << 64) - 1)), 2: 0}
    dates.save_index("vol", 7, paths, stamps)
    assert dates.load_stamped_index("vol", 7) == (paths, stamps)
    assert dirid.split(stamps[12]) == (2, -5), "a birth time before 1970 comes back"
    assert dates.load_stamped_index("vol", 8) == (None, None)
