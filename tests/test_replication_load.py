"""The load tooling itself (tests/replication_load.py, tests/tree_digest.py) on plain
directories and, for the pair scheme's promise, on btrfs snapshots: a lag test is only as good
as its writer, reader and comparator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.loopfs import btrfs_subvolume
from tests.replication_load import (KINDS, PAIRS, LagSampler, Reader, ReaderStats, Writer, build_tree,
                                    check_pairs, parse_status, percentile)
from tests.tree_digest import TreeDigest, differences


def test_build_tree_makes_the_files_links_xattrs_and_pairs_it_says(tmp_path):
    start = time.monotonic()
    tree = build_tree(tmp_path, 5000, pairs=10)
    assert time.monotonic() - start < 10
    regular = [f for f in tree.files if not f.endswith(".link")]
    assert len(regular) == 5000
    assert all((tmp_path / f).is_file() for f in tree.files)
    assert sum(1 for f in regular if os.listxattr(tmp_path / f)) == 100
    linked = [f for f in tree.files if f.endswith(".link")]
    assert linked and all(os.stat(tmp_path / f).st_nlink == 2 for f in linked)
    assert any(p.is_symlink() for p in (tmp_path / tree.dirs[0]).iterdir())
    stats = ReaderStats()
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        check_pairs(dirfd, 10, stats)
    finally:
        os.close(dirfd)
    assert (stats.checks, stats.violations) == (10, 0)


def test_writer_keeps_its_rate_makes_every_kind_of_change_and_reader_sees_whole_pairs(tmp_path):
    tree = build_tree(tmp_path, 2000, pairs=20)
    before = TreeDigest().walk(tmp_path)
    writer, reader = Writer(tree, rate=200), Reader(tmp_path, tree.pairs, pause=0.01, live=True)
    writer.start(), reader.start()
    time.sleep(4)
    stats, seen = writer.stop(), reader.stop()
    assert stats.errors == []
    assert set(stats.ops) == set(KINDS)
    assert 195 <= stats.rate <= 205, stats.rate
    assert seen.checks > 100 and seen.violations == 0, (seen.mismatched, seen.incomplete)
    assert not [p for p in (tmp_path / PAIRS).iterdir() if p.name.startswith(".")], "retired pairs removed"
    assert len(differences(before, TreeDigest().walk(tmp_path), limit=10**6)) > 300


def test_reader_reports_a_pair_that_differs_or_lacks_a_file(tmp_path):
    build_tree(tmp_path, 100, pairs=3)
    (tmp_path / PAIRS / "p1" / "b").write_bytes(b"pair 1 gen 9\nother")
    (tmp_path / PAIRS / "p2" / "a").unlink()
    stats = ReaderStats()
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        check_pairs(dirfd, 3, stats)
    finally:
        os.close(dirfd)
    assert stats.checks == 2 and len(stats.mismatched) == 1 and stats.mismatched[0].startswith("p1:")
    assert stats.incomplete == ["p2: a missing"]


def _copy(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=60)


def test_comparator_finds_every_kind_of_difference_even_from_its_cache(tmp_path):
    build_tree(tmp_path / "a", 1000, pairs=2)
    time.sleep(1.1)                              # past the clock-tick margin: the walk remembers
    _copy(tmp_path / "a", tmp_path / "b")
    time.sleep(1.1)
    left, right = TreeDigest(), TreeDigest()
    base = left.walk(tmp_path / "a", time.time())
    assert differences(base, right.walk(tmp_path / "b", time.time())) == []
    assert left.walk(tmp_path / "a", time.time()) == base and left.read == 0, "the second walk is all cache"
    b = tmp_path / "b"
    victim = b / "d000/e000/f001"
    stamp = victim.stat()
    data = bytearray(victim.read_bytes() or b"x")
    data[0] ^= 1
    victim.write_bytes(bytes(data))               # same size and mtime, other bytes
    os.utime(victim, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    os.chmod(b / "d000/e000/f002", 0o604)
    os.setxattr(b / "d000/e000/f003", "user.tag", b"changed")
    os.rename(b / "d000/e000/f004", b / "d000/e000/g004")
    os.link(b / "d000/e000/f005", b / "d000/e000/h005")
    (b / "d000/e000/f013.sym").unlink()
    (b / "d000/e000/f013.sym").symlink_to("elsewhere")
    os.mkdir(b / "d000/e000/newdir")
    found = differences(base, right.walk(b, time.time()), limit=100)
    names = " ".join(found)
    for name in ("f001", "f002", "f003", "f004", "g004", "f005", "h005", "f013.sym", "newdir"):
        assert name in names, (name, found)


def test_comparator_ignores_the_masters_snapshot_directory_and_engine_xattrs(tmp_path):
    build_tree(tmp_path / "a", 100, pairs=1)
    _copy(tmp_path / "a", tmp_path / "b")
    (tmp_path / "a" / ".ndmpd-snapshots").mkdir()
    os.setxattr(tmp_path / "b" / "d000", "user.ndmpd.record", b"r")
    assert differences(TreeDigest().walk(tmp_path / "a"), TreeDigest().walk(tmp_path / "b")) == []


def test_pairs_hold_in_every_btrfs_snapshot_taken_while_the_writer_runs(tmp_path):
    """The scheme's promise: whatever instant a snapshot catches, every pair is whole."""
    if not shutil.which("btrfs"):
        pytest.skip("btrfs-progs is not installed")
    with btrfs_subvolume(tmp_path) as vol:
        tree = build_tree(vol, 2000, pairs=40)
        writer = Writer(tree, rate=400)
        writer.start()
        snaps = []
        try:
            for i in range(20):
                snap = vol.parent / f"snap{i}"
                subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(vol), str(snap)],
                               check=True, capture_output=True, timeout=30)
                snaps.append(snap)
                time.sleep(0.05)
        finally:
            stats = writer.stop()
        assert stats.errors == [] and stats.ops["pair"] > 20
        seen = ReaderStats()
        for snap in snaps:
            dirfd = os.open(snap, os.O_RDONLY | os.O_DIRECTORY)
            try:
                check_pairs(dirfd, tree.pairs, seen)
            finally:
                os.close(dirfd)
        assert seen.checks == 20 * 40 and seen.violations == 0, (seen.mismatched, seen.incomplete)


def test_lag_sampler_reads_status_json_in_any_nesting_and_takes_percentiles():
    docs = iter([
        json.dumps([{"name": "r", "replicas": [{"host": "h", "lag": 1.5, "state_id": "s1", "last_bytes": 10}]}]),
        json.dumps({"replications": [{"replicas": [{"lag": 3.0, "state_id": "s2", "last_bytes": 20},
                                                   {"lag": None, "state_id": None}]}]}),
        "\n".join([json.dumps({"lag": 2.0, "state_id": "s2", "last_bytes": 20})]),
        "not json",
    ])
    sampler = LagSampler(lambda: next(docs))
    for _ in range(4):
        sampler.sample()
    figures = sampler.stop()
    assert figures.samples == [1.5, 3.0, 2.0] and figures.missing == 2
    assert figures.updates == {"s1": 10, "s2": 20}
    assert (figures.p50, figures.max) == (2.0, 3.0)
    assert percentile(list(range(1, 101)), 95) == 95 and percentile([4.0], 95) == 4.0
    assert parse_status('{"lag": 1}') == [{"lag": 1}]
