"""``ndmp replicate`` against real ``ndmpd serve`` processes on btrfs (a loop device): a master
with a subvolume volume, two servers with ``replica = true`` volumes on the same filesystem.

What a user relies on: the first update makes the replica identical to the master and
read-only; the next ones send only the changes; ``status --json`` says which master snapshot
each replica equals and how far behind it is; a replica whose server is down records its
error while the other stays current, and catches up incrementally when it returns;
``promote`` leaves the replica read-write and identical to the frozen master, and
``--reverse`` replicates back incrementally; ``delete`` releases the master's holds."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engine_helpers import build_every_case
from tests.loopfs import btrfs_subvolume
from tests.server_process import ServerProcess
from tests.trees import describe, differences

from .conftest import PASSWORD, REPO, servers
from .ndmp_cli import json_lines, ndmp, ndmp_env

pytestmark = pytest.mark.interop

MASTER, REPLICA = "/export/master", "/export/rep"
BIG = 4 << 20                            # a file the first update sends and later ones do not


def volume_table(name: str, path: Path, replica: bool) -> str:
    return f'\n[[volume]]\nname = "{name}"\npath = "{path}"\n' + ("replica = true\n" if replica else "")


def target(server, volume: str) -> str:
    return f"ndmp@{server.host}:10000:{volume}"


def run_once(home: Path, catalog: Path, name: str = "web") -> tuple[int, dict[str, dict], str]:
    """``replicate run NAME --once --json``: (status, the update line of each replica, stderr
    and the warning lines)."""
    result = ndmp("replicate", "run", name, "--once", "--json", "--catalog", str(catalog), home=home, timeout=180)
    lines = json_lines(result.stdout)
    updates = {line["replica"]: line for line in lines if line["type"] == "update"}
    warnings = [line["text"] for line in lines if line["type"] == "warning"]
    return result.returncode, updates, "\n".join([result.stderr, *warnings])


def errors(stderr: str, updates: dict[str, dict]) -> str:
    """What a failed run says, for an assertion's message."""
    return stderr + "".join(f"\n{t}: {u.get('error')}" for t, u in updates.items())


