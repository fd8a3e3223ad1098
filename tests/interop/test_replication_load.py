"""Issue 18's "lag under load": a master of 100,000 files, a writer making 100 changes per
second of every kind for 2 minutes, ``ndmp replicate run --every 2s`` between two real ndmpd
servers (data-to-data over NDMP). On btrfs: p95 lag <= 5 s, max <= 10 s; the replica, pinned
at >= 20 points, equals the master snapshot it claims to be every time; a reader looping on the
replica never sees half a pair. On a non-btrfs master (tmpfs, the dump engine's incrementals):
its lag is printed, and it stays consistent (whole pairs, identical once the writer stops).

NDMPD_LOAD_FILES, NDMPD_LOAD_SECONDS (btrfs run) and NDMPD_LOAD_DUMP_SECONDS (non-btrfs run)
scale it down for a quick look; the defaults are the issue's figures within ~4 minutes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from tests.interop.conftest import PASSWORD, servers
from tests.replication_load import build_tree
from tests.replication_rig import Pinner, loop_btrfs, run_load, sh, tmpfs

pytestmark = pytest.mark.interop

FILES = int(os.environ.get("NDMPD_LOAD_FILES", "100000"))
SECONDS = float(os.environ.get("NDMPD_LOAD_SECONDS", "120"))
DUMP_SECONDS = float(os.environ.get("NDMPD_LOAD_DUMP_SECONDS", "30"))
RATE = 100

MASTER = """
[[volume]]
name = "/export/master"
path = "{path}"
"""
REPLICA = """
[[volume]]
name = "/export/replica"
path = "{path}"
replica = true
keep = 3
"""


@pytest.fixture
def root_with_btrfs():
    if os.geteuid() != 0:
        pytest.skip("btrfs on loop devices needs root")
    if not shutil.which("mkfs.btrfs"):
        pytest.skip("btrfs-progs is not installed")


def _replica_fs(stack, tmp_path: Path) -> tuple[Path, Path]:
    """The replica's btrfs: the volume path (an empty directory, so the first full stream may
    seed it) and a pins directory on the same filesystem."""
    mnt = stack.enter_context(loop_btrfs(tmp_path, "replica-fs"))
    (mnt / "replica").mkdir()
    (mnt / "pins").mkdir()
    return mnt / "replica", mnt / "pins"


def _assert_consistent(result) -> None:
    assert result.writer.errors == [], result.writer.errors[:5]
    assert result.writer.rate >= 0.95 * RATE, "the writer kept its rate"
    assert result.reader.checks > 0 and result.reader.violations == 0, \
        (result.reader.mismatched[:5], result.reader.incomplete[:5])
    assert result.final_differences == [], result.final_differences


def test_btrfs_replica_lags_at_most_seconds_behind_and_always_equals_a_master_snapshot(tmp_path, root_with_btrfs):
    with contextlib.ExitStack() as stack:
        master_mnt = stack.enter_context(loop_btrfs(tmp_path, "master-fs"))
        assert sh("btrfs", "subvolume", "create", master_mnt / "vol").returncode == 0
        (master_mnt / "pins").mkdir()
        replica_path, replica_pins = _replica_fs(stack, tmp_path)
        tree = build_tree(master_mnt / "vol", FILES)
        master, replica = stack.enter_context(servers(
            tmp_path, "m", "r", extra={"m": MASTER.format(path=master_mnt / "vol"),
                                       "r": REPLICA.format(path=replica_path)}))
        pinner = Pinner(replica_path, replica_pins, master_mnt / "vol", master_mnt / "pins")
        result = run_load(name="load", master=f"ndmp@{master.host}:10000:/export/master",
                          replica=f"ndmp@{replica.host}:10000:/export/replica", password=PASSWORD,
                          home=tmp_path / "home", tree=tree, replica_path=replica_path, pinner=pinner,
                          seconds=SECONDS, rate=RATE, check_every=SECONDS / 24, log=print)
        print(result.report())
        _assert_consistent(result)
        with pytest.raises(OSError):                       # the replica is read-only, even for root
            (replica_path / "intruder").write_bytes(b"x")
        assert result.checker_errors == []
        assert len(result.comparisons) >= 20, (len(result.comparisons), result.pin_misses)
        assert [c for c in result.comparisons if c.differences] == []
        assert len({c.state_id for c in result.comparisons}) >= 10, "the points are of many states"
        assert len(result.lag.samples) >= SECONDS, "lag sampled about every 0.5 s"
        assert result.lag.p95 <= 5.0 and result.lag.max <= 10.0, result.lag.line()


def test_non_btrfs_master_prints_its_lag_and_stays_consistent(tmp_path, root_with_btrfs):
    with contextlib.ExitStack() as stack:
        master_path = stack.enter_context(tmpfs(tmp_path / "master-tmpfs"))
        replica_path, _ = _replica_fs(stack, tmp_path)
        tree = build_tree(master_path, FILES)
        master, replica = stack.enter_context(servers(
            tmp_path, "m", "r", extra={"m": MASTER.format(path=master_path),
                                       "r": REPLICA.format(path=replica_path)}))
        result = run_load(name="load-dump", master=f"ndmp@{master.host}:10000:/export/master",
                          replica=f"ndmp@{replica.host}:10000:/export/replica", password=PASSWORD,
                          home=tmp_path / "home", tree=tree, replica_path=replica_path, pinner=None,
                          seconds=DUMP_SECONDS, rate=RATE, log=print)
        print(result.report())
        _assert_consistent(result)
        assert result.lag.samples, "the lag was sampled"
