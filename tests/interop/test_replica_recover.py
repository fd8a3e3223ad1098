"""Recover into a replica volume, against real ``ndmpd serve`` processes: the master's data
server connects to the replica's (DATA_CONNECT to its DATA_LISTEN) and backs up, the replica
applies the stream as its next state and switches it in whole. Refusals come at START with the
reason; a stream cut mid-way leaves the replica as it was, with no debris."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ndmpd.dma.errors import NdmpReplyError
from ndmpd.wire import C, T
from tests.blocking_client import NdmpClient
from tests.engine_helpers import build_every_case
from ndmpd.snapshots import holds
from tests.loopfs import btrfs_mount, btrfs_subvolume
from tests.server_process import ServerProcess
from tests.trees import describe, differences
from tests.waiting import wait_for

from .conftest import PASSWORD, servers

pytestmark = pytest.mark.interop

REPLICA_VOLUME = """
[[volume]]
name = "/export/replica"
path = "{path}"
replica = true
keep = 2
"""
MASTER_ID = "ndmpd:test-master:/export/data"


@contextlib.contextmanager
def client(server) -> NdmpClient:
    with NdmpClient(server.host, timeout=60) as dma:
        dma.login("ndmp", PASSWORD)
        yield dma


def pairs(env: dict[str, str]) -> list:
    return [T.pval(name=k, value=v) for k, v in env.items()]


def messages(dma: NdmpClient) -> list[str]:
    return [body.entry for code, body in dma.posts if code == C.LOG_MESSAGE]


@pytest.fixture
def world(tmp_path):
    """(master, replica server, replica path): the replica's volume on its own btrfs."""
    with btrfs_subvolume(tmp_path, 768 << 20) as vol:
        replica_path = vol.parent / "replica"
        with servers(tmp_path, "master", "replica",
                     extra={"replica": REPLICA_VOLUME.format(path=replica_path)}) as (master, replica):
            yield master, replica, replica_path, tmp_path / "master" / "vol"


def update(master, replica, base: str = "0", butype: str = "dump", level: int | None = None,
           replica_env: dict | None = None, during=None, master_base: str = "", master_env: dict | None = None,
           source: str = "/export/data", master_id: str = MASTER_ID) -> tuple[dict, dict, list[str]]:
    """One update master → replica; (master's env, replica's env, replica's log messages)."""
    with client(master) as m, client(replica) as r:
        listen = r.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        r.call("DATA_START_RECOVER", butype_name=butype, nlist=[], env=pairs({
            "FILESYSTEM": "/export/replica", "TYPE": butype, "NDMPD_REPLICA_OF": master_id, "BASE_DATE": base,
            **(replica_env or {})}))
        m.call("DATA_CONNECT", addr=listen.connect_addr)
        if butype == "btrfs":
            backup = {"FILESYSTEM": source, "NDMPD_HOLD": "ndmp-test-0", "BASE_DATE": master_base or base,
                      **(master_env or {})}
        else:
            backup = {"FILESYSTEM": "/export/data", "HIST": "n", "UPDATE": "y", "NDMPD_HOLD": "ndmp-test-0"}
            if base != "0":
                backup.update(BASE_DATE=base, LEVEL=str(level or 1))
        m.call("DATA_START_BACKUP", butype_name=butype, env=pairs(backup))
        if during is not None:
            during()
        halted = [m.wait_post(C.NOTIFY_DATA_HALTED, 120).reason if during is None else None,
                  r.wait_post(C.NOTIFY_DATA_HALTED, 120).reason]
        m_env = {p.name: p.value for p in m.call("DATA_GET_ENV").env} if during is None else {}
        r_env = {p.name: p.value for p in r.call("DATA_GET_ENV").env}
        logged = messages(r)
        r.call("DATA_STOP")
        if during is None:
            m.call("DATA_STOP")
        r_env["halt"], m_env["halt"] = halted[1], halted[0]
        return m_env, r_env, logged


