"""Incrementals: level 0 + 1 + 2 restored in order give the tree as it was at level 2,
deletions, renames and replacements included, through our restore and GNU tar's -G."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from ndmpd.engine.dumpdates import DumpDates, parse_token
from ndmpd.engine.job import DumpRequest, dump_volume
from tests.engine_helpers import gnu_tar, make_level_1_changes, restore_from
from tests.trees import describe, differences


def _dump(src: Path, state: Path, stream: Path, **kwargs):
    with open(stream, "wb") as out:
        request = DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", **kwargs)
        return dump_volume(request, out.fileno())


def _names(stream: Path) -> set[str]:
    with tarfile.open(stream) as archive:
        return {m.name for m in archive.getmembers()}


def _renames_in_root(stream: Path) -> list[bytes]:
    """The first and last path of each directory moved by the root dumpdir's R/T records."""
    with tarfile.open(stream) as archive:
        root = next(m for m in archive.getmembers() if m.name == ".")
    entries = root.pax_headers["GNU.dumpdir"].encode("utf-8", "surrogateescape").split(b"\0")
    paths = [entry[1:] for entry in entries if entry[:1] in (b"R", b"T")]
    parked = dict(zip(paths[1::2], paths[0::2]))          # temporary -> old (first phase)
    return [p for temp, new in zip(paths[len(paths) // 2::2], paths[len(paths) // 2 + 1::2])
            for p in (parked[temp], new)]


def _settle() -> None:
    time.sleep(0.02)       # ctime/mtime after the recorded dump date, even on coarse clocks


@pytest.fixture
def history(tmp_path):
    src, state = tmp_path / "src", tmp_path / "state"
    (src / "a" / "b").mkdir(parents=True)
    (src / "c").mkdir()
    (src / "a" / "one").write_text("1")
    (src / "a" / "b" / "two").write_text("2")
    (src / "c" / "three").write_text("3")
    (src / "keep").write_text("keep")
    (src / "same").write_text("unchanged all along")
    streams = [tmp_path / f"l{n}.tar" for n in range(3)]
    _dump(src, state, streams[0], level=0, update=True)
    _settle()
    make_level_1_changes(src, "inside")
    _dump(src, state, streams[1], level=1, update=True)
    _settle()
    (src / "c").rename(src / "cc")
    (src / "keep.new").write_text("replaced")
    (src / "keep.new").rename(src / "keep")
    shutil.rmtree(src / "a" / "moved")
    os.symlink("cc/new", src / "a" / "link")
    _dump(src, state, streams[2], level=2, update=True)
    return src, state, streams


def test_levels_restore_to_the_tree_at_the_last_level(history, tmp_path):
    src, _, streams = history
    out = tmp_path / "out"
    for stream in streams:
        result = restore_from(stream, out)
        assert result.refused == []
    assert differences(describe(src), describe(out)) == []


def test_gnu_tar_replays_our_incrementals_too(history, tmp_path):
    src, _, streams = history
    out = tmp_path / "gnu"
    out.mkdir()
    for stream in streams:
        gnu_tar("-x", "-G", "-p", "-f", str(stream), cwd=out)
    assert differences(describe(src), describe(out)) == []


def test_incrementals_hold_only_what_changed(history):
    _, state, streams = history
    level1, level2 = _names(streams[1]), _names(streams[2])
    assert "./same" not in level1 and "./same" not in level2
    assert "./a/moved/two" not in level1, "a renamed directory moves by a rename record, not resent"
    assert _renames_in_root(streams[1]) == [b"a/b", b"a/moved"], "from the old path, through a temporary name"
    assert _renames_in_root(streams[2]) == [b"c", b"cc"]
    assert "./c/new" in level1 and "./keep" not in level1
    assert "./cc/new" not in level2 and "./keep" in level2 and "./a/link" in level2
    dates = DumpDates(state).levels("vol")
    assert sorted(dates) == [0, 1, 2] and dates[0] < dates[1] < dates[2]


def test_levels_above_nine_and_fallback_to_full(tmp_path):
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    (src / "old").write_text("old")
    first = _dump(src, state, tmp_path / "l3.tar", level=3, update=True)
    assert first.base.since_ns is None and first.level == 3          # nothing below 3 yet: full
    _settle()
    (src / "fresh").write_text("fresh")
    l12 = _dump(src, state, tmp_path / "l12.tar", level=12, update=True)
    assert l12.level == 12 and l12.base.since_ns == int(first.dump_date)
    assert _names(tmp_path / "l12.tar") >= {"./fresh"} and "./old" not in _names(tmp_path / "l12.tar")
    l10 = _dump(src, state, tmp_path / "l10.tar", level=10, update=True)
    assert l10.base.since_ns == int(first.dump_date), "level 10 is based on level 3, not 12"


def test_token_based_incremental_with_and_without_a_directory_index(tmp_path):
    src, state = tmp_path / "src", tmp_path / "state"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    full = _dump(src, state, tmp_path / "full.tar", level=0, update=False)
    assert DumpDates(state).levels("vol") == {}
    _settle()
    (src / "d").rename(src / "renamed")
    (src / "other").write_text("other")
    since = _dump(src, state, tmp_path / "inc.tar", base_token=full.dump_date)
    assert since.base.since_ns == parse_token(full.dump_date)
    assert {"./renamed/f", "./other"} <= _names(tmp_path / "inc.tar")
    with pytest.raises(ValueError):
        parse_token("yesterday")
    assert parse_token("1700000000") == 1700000000 * 10**9


def _level_one_tree(tmp_path: Path) -> tuple[Path, int, set[bytes]]:
    """60 files in three directories, 3 of them changed after the base; (root, base, changed names)."""
    src = tmp_path / "walk"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (src / f"d{d}" / f"f{f:02d}").write_bytes(b"x" * (f * 100))
    _settle()
    since = time.time_ns()
    _settle()
    changed = {b"f03", b"f11", b"f17"}
    for d, name in enumerate(sorted(changed)):
        (src / f"d{d}" / os.fsdecode(name)).write_bytes(b"changed")
    return src, since, changed


@pytest.mark.parametrize("readahead", ["off", "auto", "always"])
def test_a_level_one_walk_opens_no_unchanged_file(tmp_path, monkeypatch, readahead):
    """A level 1 costs a stat per unchanged file: it is never opened (no read, no xattr probe)."""
    from ndmpd.engine.dump import DumpOptions, Dumper
    from ndmpd.engine.sink import FdSink
    src, since, changed = _level_one_tree(tmp_path)
    opened: list[bytes] = []
    real_open = os.open

    def counting_open(path, flags, mode=0o777, *, dir_fd=None):
        opened.append(os.fsencode(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)
    monkeypatch.setattr(os, "open", counting_open)
    with open(tmp_path / "l1.tar", "wb") as out:
        sink = FdSink(out.fileno())
        result = Dumper(src, sink, DumpOptions(since_ns=since, readahead=readahead)).run()
        sink.close()
    files = {name for name in opened if name.startswith(b"f")}
    assert files <= changed and result.files == 3
    assert {os.path.basename(m).encode() for m in _names(tmp_path / "l1.tar") if "/f" in m} == changed


def test_a_level_one_is_the_same_image_with_and_without_read_ahead(tmp_path):
    from ndmpd.engine.dump import DumpOptions, Dumper
    from ndmpd.engine.sink import FdSink
    src, since, _ = _level_one_tree(tmp_path)
    images = []
    for readahead in ("off", "always"):
        with open(tmp_path / f"ra{readahead}.tar", "wb") as out:
            sink = FdSink(out.fileno())
            Dumper(src, sink, DumpOptions(since_ns=since, readahead=readahead)).run()
            sink.close()
        images.append((tmp_path / f"ra{readahead}.tar").read_bytes())
    assert images[0] == images[1]
