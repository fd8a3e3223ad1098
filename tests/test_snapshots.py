"""Snapshots: a btrfs volume on a loop device is dumped at its snapshot state, and no snapshot
outlives its job (success, failure, or a killed server)."""

from __future__ import annotations

import logging
import os
import tarfile
import threading
from pathlib import Path

import pytest

from ndmpd.engine.dump import DumpAborted
from ndmpd.engine.job import DumpRequest, dump_volume
from ndmpd.snapshots import SNAPSHOT_DIR, SnapshotError, choose, remove_stale
from ndmpd.snapshots.btrfs import BtrfsSnapshotter
from ndmpd.snapshots.live import LiveSnapshotter
from ndmpd.snapshots.lvm import LvmSnapshotter, lvm_available
from tests.loopfs import btrfs_subvolume, sh


@pytest.fixture
def btrfs_volume(tmp_path):
    with btrfs_subvolume(tmp_path) as vol:
        yield vol


def _subvolumes(volume: Path) -> list[str]:
    out = sh("btrfs", "subvolume", "list", str(volume.parent)).stdout
    return [line.split()[-1] for line in out.splitlines()]


def test_dump_reads_the_snapshot_while_the_live_file_is_rewritten(btrfs_volume, tmp_path):
    vol = btrfs_volume
    (vol / "a-first").write_text("first")
    (vol / "big").write_bytes(b"O" * (4 << 20))

    def rewrite(entry):
        if entry.path == b"a-first":
            with open(vol / "big", "r+b") as f:
                f.write(b"N" * (4 << 20))
                f.write(b"more")

    stream = tmp_path / "s.tar"
    with open(stream, "wb") as out:
        outcome = dump_volume(DumpRequest(source=vol, key="vol", state_dir=tmp_path / "state"), out.fileno(),
                              history=rewrite)
    assert outcome.snapshot_mode == "btrfs"
    assert outcome.result.changed == 0
    with tarfile.open(stream) as archive:
        assert archive.extractfile("./big").read() == b"O" * (4 << 20)
        assert not any(SNAPSHOT_DIR in name for name in archive.getnames())
    assert (vol / "big").read_bytes().startswith(b"N")
    assert os.listdir(vol / SNAPSHOT_DIR) == []
    assert _subvolumes(vol) == ["vol"]


def test_snapshot_is_removed_after_a_failed_or_aborted_dump(btrfs_volume, tmp_path):
    vol = btrfs_volume
    for i in range(50):
        (vol / f"f{i:02d}").write_bytes(b"x" * 10000)
    request = DumpRequest(source=vol, key="vol", state_dir=tmp_path / "state", snapshot="btrfs")
    read_end, write_end = os.pipe()
    os.close(read_end)                   # the reader is gone: writing fails with EPIPE
    with pytest.raises(BrokenPipeError):
        dump_volume(request, write_end)
    os.close(write_end)
    assert os.listdir(vol / SNAPSHOT_DIR) == [] and _subvolumes(vol) == ["vol"]
    cancel = threading.Event()
    with open(tmp_path / "s.tar", "wb") as out, pytest.raises(DumpAborted):
        dump_volume(request, out.fileno(), history=lambda e: cancel.set() if e.path == b"f10" else None,
                    cancel=cancel)
    assert os.listdir(vol / SNAPSHOT_DIR) == [] and _subvolumes(vol) == ["vol"]


def test_stale_snapshots_of_a_dead_process_are_removed_at_start_up(btrfs_volume, tmp_path):
    vol = btrfs_volume
    (vol / SNAPSHOT_DIR).mkdir()
    dead = vol / SNAPSHOT_DIR / "999999999-1-abcdef"
    assert sh("btrfs", "subvolume", "snapshot", "-r", str(vol), str(dead)).returncode == 0
    mine = BtrfsSnapshotter().take(vol)           # a live job's snapshot must survive
    try:
        removed = remove_stale([vol], tmp_path / "state")
        assert removed == [str(dead)]
        assert os.listdir(vol / SNAPSHOT_DIR) == [mine.path.name]
    finally:
        mine.remove()
    assert os.listdir(vol / SNAPSHOT_DIR) == []


def test_auto_falls_back_to_live_with_a_warning_naming_the_volume(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ndmpd.snapshots"):
        chosen = choose("auto", tmp_path, tmp_path / "state", name="home")
    assert isinstance(chosen, LiveSnapshotter)
    assert "home" in caplog.text and "cannot be snapshotted" in caplog.text
    caplog.clear()
    heard: list[str] = []
    with caplog.at_level(logging.WARNING, logger="ndmpd.snapshots"):
        assert isinstance(choose("auto", tmp_path, tmp_path / "state", "home", heard.append), LiveSnapshotter)
    assert len(heard) == 1 and "home" in heard[0] and "cannot be snapshotted" in heard[0]
    assert not caplog.records                     # a job's warning goes to the job (its DMA, or stderr)
    with pytest.raises(SnapshotError, match="not a btrfs subvolume"):
        BtrfsSnapshotter().take(tmp_path)


def test_lvm_says_why_it_cannot_snapshot(tmp_path):
    reason = lvm_available()
    if reason is None:
        pytest.skip("device-mapper and LVM are present; this checks the message when they are not")
    with pytest.raises(SnapshotError, match="LVM snapshot of .*: (device-mapper|the LVM tools)"):
        LvmSnapshotter(tmp_path).take(tmp_path)
