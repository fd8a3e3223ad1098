"""Lean replication incrementals (NDMPD_HOLD + BASE_DATE): only directories that changed carry
a dumpdir, so an update's bytes follow the change, not the tree; applied onto the replica's
copy of the base, the result is the master's tree all the same. Tape incrementals still list
every directory."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path

from ndmpd.engine.job import DumpRequest, dump_volume
from ndmpd.engine.restore import RestoreOptions
from tests.engine_helpers import gnu_tar, restore_from
from tests.replication_load import build_tree
from tests.trees import describe, differences

REPLICA = RestoreOptions(whole_copy=True)        # as ndmpd/data/replica_jobs.py restores a dump image


def _dump(src: Path, state: Path, stream: Path, **kwargs):
    with open(stream, "wb") as out:
        request = DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", **kwargs)
        return dump_volume(request, out.fileno())


def _directories(stream: Path) -> dict[str, bool]:
    """Directory member -> whether it carries a dumpdir."""
    with tarfile.open(stream) as archive:
        return {m.name: "GNU.dumpdir" in m.pax_headers for m in archive.getmembers() if m.isdir()}


def _settle() -> None:
    time.sleep(0.15)       # past the lean rule's ctime slack (dump.CTIME_SLACK_NS)


def _deep_tree(src: Path) -> None:
    for top in ("a", "quiet"):
        for mid in ("b", "c"):
            deep = src / top / mid / "d" / "e"
            deep.mkdir(parents=True)
            for n in range(5):
                (deep / f"f{n}").write_text(f"{top}/{mid} {n}")
            (src / top / mid / f"side{mid}").write_text("side")
    (src / "a" / "b" / "d" / "e" / "sub").mkdir()
    (src / "a" / "b" / "d" / "e" / "sub" / "inner").write_text("inner")
    os.link(src / "a" / "c" / "d" / "e" / "f0", src / "a" / "c" / "d" / "e" / "f0.link")


def _change_deep(src: Path) -> None:
    """Deletes, renames, new directories, chmods and rewrites, all under unchanged parents."""
    e = src / "a" / "b" / "d" / "e"
    (e / "f0").unlink()                                         # delete
    (e / "f1").rename(e / "f1.renamed")                         # rename in place
    (e / "f2").rename(src / "a" / "c" / "d" / "f2.moved")       # rename across directories
    shutil.rmtree(e / "sub")                                    # a directory deleted
    (e / "new" / "deeper").mkdir(parents=True)                  # new directories with files
    (e / "new" / "deeper" / "x").write_text("x")
    os.chmod(src / "a" / "c" / "d" / "e" / "f3", 0o600)          # chmod of a file
    os.chmod(src / "a" / "c" / "d", 0o750)                       # chmod of a directory
    with open(src / "a" / "c" / "d" / "e" / "f4", "w") as f:     # rewrite in an unchanged directory
        f.write("rewritten")
    (src / "a" / "c" / "d" / "e" / "f4").chmod(0o640)
    os.setxattr(src / "a" / "c" / "sidec", "user.note", b"tagged")
    (src / "a" / "b" / "d").rename(src / "a" / "b" / "d2")        # a renamed directory goes whole


def test_lean_image_restores_onto_the_base_into_the_masters_tree(tmp_path):
    src, state, replica = tmp_path / "src", tmp_path / "state", tmp_path / "replica"
    _deep_tree(src)
    _settle()
    base = _dump(src, state, tmp_path / "base.tar", hold="r")
    assert restore_from(tmp_path / "base.tar", replica, REPLICA).refused == []
    _settle()
    _change_deep(src)
    inc = _dump(src, state, tmp_path / "inc.tar", base_token=base.dump_date, level=1, hold="r")
    assert inc.base.known_dirs is not None
    result = restore_from(tmp_path / "inc.tar", replica, REPLICA)
    assert result.refused == [] and result.complete
    assert differences(describe(src), describe(replica)) == []

    dirs = _directories(tmp_path / "inc.tar")
    assert "./quiet" not in dirs and "./quiet/b/d/e" not in dirs, "untouched subtrees are not written"
    assert dirs["./a/c/d/e"] is False, "an unchanged directory with a rewritten file: its times, no dumpdir"
    assert dirs["./a/c/d"] is True and dirs["./a/b"] is True, "changed directories list their names"
    assert dirs["./a/b/d2/e/new/deeper"] is True


def test_gnu_tar_replays_a_lean_image_onto_its_base_too(tmp_path):
    src, state, out = tmp_path / "src", tmp_path / "state", tmp_path / "gnu"
    _deep_tree(src)
    _settle()
    base = _dump(src, state, tmp_path / "base.tar", hold="r")
    _settle()
    _change_deep(src)
    _dump(src, state, tmp_path / "inc.tar", base_token=base.dump_date, level=1, hold="r")
    out.mkdir()
    for stream in ("base.tar", "inc.tar"):
        gnu_tar("-x", "-G", "-p", "--xattrs", "--xattrs-include=*", "-f", str(tmp_path / stream), cwd=out)
    assert differences(describe(src), describe(out)) == []


def test_a_lean_image_deletes_nothing_where_it_has_no_dumpdir(tmp_path):
    """A directory absent from the image keeps all it holds on the replica, even names its
    record holds and the master no longer has (the next change of that directory deletes them)."""
    src, state, replica = tmp_path / "src", tmp_path / "state", tmp_path / "replica"
    _deep_tree(src)
    _settle()
    base = _dump(src, state, tmp_path / "base.tar", hold="r")
    restore_from(tmp_path / "base.tar", replica, REPLICA)
    _settle()
    (src / "a" / "c" / "d" / "e" / "f1").write_text("only content changed")
    inc = _dump(src, state, tmp_path / "inc.tar", base_token=base.dump_date, level=1, hold="r")
    restore_from(tmp_path / "inc.tar", replica, REPLICA)
    assert differences(describe(src), describe(replica)) == []
    (replica / "quiet" / "b" / "admin-note").write_text("the replica's own")
    _settle()
    (src / "a" / "c" / "d" / "e" / "f2").write_text("again")
    again = _dump(src, state, tmp_path / "again.tar", base_token=inc.dump_date, level=1, hold="r")
    assert "./quiet/b" not in _directories(tmp_path / "again.tar")
    restore_from(tmp_path / "again.tar", replica, REPLICA)
    assert (replica / "quiet" / "b" / "admin-note").read_text() == "the replica's own"


def test_tape_incrementals_still_list_every_directory(tmp_path):
    src, state = tmp_path / "src", tmp_path / "state"
    _deep_tree(src)
    _settle()
    base = _dump(src, state, tmp_path / "base.tar", level=0, update=True)
    _settle()
    (src / "a" / "c" / "d" / "e" / "f1").write_text("changed")
    _dump(src, state, tmp_path / "tape.tar", base_token=base.dump_date, level=1)
    dirs = _directories(tmp_path / "tape.tar")
    assert dirs["./quiet/b/d/e"] is True and all(dirs.values()), "GNU tar's format lists every directory"


def test_lean_bytes_follow_the_change_not_the_tree(tmp_path):
    """100k files in 1000 directories, 20 changes: the lean image is a small fraction of the
    token incremental that lists every directory."""
    shm = Path("/dev/shm")
    root = Path(tmp_path if not shm.is_dir() else shm / f"lean-{os.getpid()}")
    try:
        src, state = root / "src", root / "state"
        tree = build_tree(src, 100_000)
        _settle()
        base = _dump(src, state, root / "base.tar", hold="r")
        _settle()
        for path in tree.files[::5000]:
            (src / path).write_text("changed")
        (src / tree.files[0]).unlink()
        lean = _dump(src, state, root / "lean.tar", base_token=base.dump_date, level=1, hold="r")
        listed = _dump(src, state, root / "listed.tar", base_token=base.dump_date, level=1)
        assert listed.result.bytes_written > 1_000_000
        assert lean.result.bytes_written * 20 < listed.result.bytes_written, \
            (lean.result.bytes_written, listed.result.bytes_written)
    finally:
        if root != tmp_path:
            shutil.rmtree(root, ignore_errors=True)


def test_an_image_cut_between_members_is_known_not_whole(tmp_path):
    """A replica must not take an update whose master stopped mid-way: cut at a member boundary
    the image still reads cleanly, so the restore says whether its end-of-archive blocks came."""
    src, state = tmp_path / "src", tmp_path / "state"
    _deep_tree(src)
    _dump(src, state, tmp_path / "whole.tar")
    data = (tmp_path / "whole.tar").read_bytes()
    assert restore_from(tmp_path / "whole.tar", tmp_path / "a", REPLICA).end_of_archive is True
    end = len(data.rstrip(b"\0"))
    cut = -(-end // 512) * 512                 # after the last member's last block, before the zeros
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    result = restore_from(tmp_path / "cut.tar", tmp_path / "b", REPLICA)
    assert result.complete and result.end_of_archive is False