def refusal(replica, env: dict[str, str], butype: str = "dump") -> str:
    """START_RECOVER refused with ILLEGAL_ARGS: the LOG_MESSAGE that says why."""
    with client(replica) as r:
        r.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        with pytest.raises(NdmpReplyError) as err:
            r.call("DATA_START_RECOVER", butype_name=butype, nlist=[], env=pairs(env))
        assert err.value.code == C.ILLEGAL_ARGS_ERR
        text = r.wait_post(C.LOG_MESSAGE, 10).entry
        r.call("DATA_ABORT")
        return text


def debris(replica_path: Path) -> list[str]:
    """What an update leaves beside P other than its store (and the previous view, kept for open
    readers), and anything in recv/ that is not a state."""
    store = replica_path.parent / f".{replica_path.name}.ndmpd-replica" / "recv"
    extra = [n for n in os.listdir(replica_path.parent) if n.startswith(f".{replica_path.name}.")
             and n not in (".replica.ndmpd-replica", ".replica.ndmpd-old")]
    return extra + [n for n in (os.listdir(store) if store.is_dir() else []) if not n.startswith("state-")]


def same(master_tree: Path, replica_path: Path) -> list[str]:
    return differences(describe(master_tree), describe(replica_path))


def test_the_dump_path_initial_and_incremental_with_deletes_and_renames(world):
    master, replica, replica_path, vol = world
    build_every_case(vol)
    os.chmod(vol, 0o750)                        # the root's own metadata is replicated too
    os.setxattr(vol, "user.root-attr", b"on the root")
    (vol / "docs").mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (vol / "docs" / name).write_text(name * 100)
    m_env, r_env, logged = update(master, replica)
    assert (m_env["halt"], r_env["halt"]) == (C.DATA_HALT_SUCCESSFUL, C.DATA_HALT_SUCCESSFUL), logged
    assert r_env["NDMPD_REPLICA_STATE"] == m_env["DUMP_DATE"]
    assert same(vol, replica_path) == []
    with pytest.raises(OSError):
        (replica_path / "docs" / "new").write_text("x")

    (vol / "docs" / "new.txt").write_text("added")
    (vol / "docs" / "a.txt").write_text("modified")
    (vol / "docs" / "b.txt").unlink()
    (vol / "docs" / "c.txt").rename(vol / "docs" / "c-renamed.txt")
    shutil.rmtree(vol / "empty")
    first = m_env["DUMP_DATE"]
    m_env, r_env, logged = update(master, replica, base=first)
    assert (m_env["halt"], r_env["halt"]) == (C.DATA_HALT_SUCCESSFUL, C.DATA_HALT_SUCCESSFUL), logged
    assert r_env["NDMPD_REPLICA_STATE"] == m_env["DUMP_DATE"] != first
    assert same(vol, replica_path) == []
    assert not (replica_path / "docs" / "b.txt").exists() and (replica_path / "docs" / "c-renamed.txt").exists()
    assert debris(replica_path) == []

    stale = refusal(replica, {"FILESYSTEM": "/export/replica", "NDMPD_REPLICA_OF": MASTER_ID, "BASE_DATE": first})
    assert stale.startswith(f"stream is based on {first} but /export/replica is at {m_env['DUMP_DATE']}")
    other = refusal(replica, {"FILESYSTEM": "/export/replica", "NDMPD_REPLICA_OF": "ndmpd:other:/x"})
    assert f"is a replica of {MASTER_ID}, not of ndmpd:other:/x" in other and "ndmpd replica reset" in other
    plain = refusal(replica, {"FILESYSTEM": "/export/out", "NDMPD_REPLICA_OF": MASTER_ID})
    assert "/export/out is not a replica volume" in plain
    nameless = refusal(replica, {"FILESYSTEM": "/export/replica"})
    assert "must name its master" in nameless