def status(home: Path, catalog: Path, name: str = "web") -> dict:
    result = ndmp("replicate", "status", name, "--json", "--catalog", str(catalog), home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def same(a: Path, b: Path) -> None:
    assert differences(describe(str(a)), describe(str(b))) == []


def held_snapshots(volume: Path) -> list[Path]:
    """The master's snapshots under this replication's holds (beside the volume, where a
    frozen volume can still drop them; inside it on a filesystem that cannot)."""
    places = (volume.parent / f".{volume.name}.ndmpd-held", volume / ".ndmpd-snapshots" / "held")
    return [snap for place in places for snap in place.glob("ndmp-web-*/*")]


def master_tree(volume: Path) -> Path:
    data = build_every_case(volume / "data")
    (data / "big.bin").write_bytes(os.urandom(BIG))
    return data


def require_replication(home: Path, server) -> None:
    """Skip (naming why) when this tree's ndmpd has no replication (server parts not merged)."""
    info = ndmp("info", f"ndmp@{server.host}:10000", "--json", home=home)
    report = json.loads(info.stdout)
    if not any("NDMPD_VOLUME_ID" in fs["env"] for fs in report["filesystems"]):
        pytest.skip("this ndmpd reports no NDMPD_VOLUME_ID: the server side of issue 18 is not merged")


@pytest.fixture
def btrfs(tmp_path):
    with btrfs_subvolume(tmp_path, size=512 << 20) as vol:
        yield vol.parent


def test_replicate_sync_incremental_status_offline_replica_and_delete(tmp_path, btrfs):
    home, catalog = tmp_path / "home", tmp_path / "home" / "catalog.db"
    home.mkdir()
    master_vol = btrfs / "vol"
    (btrfs / "r1").mkdir()
    (btrfs / "r2").mkdir()
    extra = {"m": volume_table(MASTER, master_vol, False),
             "r1": volume_table(REPLICA, btrfs / "r1" / "rep", True),
             "r2": volume_table(REPLICA, btrfs / "r2" / "rep", True)}
    with servers(tmp_path, "m", "r1", "r2", extra=extra) as (m, r1, r2):
        require_replication(home, m)
        data = master_tree(master_vol)
        created = ndmp("replicate", "create", "web", target(m, MASTER), target(r1, REPLICA), target(r2, REPLICA),
                       "--json", "--catalog", str(catalog), home=home)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["butype"] == "btrfs"
        t1, t2 = target(r1, REPLICA), target(r2, REPLICA)

        code, updates, err = run_once(home, catalog)
        assert code == 0, errors(err, updates)
        assert updates[t1]["full"] and updates[t1]["bytes"] > BIG
        for root in ("r1", "r2"):
            same(data, btrfs / root / "rep" / "data")
        with pytest.raises(OSError) as refused:
            (btrfs / "r1" / "rep" / "data" / "new").write_bytes(b"x")
        assert refused.value.errno in (errno.EROFS, errno.EACCES)
        full = updates[t1]["bytes"]

        (data / "dir" / "file").write_bytes(b"changed\n")
        (data / "zero").unlink()
        (data / "added").write_bytes(b"new file\n")
        code, updates, err = run_once(home, catalog)
        assert code == 0, errors(err, updates)
        assert not updates[t1]["full"] and updates[t1]["bytes"] < full / 20
        for root in ("r1", "r2"):
            same(data, btrfs / root / "rep" / "data")

        doc = status(home, catalog)
        assert doc["running"] is False and doc["master"] == target(m, MASTER)
        rows = {r["replica"]: r for r in doc["replicas"]}
        assert rows[t1]["state_id"] == updates[t1]["state_id"] and rows[t1]["updates"] == 2
        assert rows[t1]["last_bytes"] == updates[t1]["bytes"] and rows[t1]["failures"] == 0
        assert 0 <= rows[t1]["lag"] < 120 and rows[t1]["last_error"] is None

        r2.stop()                                          # an offline replica
        (data / "offline").write_bytes(b"made while r2 was down\n")
        code, updates, err = run_once(home, catalog)
        assert code == 1 and updates[t1]["status"] == "done" and updates[t2]["status"] == "failed", err
        same(data, btrfs / "r1" / "rep" / "data")
        rows = {r["replica"]: r for r in status(home, catalog)["replicas"]}
        assert rows[t2]["last_error"] and rows[t2]["failures"] == 1 and rows[t1]["last_error"] is None
        assert rows[t2]["state_id"] != rows[t1]["state_id"]

        back = ServerProcess(r2.host, r2.config, r2.log, PASSWORD)   # r2 returns
        try:
            code, updates, err = run_once(home, catalog)
            assert code == 0, errors(err, updates)
            assert not updates[t2]["full"] and updates[t2]["bytes"] < full / 20
            same(data, btrfs / "r2" / "rep" / "data")

            run_every_until_sigint(home, catalog, data, [t1, t2], btrfs / "r1" / "rep" / "data",
                                   target(r1, REPLICA))

            assert held_snapshots(master_vol)
            deleted = ndmp("replicate", "delete", "web", "--catalog", str(catalog), home=home)
            assert deleted.returncode == 0, deleted.stderr
            assert held_snapshots(master_vol) == []
            same(data, btrfs / "r1" / "rep" / "data")          # the replicas keep their data
            assert ndmp("replicate", "status", "web", "--catalog", str(catalog), home=home).returncode == 1
        finally:
            back.stop()


def run_every_until_sigint(home: Path, catalog: Path, data: Path, targets: list[str], replica_data: Path,
                           promote_target: str) -> None:
    """``run --every 1s`` keeps every replica updating (each in its own task); promote refuses
    while it runs; SIGINT ends it with 130 and frees the lock."""
    before = {r["replica"]: r["updates"] for r in status(home, catalog)["replicas"]}
    proc = subprocess.Popen([sys.executable, "-m", "ndmpd.dma", "replicate", "run", "web", "--every", "1s",
                             "--json", "--catalog", str(catalog)], cwd=REPO, env=ndmp_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (data / "while-running").write_bytes(b"picked up by the next update\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = {r["replica"]: r for r in status(home, catalog)["replicas"]}
            if all(rows[t]["updates"] >= before[t] + 2 for t in targets):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"run --every made no progress: {rows}")
        assert status(home, catalog)["running"] is True
        refused = ndmp("replicate", "promote", "web", promote_target, "--catalog", str(catalog), home=home)
        assert refused.returncode == 1 and "is active" in refused.stderr, refused.stderr
        same(data, replica_data)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert status(home, catalog)["running"] is False


def test_promote_reverse_cuts_over_and_replicates_back(tmp_path, btrfs):
    home, catalog = tmp_path / "home", tmp_path / "home" / "catalog.db"
    home.mkdir()
    master_vol = btrfs / "vol"
    (btrfs / "r1").mkdir()
    extra = {"m": volume_table(MASTER, master_vol, True),          # replica = true: it may be demoted
             "r1": volume_table(REPLICA, btrfs / "r1" / "rep", True)}
    with servers(tmp_path, "m", "r1", extra=extra) as (m, r1):
        require_replication(home, m)
        data = master_tree(master_vol)
        assert ndmp("replicate", "create", "web", target(m, MASTER), target(r1, REPLICA), "--catalog",
                    str(catalog), home=home).returncode == 0
        code, updates, err = run_once(home, catalog)
        assert code == 0, errors(err, updates)
        full = updates[target(r1, REPLICA)]["bytes"]

        (data / "last").write_bytes(b"written just before the cut-over\n")
        promoted = ndmp("replicate", "promote", "web", target(r1, REPLICA), "--reverse", "--json",
                        "--catalog", str(catalog), home=home, timeout=180)
        assert promoted.returncode == 0, promoted.stderr
        replica_data = btrfs / "r1" / "rep" / "data"
        same(data, replica_data)
        with pytest.raises(OSError) as refused:
            (data / "after").write_bytes(b"x")                 # the old master is frozen
        assert refused.value.errno in (errno.EROFS, errno.EACCES)
        (replica_data / "on-new-master").write_bytes(b"the promoted replica is read-write\n")
        doc = status(home, catalog)
        assert doc["master"] == target(r1, REPLICA) and [r["replica"] for r in doc["replicas"]] == \
            [target(m, MASTER)]

        code, updates, err = run_once(home, catalog)
        assert code in (0, 3), errors(err, updates)          # 3: the warning of a full update
        back = updates[target(m, MASTER)]
        same(replica_data, master_vol / "data")
        if back["full"]:
            pytest.xfail("the reverse update was full: the servers take no incremental into a demoted master "
                         "(replica_jobs.check_base wants its state, it has none) nor keep a base on the "
                         "promoted replica (holds.find)")
        assert back["bytes"] < full / 20


def test_a_non_btrfs_master_replicates_with_dump_and_promote_ends_the_relationship(tmp_path, btrfs):
    home, catalog = tmp_path / "home", tmp_path / "home" / "catalog.db"
    home.mkdir()
    plain = btrfs / "plain"                                # a directory, not a subvolume: butype dump
    plain.mkdir()
    (btrfs / "r1").mkdir()
    extra = {"m": volume_table(MASTER, plain, False), "r1": volume_table(REPLICA, btrfs / "r1" / "rep", True)}
    with servers(tmp_path, "m", "r1", extra=extra) as (m, r1):
        require_replication(home, m)
        data = master_tree(plain)
        created = ndmp("replicate", "create", "web", target(m, MASTER), target(r1, REPLICA), "--json",
                       "--catalog", str(catalog), home=home)
        assert created.returncode == 0 and json.loads(created.stdout)["butype"] == "dump", created.stderr
        code, updates, err = run_once(home, catalog)
        assert code == 0, errors(err, updates)
        first = updates[target(r1, REPLICA)]
        same(data, btrfs / "r1" / "rep" / "data")

        (data / "dir" / "file").write_bytes(b"changed\n")
        os.rename(data / "zero", data / "renamed")
        code, updates, err = run_once(home, catalog)
        assert code == 0, errors(err, updates)
        second = updates[target(r1, REPLICA)]
        assert not second["full"] and second["bytes"] < first["bytes"] / 4 and second["lag"] is not None
        same(data, btrfs / "r1" / "rep" / "data")

        promoted = ndmp("replicate", "promote", "web", target(r1, REPLICA), "--catalog", str(catalog), home=home,
                        timeout=180)
        assert promoted.returncode == 0, promoted.stderr
        (btrfs / "r1" / "rep" / "data" / "writable").write_bytes(b"the promoted replica takes writes\n")
        assert status(home, catalog)["state"] == "promoted"
        again = ndmp("replicate", "run", "web", "--once", "--catalog", str(catalog), home=home)
        assert again.returncode == 1 and again.stderr.strip() == \
            "ndmp: replication web is promoted: there is nothing to run", again.stderr
        deleted = ndmp("replicate", "delete", "web", "--catalog", str(catalog), home=home)
        assert deleted.returncode == 0 and "released ndmp-web-0" in deleted.stdout, deleted.stderr


def test_a_base_the_master_released_gives_a_full_update_with_a_warning(tmp_path, btrfs):
    """delete then create again: the replica is at a state whose snapshot the master released,
    so the first update of the new replication is a full one (exit 3, the warning says why)."""
    home, catalog = tmp_path / "home", tmp_path / "home" / "catalog.db"
    home.mkdir()
    master_vol = btrfs / "vol"
    (btrfs / "r1").mkdir()
    extra = {"m": volume_table(MASTER, master_vol, False), "r1": volume_table(REPLICA, btrfs / "r1" / "rep", True)}
    with servers(tmp_path, "m", "r1", extra=extra) as (m, r1):
        require_replication(home, m)
        data = master_tree(master_vol)
        t1 = target(r1, REPLICA)
        create = ("replicate", "create", "web", target(m, MASTER), t1, "--catalog", str(catalog))
        assert ndmp(*create, home=home).returncode == 0
        code, updates, err = run_once(home, catalog)
        assert code == 0 and updates[t1]["full"], errors(err, updates)
        assert ndmp("replicate", "delete", "web", "--catalog", str(catalog), home=home).returncode == 0
        (data / "later").write_bytes(b"after the delete\n")
        assert ndmp(*create, home=home).returncode == 0
        code, updates, err = run_once(home, catalog)
        assert code == 3 and updates[t1]["status"] == "done" and updates[t1]["full"], errors(err, updates)
        assert "no longer keeps" in err and "sending a full update" in err
        same(data, btrfs / "r1" / "rep" / "data")
