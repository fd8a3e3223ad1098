"""Butype btrfs against real ndmpd processes on real btrfs (loop devices, as root): data-to-data
full and incremental images between two servers, holds, refusals, freeze/thaw, release, the
volume id; and ndmjob backing a btrfs volume up to a virtual tape and restoring it."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from ndmpd.snapshots import btrfs_send, holds
from ndmpd.wire import C, T
from tests.blocking_client import NdmpClient, NdmpReplyError
from tests.engine_helpers import build_every_case
from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, PASSWORD, run, servers
from tests.loopfs import btrfs_mount, sh
from tests.trees import describe, differences

PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB


def pv(**values: str) -> list:
    return [T.pval(name=k, value=v) for k, v in values.items()]


def login(server) -> NdmpClient:
    client = NdmpClient(server.host, timeout=60)
    client.login("ndmp", PASSWORD)
    return client


def side(mnt: Path, name: str) -> Path:
    """A server root on a btrfs mount whose vol/ (/export/data) is a subvolume."""
    root = mnt / name
    root.mkdir()
    assert sh("btrfs", "subvolume", "create", str(root / "vol")).returncode == 0
    return root


def backup_to(master, replica, **env: str) -> tuple[int, int, dict[str, str], list[str]]:
    """One btrfs image from master's /export/data into a new subvolume in replica's /export/out:
    (master's halt reason, replica's, master's env after, replica's log messages)."""
    m, r = login(master), login(replica)
    try:
        listen = r.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        r.call("DATA_START_RECOVER", butype_name="btrfs", env=pv(FILESYSTEM="/export/out"), nlist=[])
        m.call("DATA_CONNECT", addr=listen.connect_addr)
        m.call("DATA_START_BACKUP", butype_name="btrfs", env=pv(FILESYSTEM="/export/data", **env))
        m_reason = m.wait_post(C.NOTIFY_DATA_HALTED, 120).reason
        r_reason = r.wait_post(C.NOTIFY_DATA_HALTED, 120).reason
        result = {p.name: p.value for p in m.call("DATA_GET_ENV").env}
        logs = [body.entry for code, body in r.posts if code == C.LOG_MESSAGE]
        m.call("DATA_STOP")
        r.call("DATA_STOP")
        return m_reason, r_reason, result, logs
    finally:
        m.close()
        r.close()


def kept(vol: Path, hold: str) -> set[str]:
    return {h.uuid for h in holds.held(vol, hold)}


def subvolumes(mnt: Path) -> list[str]:
    return [line.split(" path ", 1)[1] for line in sh("btrfs", "subvolume", "list", str(mnt)).stdout.splitlines()]


@pytest.fixture
def pair(tmp_path):
    """Two servers, each on its own btrfs: a (master, its tree in vol/tree) and b."""
    with btrfs_mount(tmp_path, "fs1", 400 << 20) as fs1, btrfs_mount(tmp_path, "fs2", 400 << 20) as fs2:
        a, b = side(fs1, "a"), side(fs2, "b")
        build_every_case(a / "vol" / "tree")
        (a / "vol" / "tree" / "big.bin").write_bytes(os.urandom(16 << 20))
        with servers(tmp_path, "fs1/a", "fs2/b") as (master, replica):
            yield master, replica, a, b, fs1


def test_full_then_incremental_data_to_data_moves_only_the_change(pair):
    master, replica, a, b, _ = pair
    vol = a / "vol"
    m_reason, r_reason, full, _ = backup_to(master, replica, NDMPD_HOLD="h1")
    assert (m_reason, r_reason) == (C.DATA_HALT_SUCCESSFUL, C.DATA_HALT_SUCCESSFUL)
    assert full["TYPE"] == "btrfs" and full["BASE_DATE"] == "0" and full["FILESYSTEM"] == "/export/data"
    first = holds.held(vol, "h1")
    assert [h.uuid for h in first] == [full["DUMP_DATE"]] and first[0].name == full["NDMPD_SNAPSHOT_NAME"]
    received = b / "out" / full["NDMPD_SNAPSHOT_NAME"]
    assert btrfs_send.subvolume_info(received).received_uuid == full["DUMP_DATE"]
    assert differences(describe(first[0].path / "tree"), describe(received / "tree")) == []
    assert float(full["NDMPD_SNAPSHOT_TIME"]) > 1.7e9

    (vol / "tree" / "dir" / "file").write_bytes(b"one small change\n")
    os.unlink(vol / "tree" / "top-hard")
    m_reason, r_reason, inc, _ = backup_to(master, replica, NDMPD_HOLD="h1", BASE_DATE=full["DUMP_DATE"])
    assert (m_reason, r_reason) == (C.DATA_HALT_SUCCESSFUL, C.DATA_HALT_SUCCESSFUL)
    assert inc["BASE_DATE"] == full["DUMP_DATE"]
    assert int(inc["NDMPD_IMAGE_SIZE"]) * 50 < int(full["NDMPD_IMAGE_SIZE"]), (inc, full)
    assert kept(vol, "h1") == {full["DUMP_DATE"], inc["DUMP_DATE"]}
    newest = holds.find(vol, inc["DUMP_DATE"])
    assert differences(describe(newest.path / "tree"), describe(b / "out" / inc["NDMPD_SNAPSHOT_NAME"] / "tree")) == []

    (vol / "tree" / "new").write_bytes(b"third")
    _, _, third, _ = backup_to(master, replica, NDMPD_HOLD="h1", BASE_DATE=inc["DUMP_DATE"])
    assert kept(vol, "h1") == {inc["DUMP_DATE"], third["DUMP_DATE"]}     # {base, newest}: the first is gone

    with login(master) as m:
        fs = {f.fs_logical_device: {p.name: p.value for p in f.fs_env}
              for f in m.call("CONFIG_GET_FS_INFO").fs_info}
    server_id = (a / "state" / "server-id").read_text().strip()
    assert fs["/export/data"]["NDMPD_VOLUME_ID"] == f"btrfs:{btrfs_send.subvolume_info(vol).uuid}"
    assert fs["/export/out"]["NDMPD_VOLUME_ID"] == f"ndmpd:{server_id}:/export/out"


def refuse_peer() -> tuple[socket.socket, threading.Thread]:
    """A data peer that takes 64 KiB and hangs up (a failed transfer)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_refusals_failure_freeze_thaw_and_release(pair):
    master, replica, a, b, fs1 = pair
    vol = a / "vol"
    _, _, full, _ = backup_to(master, replica, NDMPD_HOLD="h")
    with login(master) as m:
        m.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        with pytest.raises(NdmpReplyError) as refused:
            m.call("DATA_START_BACKUP", butype_name="btrfs",
                   env=pv(FILESYSTEM="/export/data", NDMPD_HOLD="h", BASE_DATE="0f0e0d0c-0000-4000-8000-000000000000"))
        assert refused.value.code == C.ILLEGAL_ARGS_ERR
        text = m.wait_post(C.LOG_MESSAGE, 10).entry
        assert "0f0e0d0c-0000-4000-8000-000000000000 is not kept on /export/data" in text
        assert "a full update is needed" in text
        with pytest.raises(NdmpReplyError):
            m.call("DATA_START_BACKUP", butype_name="btrfs", env=pv(FILESYSTEM="/export/out"))
        assert "needs a btrfs subvolume volume" in m.wait_post(C.LOG_MESSAGE, 10).entry

    before, listed = kept(vol, "h"), subvolumes(fs1)
    listener, thread = refuse_peer()
    with listener, login(master) as m:
        host, port = listener.getsockname()
        from ndmpd.mover.addresses import Endpoint, to_ndmp
        m.call("DATA_CONNECT", addr=to_ndmp(Endpoint(host, port)))
        m.call("DATA_START_BACKUP", butype_name="btrfs", env=pv(FILESYSTEM="/export/data", NDMPD_HOLD="h"))
        assert m.wait_post(C.NOTIFY_DATA_HALTED, 120).reason != C.DATA_HALT_SUCCESSFUL
    thread.join(10)
    assert kept(vol, "h") == before and subvolumes(fs1) == listed        # no new snapshot anywhere

    m_reason, _, frozen, _ = backup_to(master, replica, NDMPD_HOLD="h", BASE_DATE=full["DUMP_DATE"], NDMPD_FREEZE="y")
    assert m_reason == C.DATA_HALT_SUCCESSFUL and btrfs_send.subvolume_info(vol).readonly
    with pytest.raises(OSError) as written:
        (vol / "tree" / "after-freeze").write_bytes(b"no")
    assert written.value.errno == 30                                     # EROFS
    _, _, thawed, _ = backup_to(master, replica, NDMPD_HOLD="h", BASE_DATE=frozen["DUMP_DATE"], NDMPD_THAW="y")
    (vol / "tree" / "after-thaw").write_bytes(b"yes")
    assert kept(vol, "h") == {frozen["DUMP_DATE"], thawed["DUMP_DATE"]}

    with login(master) as m:                       # no peer ever connects: release does not wait for one
        m.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        m.call("DATA_START_BACKUP", butype_name="btrfs",
               env=pv(FILESYSTEM="/export/data", NDMPD_HOLD="h", NDMPD_RELEASE="y"))
        assert m.wait_post(C.NOTIFY_DATA_HALTED, 20).reason == C.DATA_HALT_SUCCESSFUL
        m.call("DATA_STOP")
    assert kept(vol, "h") == set()