def test_a_non_empty_unmanaged_path_is_refused_and_kept(world):
    master, replica, replica_path, vol = world
    replica_path.mkdir()
    (replica_path / "precious").write_text("mine")
    text = refusal(replica, {"FILESYSTEM": "/export/replica", "NDMPD_REPLICA_OF": MASTER_ID})
    assert "is not empty and holds no replica" in text
    assert (replica_path / "precious").read_text() == "mine"


def test_a_stream_cut_mid_way_leaves_the_replica_as_it_was_and_no_debris(world):
    master, replica, replica_path, vol = world
    (vol / "a").write_text("1")
    m_env, r_env, logged = update(master, replica)
    assert r_env["halt"] == C.DATA_HALT_SUCCESSFUL, logged
    before = describe(replica_path)
    block = os.urandom(1 << 20)
    with open(vol / "big.bin", "wb") as f:
        for _ in range(400):
            f.write(block)

    def kill_master() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((replica_path.parent / ".replica.ndmpd-replica" / "recv")
                                                        .glob("stage-*")):
            time.sleep(0.02)
        time.sleep(0.2)
        master.proc.kill()
        master.proc.wait(10)

    _, r_env, logged = update(master, replica, base=m_env["DUMP_DATE"], during=kill_master)
    assert r_env["halt"] != C.DATA_HALT_SUCCESSFUL
    assert any("still shows its previous state" in text for text in logged), logged
    assert describe(replica_path) == before
    assert debris(replica_path) == []


def fs_env(server, name: str) -> dict[str, str]:
    with client(server) as dma:
        infos = dma.call("CONFIG_GET_FS_INFO").fs_info
    [info] = [i for i in infos if i.fs_logical_device == name]
    return {p.name: p.value for p in info.fs_env}


def replica_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndmpd", "replica", "--config", str(server.config), *args],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])


def test_fs_info_the_cli_and_a_restart_that_cleans_debris(world):
    master, replica, replica_path, vol = world
    assert fs_env(replica, "/export/replica")["NDMPD_REPLICA"] == "y"
    assert "NDMPD_REPLICA" not in fs_env(replica, "/export/out")
    (vol / "a").write_text("1")
    first = update(master, replica)[0]["DUMP_DATE"]
    (vol / "a").write_text("2")
    second = update(master, replica, base=first)[0]["DUMP_DATE"]
    env = fs_env(replica, "/export/replica")
    assert (env["NDMPD_REPLICA_OF"], env["NDMPD_REPLICA_STATE"], env["NDMPD_REPLICA_ROLE"]) == (
        MASTER_ID, second, "replica")
    assert env["NDMPD_REPLICA_STATES"] == f"{second},{first}"
    status = json.loads(replica_cli(replica, "status", "/export/replica", "--json").stdout)
    assert (status["master"], status["state"], [s["id"] for s in status["states"]]) == (MASTER_ID, second,
                                                                                         [second, first])

    store = replica_path.parent / ".replica.ndmpd-replica" / "recv"
    subprocess.run(["btrfs", "subvolume", "create", str(store / "ndmpd-half-received")], check=True,
                   capture_output=True)
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(store / "state-2"),
                    str(replica_path.parent / ".replica.ndmpd-next")], check=True, capture_output=True)
    replica.stop()
    restarted = ServerProcess(replica.host, replica.config, replica.log, PASSWORD)
    try:
        assert debris(replica_path) == []
        assert (replica_path / "a").read_text() == "2"

        done = replica_cli(restarted, "rollback", "/export/replica")
        assert done.returncode == 0 and first in done.stdout, done.stderr
        assert (replica_path / "a").read_text() == "1"
        assert fs_env(restarted, "/export/replica")["NDMPD_REPLICA_STATE"] == ""    # only a full update fits
        text = refusal(restarted, {"FILESYSTEM": "/export/replica", "NDMPD_REPLICA_OF": MASTER_ID,
                                   "BASE_DATE": first})
        assert "a full update is needed" in text
        assert replica_cli(restarted, "reset", "/export/replica").returncode == 0
        assert fs_env(restarted, "/export/replica")["NDMPD_REPLICA_OF"] == ""
        bad = replica_cli(restarted, "status", "/export/out")
        assert bad.returncode == 1 and "not a replica volume" in bad.stderr
    finally:
        restarted.stop()


