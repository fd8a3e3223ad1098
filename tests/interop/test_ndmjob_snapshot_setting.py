"""A DMA's backup honours the volume's configured snapshot mode: the butype's default
(SNAPSHOT=auto) never overrides it, an explicit SNAPSHOT= from the DMA does, and the index
says which mode was used. Stale snapshots are cleaned whatever the configured mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ndmpd.snapshots import SNAPSHOT_DIR
from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, run
from tests.loopfs import btrfs_subvolume as loop_btrfs, sh

PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB


def run_ndmjob(*args: str) -> str:
    done = run([PROGRAM, "-v", *args], timeout=120)
    return done.stdout + done.stderr


def index_env(index: Path) -> dict[str, str]:
    return dict(line[3:].split("=", 1) for line in index.read_text().splitlines() if line.startswith("DE "))


def volume_entry(name: str, path: Path, snapshot: str) -> str:
    return f'\n[[volume]]\nname = "{name}"\npath = "{path}"\nsnapshot = "{snapshot}"\n'


@pytest.fixture
def btrfs_subvolume(tmp_path):
    """A btrfs subvolume on a loop device (root only), with a few files in it."""
    with loop_btrfs(tmp_path) as vol:
        (vol / "a.txt").write_text("a" * 1000)
        (vol / "dir").mkdir()
        (vol / "dir" / "b.bin").write_bytes(os.urandom(100_000))
        yield vol


def test_a_none_volume_on_btrfs_is_dumped_live_unless_the_dma_asks(ndmjob, server_factory, btrfs_subvolume,
                                                                  tmp_path):
    server = server_factory(extra=volume_entry("/live", btrfs_subvolume, "none"))
    index = tmp_path / "none.idx"
    out = run_ndmjob("-c", "-D", server.agent("4"), "-f", "vtape0", "-B", "tar", "-C", "/live", "-I", str(index))
    assert "Operation ended OKAY" in out, out
    assert index_env(index)["SNAPSHOT"] == "none"
    assert not (btrfs_subvolume / SNAPSHOT_DIR).exists()      # no snapshot was ever taken

    explicit = tmp_path / "btrfs.idx"
    out = run_ndmjob("-c", "-D", server.agent("4"), "-f", "vtape0", "-B", "dump", "-C", "/live",
                 "-E", "SNAPSHOT=btrfs", "-I", str(explicit))
    assert "Operation ended OKAY" in out, out
    assert index_env(explicit)["SNAPSHOT"] == "btrfs"
    assert os.listdir(btrfs_subvolume / SNAPSHOT_DIR) == []     # taken, and removed after


def test_a_btrfs_volume_that_is_not_btrfs_is_refused_not_dumped_live(ndmjob, server_factory, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "f").write_text("x")
    server = server_factory(extra=volume_entry("/plain", plain, "btrfs"))
    out = run_ndmjob("-c", "-D", server.agent("4"), "-f", "vtape0", "-B", "tar", "-C", "/plain",
                 "-I", str(tmp_path / "p.idx"))
    assert "Operation ended OKAY" not in out, out
    assert "is not a btrfs subvolume" in out, out
    assert "Traceback" not in server.log.read_text()


def test_stale_snapshot_of_a_none_volume_is_removed_at_start(ndmjob, server_factory, btrfs_subvolume):
    folder = btrfs_subvolume / SNAPSHOT_DIR
    folder.mkdir()
    stale = folder / "999999999-1-abcdef"          # a killed server's (taken for an explicit SNAPSHOT=)
    assert sh("btrfs", "subvolume", "snapshot", "-r", str(btrfs_subvolume), str(stale)).returncode == 0
    server = server_factory(extra=volume_entry("/live", btrfs_subvolume, "none"))
    assert os.listdir(folder) == []
    assert "removed stale snapshot" in server.log.read_text()