def ndmjob(*args: str, timeout: int = 180) -> str:
    done = run([str(PROGRAM), "-v", *args], timeout=timeout)
    return done.stdout + done.stderr


@pytest.mark.parametrize("mover", ["local", "three-way"])
def test_ndmjob_backs_up_a_btrfs_volume_to_tape_and_restores_it(tmp_path, mover):
    """LOCAL: the data and tape on one server (the mover takes the image from the data
    service's buffers); three-way: the tape on a second server, the image over TCP."""
    if not NDMJOB.exists():
        pytest.skip("ndmjob not installed (apt-get install amanda-common)")
    with btrfs_mount(tmp_path, "fs", 400 << 20) as fs:
        root = side(fs, "a")
        build_every_case(root / "vol" / "tree")
        (root / "vol" / "tree" / "big.bin").write_bytes(os.urandom(3 << 20))
        with servers(tmp_path, "fs/a", *(["tape"] if mover == "three-way" else [])) as started:
            agent, index = started[0].agent("4"), tmp_path / "btrfs.idx"
            tape = ["-T", started[1].agent("4")] if mover == "three-way" else []
            out = ndmjob("-c", "-D", agent, *tape, "-f", "vtape0", "-B", "btrfs", "-C", "/export/data",
                         "-I", str(index))
            assert "Operation ended OKAY" in out, out
            env = dict(line[3:].split("=", 1) for line in index.read_text().splitlines() if line.startswith("DE "))
            assert env["TYPE"] == "btrfs" and env["NDMPD_SNAPSHOT_NAME"].startswith("ndmpd-")
            assert not any(h for h in holds.held(root / "vol"))                    # a temporary snapshot: gone
            restored = ndmjob("-x", "-D", agent, *tape, "-f", "vtape0", "-B", "btrfs", "-C", str(root / "out"),
                              "-J", str(index))
            assert "Operation ended OKAY" in restored, restored
            made = root / "out" / env["NDMPD_SNAPSHOT_NAME"]
            info = btrfs_send.subvolume_info(made)
            assert info.readonly and info.received_uuid == env["DUMP_DATE"]
            assert differences(describe(root / "vol"), describe(made)) == []           # no trace of the snapshot
            again = ndmjob("-x", "-D", agent, *tape, "-f", "vtape0", "-B", "btrfs", "-C", str(root / "out"),
                           "-J", str(index))
            assert "Operation ended OKAY" not in again and "already exists" in again, again
            btrfs_send.delete(made)