# -- the btrfs stream path --------------------------------------------------------------------

@pytest.fixture
def btrfs_world(tmp_path):
    """(master, replica server, replica path, master volume): each server on its own btrfs, the
    master's /export/data a subvolume with the tricky tree in tree/."""
    with btrfs_mount(tmp_path, "fs1", 400 << 20) as fs1, btrfs_mount(tmp_path, "fs2", 400 << 20) as fs2:
        (fs1 / "m").mkdir()
        (fs2 / "r").mkdir()
        assert subprocess.run(["btrfs", "subvolume", "create", str(fs1 / "m" / "vol")],
                              capture_output=True).returncode == 0
        replica_path = fs2 / "r" / "replica"
        build_every_case(fs1 / "m" / "vol" / "tree")
        with servers(tmp_path, "fs1/m", "fs2/r",
                     extra={"fs2/r": REPLICA_VOLUME.format(path=replica_path)}) as (master, replica):
            yield master, replica, replica_path, fs1 / "m" / "vol"


def held(vol: Path, state_id: str) -> Path:
    return holds.find(vol, state_id).path


def ok(m_env: dict, r_env: dict, logged: list[str]) -> None:
    assert (m_env["halt"], r_env["halt"]) == (C.DATA_HALT_SUCCESSFUL, C.DATA_HALT_SUCCESSFUL), logged
    assert r_env["NDMPD_REPLICA_STATE"] == m_env["DUMP_DATE"]


def test_btrfs_initial_sync_is_identical_then_an_incremental_and_a_wrong_parent(btrfs_world):
    master, replica, replica_path, vol = btrfs_world
    m_env, r_env, logged = update(master, replica, butype="btrfs")
    ok(m_env, r_env, logged)
    first = m_env["DUMP_DATE"]
    assert differences(describe(held(vol, first) / "tree"), describe(replica_path / "tree")) == []
    with pytest.raises(OSError) as err:
        (replica_path / "tree" / "new").write_text("x")
    assert err.value.errno == errno.EROFS

    (vol / "tree" / "dir" / "file").write_bytes(b"changed\n")
    os.unlink(vol / "tree" / "top-hard")
    (vol / "tree" / "zero").rename(vol / "tree" / "zero-renamed")
    m_env, r_env, logged = update(master, replica, butype="btrfs", base=first)
    ok(m_env, r_env, logged)
    second = m_env["DUMP_DATE"]
    assert int(m_env["NDMPD_IMAGE_SIZE"]) < 64 << 10
    assert differences(describe(held(vol, second) / "tree"), describe(replica_path / "tree")) == []
    assert fs_env(replica, "/export/replica")["NDMPD_REPLICA_STATE"] == second

    stale = refusal(replica, {"FILESYSTEM": "/export/replica", "NDMPD_REPLICA_OF": MASTER_ID,
                              "BASE_DATE": first}, butype="btrfs")
    assert stale.startswith(f"stream is based on {first} but /export/replica is at {second}")

    (vol / "tree" / "third").write_text("3")           # the replica asks for second, the master sends on first
    before = describe(replica_path)
    _, r_env, logged = update(master, replica, butype="btrfs", base=second, master_base=first)
    assert r_env["halt"] != C.DATA_HALT_SUCCESSFUL
    assert any(f"not on BASE_DATE={second}" in text for text in logged), logged
    assert describe(replica_path) == before and debris(replica_path) == []


