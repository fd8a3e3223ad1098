"""Recover into a replica volume, against real ``ndmpd serve`` processes: the master's data
server connects to the replica's (DATA_CONNECT to its DATA_LISTEN) and backs up, the replica
applies the stream as its next state and switches it in whole. Refusals come at START with the
reason; a stream cut mid-way leaves the replica as it was, with no debris."""

from __future__ import annotations

import contextlib
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
from tests.loopfs import btrfs_subvolume
from tests.server_process import ServerProcess
from tests.trees import describe, differences

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
           replica_env: dict | None = None, during=None) -> tuple[dict, dict, list[str]]:
    """One update master → replica; (master's env, replica's env, replica's log messages)."""
    with client(master) as m, client(replica) as r:
        listen = r.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        r.call("DATA_START_RECOVER", butype_name=butype, nlist=[], env=pairs({
            "FILESYSTEM": "/export/replica", "TYPE": butype, "NDMPD_REPLICA_OF": MASTER_ID, "BASE_DATE": base,
            **(replica_env or {})}))
        m.call("DATA_CONNECT", addr=listen.connect_addr)
        backup = {"FILESYSTEM": "/export/data", "HIST": "n", "UPDATE": "y"}
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
    """Anything beside P and its store, and anything in recv/ that is not a recorded state."""
    store = replica_path.parent / f".{replica_path.name}.ndmpd-replica" / "recv"
    extra = [n for n in os.listdir(replica_path.parent)
             if n not in ("vol", "replica", ".replica.ndmpd-replica", ".replica.ndmpd-old")]
    return extra + [n for n in (os.listdir(store) if store.is_dir() else []) if not n.startswith("state-")]


def same(master_tree: Path, replica_path: Path) -> list[str]:
    a, b = describe(master_tree), describe(replica_path)
    a.pop(b".", None), b.pop(b".", None)       # the roots: the replica's is its own subvolume's
    return differences(a, b)


def test_the_dump_path_initial_and_incremental_with_deletes_and_renames(world):
    master, replica, replica_path, vol = world
    build_every_case(vol)
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