def _stream_of(vol: Path, mnt: Path) -> bytes:
    """A real full stream of the volume (a snapshot taken for it, then deleted)."""
    snap = mnt / "ndmpd-20260101T000000.000000-00aa11"
    btrfs_send.snapshot(vol, snap, readonly=True)
    data = bytearray()
    try:
        btrfs_send.send(snap, None, data.extend)
    finally:
        btrfs_send.delete(snap)
    return bytes(data)


def _peer_of(reply) -> tuple[str, int]:
    from ndmpd.mover.addresses import from_ndmp
    first = from_ndmp(reply.connect_addr)[0]
    return first.host, first.port


def test_a_hostile_stream_over_ndmp_and_an_abort_mid_receive_leave_nothing(pair):
    from tests.btrfs_streams import join, set_attr, split
    from ndmpd.snapshots.send_stream import A_PATH, MKFILE
    master, replica, a, b, fs1 = pair
    stream = _stream_of(a / "vol", fs1)
    version, commands = split(stream)
    i = next(n for n, (cmd, _) in enumerate(commands) if cmd == MKFILE)
    commands[i] = set_attr(commands[i], A_PATH, b"../../escape")
    hostile = join(version, commands)
    out = b / "out"
    with login(replica) as r:
        listen = r.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        r.call("DATA_START_RECOVER", butype_name="btrfs", env=pv(FILESYSTEM="/export/out"), nlist=[])
        with socket.create_connection(_peer_of(listen)) as peer:
            try:
                peer.sendall(hostile)
            except OSError:
                pass                                # the server may hang up first
        assert r.wait_post(C.NOTIFY_DATA_HALTED, 60).reason != C.DATA_HALT_SUCCESSFUL
        texts = [body.entry for code, body in r.posts if code == C.LOG_MESSAGE]
        assert any("'..'" in text for text in texts), texts
        r.call("DATA_STOP")

        listen = r.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        r.call("DATA_START_RECOVER", butype_name="btrfs", env=pv(FILESYSTEM="/export/out"), nlist=[])
        with socket.create_connection(_peer_of(listen)) as peer:
            peer.sendall(stream[:len(stream) // 2])          # half a stream, then silence
            for _ in range(100):
                if os.listdir(out):
                    break
                threading.Event().wait(0.05)
            assert os.listdir(out), "the receive never started"
            r.call("DATA_ABORT")
            assert r.wait_post(C.NOTIFY_DATA_HALTED, 60).reason == C.DATA_HALT_ABORTED
        r.call("DATA_STOP")
    assert os.listdir(out) == []
    assert not any("escape" in dirs + files for _, dirs, files in os.walk(b.parent))   # the whole replica fs