def test_btrfs_a_stream_cut_mid_way_leaves_the_replica_as_it_was(btrfs_world):
    master, replica, replica_path, vol = btrfs_world
    m_env, r_env, logged = update(master, replica, butype="btrfs")
    ok(m_env, r_env, logged)
    before = describe(replica_path)
    block = os.urandom(1 << 20)
    with open(vol / "big.bin", "wb") as f:
        for _ in range(250):
            f.write(block)
    recv = replica_path.parent / ".replica.ndmpd-replica" / "recv"

    def kill_master() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [n for n in os.listdir(recv) if not n.startswith("state-")]:
            time.sleep(0.01)
        master.proc.kill()
        master.proc.wait(10)

    _, r_env, logged = update(master, replica, butype="btrfs", base=m_env["DUMP_DATE"], during=kill_master)
    assert r_env["halt"] != C.DATA_HALT_SUCCESSFUL
    assert any("still shows its previous state" in text for text in logged), logged
    assert describe(replica_path) == before and debris(replica_path) == []


def test_promote_makes_the_replica_writable_and_refuses_further_streams(btrfs_world):
    master, replica, replica_path, vol = btrfs_world
    m_env, r_env, logged = update(master, replica, butype="btrfs")
    ok(m_env, r_env, logged)
    (vol / "tree" / "last").write_text("final")
    m_env, r_env, logged = update(master, replica, butype="btrfs", base=m_env["DUMP_DATE"],
                                  replica_env={"NDMPD_PROMOTE": "y"})
    ok(m_env, r_env, logged)
    assert differences(describe(held(vol, m_env["DUMP_DATE"]) / "tree"), describe(replica_path / "tree")) == []
    (replica_path / "tree" / "written-after-promote").write_text("rw")
    assert fs_env(replica, "/export/replica")["NDMPD_REPLICA_ROLE"] == "primary"
    text = refusal(replica, {"FILESYSTEM": "/export/replica", "NDMPD_REPLICA_OF": MASTER_ID,
                             "BASE_DATE": m_env["DUMP_DATE"]}, butype="btrfs")
    assert "was promoted and is read-write" in text and "NDMPD_DEMOTE=y" in text


def test_a_replica_server_killed_mid_update_restarts_consistent_and_resumes(btrfs_world):
    master, replica, replica_path, vol = btrfs_world
    m_env, r_env, logged = update(master, replica, butype="btrfs")
    ok(m_env, r_env, logged)
    first = m_env["DUMP_DATE"]
    before = describe(replica_path)
    block = os.urandom(1 << 20)
    with open(vol / "big.bin", "wb") as f:
        for _ in range(250):
            f.write(block)
    recv = replica_path.parent / ".replica.ndmpd-replica" / "recv"
    with client(master) as m, client(replica) as r:
        listen = r.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        r.call("DATA_START_RECOVER", butype_name="btrfs", nlist=[], env=pairs({
            "FILESYSTEM": "/export/replica", "NDMPD_REPLICA_OF": MASTER_ID, "BASE_DATE": first}))
        m.call("DATA_CONNECT", addr=listen.connect_addr)
        m.call("DATA_START_BACKUP", butype_name="btrfs", env=pairs({
            "FILESYSTEM": "/export/data", "NDMPD_HOLD": "ndmp-test-0", "BASE_DATE": first}))
        assert wait_for(lambda: [n for n in os.listdir(recv) if not n.startswith("state-")], 60, 0.01), \
            "the receive never started"
        replica.proc.kill()
        replica.proc.wait(30)
        assert m.wait_post(C.NOTIFY_DATA_HALTED, 60).reason != C.DATA_HALT_SUCCESSFUL
        m.call("DATA_STOP")
    # the orphaned btrfs receive sees its stdin end and exits (no fixed guess at how long it takes)
    assert wait_for(lambda: not receiving_into(recv), 60), "the orphaned btrfs receive still runs"
    assert describe(replica_path) == before
    restarted = ServerProcess(replica.host, replica.config, replica.log, PASSWORD)
    try:
        assert debris(replica_path) == []
        assert fs_env(restarted, "/export/replica")["NDMPD_REPLICA_STATE"] == first
        m_env, r_env, logged = update(master, restarted, butype="btrfs", base=first)   # resumes: no full resend
        ok(m_env, r_env, logged)
        assert m_env["BASE_DATE"] == first           # an incremental on the state kept, not a full resend
        assert differences(describe(held(vol, m_env["DUMP_DATE"]) / "tree"), describe(replica_path / "tree")) == []
        assert (replica_path / "big.bin").stat().st_size == 250 << 20
    finally:
        restarted.stop()


def receiving_into(recv: Path) -> list[int]:
    """The ``btrfs receive`` processes still running in ``recv``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"receive" in args and any(os.fsencode(recv) in arg for arg in args):
            found.append(int(pid))
    return found


def test_promote_then_reverse_the_old_master_is_demoted_into_a_replica(tmp_path):
    """Both volumes are configured replica = true (a migration that may be reversed): M's is an
    ordinary subvolume while it is the master; after the cut-over M takes the stream back with
    NDMPD_DEMOTE=y (a full re-seed of its frozen volume), then incrementals."""
    with btrfs_mount(tmp_path, "fs1", 400 << 20) as fs1, btrfs_mount(tmp_path, "fs2", 400 << 20) as fs2:
        (fs1 / "m").mkdir()
        (fs2 / "r").mkdir()
        m_path, r_path = fs1 / "m" / "prim", fs2 / "r" / "replica"
        assert subprocess.run(["btrfs", "subvolume", "create", str(m_path)], capture_output=True).returncode == 0
        build_every_case(m_path / "tree")
        with servers(tmp_path, "fs1/m", "fs2/r", extra={"fs1/m": REPLICA_VOLUME.format(path=m_path),
                                                      "fs2/r": REPLICA_VOLUME.format(path=r_path)}) as (m, r):
            m_id, r_id = (fs_env(s, "/export/replica")["NDMPD_VOLUME_ID"] for s in (m, r))
            m_env, r_env, logged = update(m, r, butype="btrfs", source="/export/replica", master_id=m_id)
            ok(m_env, r_env, logged)
            m_env, r_env, logged = update(m, r, butype="btrfs", source="/export/replica", master_id=m_id,
                                          base=m_env["DUMP_DATE"], master_env={"NDMPD_FREEZE": "y"},
                                          replica_env={"NDMPD_PROMOTE": "y"})
            ok(m_env, r_env, logged)
            with pytest.raises(OSError):
                (m_path / "tree" / "late").write_text("the old master is frozen")
            (r_path / "tree" / "after-cut-over").write_text("written on the new primary")

            back, m_side, logged = update(r, m, butype="btrfs", source="/export/replica", master_id=r_id,
                                          replica_env={"NDMPD_DEMOTE": "y"})
            ok(back, m_side, logged)
            assert (m_path / "tree" / "after-cut-over").read_text() == "written on the new primary"
            assert differences(describe(held(r_path, back["DUMP_DATE"]) / "tree"), describe(m_path / "tree")) == []
            env = fs_env(m, "/export/replica")
            assert (env["NDMPD_REPLICA_OF"], env["NDMPD_REPLICA_ROLE"]) == (r_id, "replica")

            (r_path / "tree" / "second").write_text("incremental back")
            again, m_side, logged = update(r, m, butype="btrfs", source="/export/replica", master_id=r_id,
                                           base=back["DUMP_DATE"])
            ok(again, m_side, logged)
            assert again["BASE_DATE"] == back["DUMP_DATE"]
            assert (m_path / "tree" / "second").read_text() == "incremental back"


def test_a_demoted_master_takes_the_first_stream_back_as_an_incremental_even_after_a_cut(tmp_path):
    """After promote, the new primary (two file systems, as two hosts) sends back an incremental
    on the promote's final snapshot: the frozen old master seeds its store from the snapshot it
    holds. The sender killed mid-stream leaves the old master frozen, unchanged, with no seed
    left; the retry is still an incremental, and the seed is then the older kept state."""
    with btrfs_mount(tmp_path, "fs1", 400 << 20) as fs1, btrfs_mount(tmp_path, "fs2", 400 << 20) as fs2:
        (fs1 / "m").mkdir()
        (fs2 / "r").mkdir()
        m_path, r_path = fs1 / "m" / "prim", fs2 / "r" / "replica"
        assert subprocess.run(["btrfs", "subvolume", "create", str(m_path)], capture_output=True).returncode == 0
        build_every_case(m_path / "tree")
        with servers(tmp_path, "fs1/m", "fs2/r", extra={"fs1/m": REPLICA_VOLUME.format(path=m_path),
                                                      "fs2/r": REPLICA_VOLUME.format(path=r_path)}) as (m, r):
            m_id, r_id = (fs_env(s, "/export/replica")["NDMPD_VOLUME_ID"] for s in (m, r))
            m_env, r_env, logged = update(m, r, butype="btrfs", source="/export/replica", master_id=m_id)
            ok(m_env, r_env, logged)
            final, r_env, logged = update(m, r, butype="btrfs", source="/export/replica", master_id=m_id,
                                          base=m_env["DUMP_DATE"], master_env={"NDMPD_FREEZE": "y"},
                                          replica_env={"NDMPD_PROMOTE": "y"})
            ok(final, r_env, logged)
            cut_over = final["DUMP_DATE"]
            frozen = describe(m_path)
            block = os.urandom(1 << 20)
            with open(r_path / "tree" / "big.bin", "wb") as f:
                for _ in range(200):
                    f.write(block)
            recv = m_path.parent / ".prim.ndmpd-replica" / "recv"

            def kill_sender() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not (recv.is_dir() and list(recv.glob("seed-*"))):
                    time.sleep(0.005)
                r.proc.kill()
                r.proc.wait(10)

            _, m_side, logged = update(r, m, butype="btrfs", source="/export/replica", master_id=r_id,
                                       base=cut_over, replica_env={"NDMPD_DEMOTE": "y"}, during=kill_sender)
            assert m_side["halt"] != C.DATA_HALT_SUCCESSFUL
            assert any("still shows its previous state" in text for text in logged), logged
            assert describe(m_path) == frozen
            assert holds.frozen(m_path)
            assert os.listdir(recv) == []                       # the seed went with the partial receive
            assert fs_env(m, "/export/replica")["NDMPD_REPLICA_STATE"] == ""

            restarted = ServerProcess(r.host, r.config, r.log, PASSWORD)
            try:
                back, m_side, logged = update(restarted, m, butype="btrfs", source="/export/replica",
                                              master_id=r_id, base=cut_over, replica_env={"NDMPD_DEMOTE": "y"})
                ok(back, m_side, logged)
                assert back["BASE_DATE"] == cut_over              # an incremental, not a re-seed
                assert int(back["NDMPD_IMAGE_SIZE"]) < (200 << 20) + (4 << 20)
                assert differences(describe(held(r_path, back["DUMP_DATE"])), describe(m_path)) == []
                assert holds.frozen(m_path)                       # a replica: read-only
                env = fs_env(m, "/export/replica")
                assert (env["NDMPD_REPLICA_OF"], env["NDMPD_REPLICA_ROLE"]) == (r_id, "replica")
                assert env["NDMPD_REPLICA_STATES"].split(",") == [back["DUMP_DATE"], cut_over]
                assert sorted(os.listdir(recv)) == ["state-1", "state-2"]
            finally:
                restarted.stop()
