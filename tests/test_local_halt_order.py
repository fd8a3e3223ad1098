"""The end of a LOCAL backup, as a DMA sees it: both sides are HALTED before the first halt
notice goes out, NOTIFY_DATA_HALTED first and NOTIFY_MOVER_HALTED after it.

ndmjob wakes on a halt notice, reads both states, and before it shuts the job down waits for
one more notice (up to 2 s). When the mover's notice came first, with the data side still
ACTIVE a moment longer, ndmjob read ACTIVE, waited for the data's notice, and then sat out its
2 s: a third of its two-way backups ended that late. The order here is what lets every one end
at once. A mover that fails is the cause of the end, not its consequence: its reason goes first.
"""

from __future__ import annotations

import os
import threading

import pytest

from ndmpd.config import build
from ndmpd.devices.tape import MediaError
from ndmpd.devices.virtual_tape import VirtualTape
from ndmpd.mover.handoff import Handoff
from ndmpd.wire import C, T

from .server_thread import ServerThread

ALL = (1 << 64) - 1
KiB, MiB = 1 << 10, 1 << 20
HALTS = {C.NOTIFY_DATA_HALTED, C.NOTIFY_MOVER_HALTED}


@pytest.fixture
def server(tmp_path):
    vol = tmp_path / "vol"
    for d in range(4):
        (vol / f"d{d}").mkdir(parents=True)
        for f in range(50):
            (vol / f"d{d}" / f"f{f}").write_bytes(os.urandom(1 + (d * 50 + f) * 97 % 40_000))
    data = {
        "server": {"listen": ["127.0.0.1:0"], "state_dir": str(tmp_path / "state"), "auth": ["md5", "text"]},
        "user": [{"name": "ndmp", "password": "secret"}],
        "volume": [{"name": "/vol", "path": str(vol), "snapshot": "none"}],
        "tape": [{"name": "t0", "path": str(tmp_path / "t0.img"), "capacity": "1GiB"}],
    }
    (tmp_path / "state").mkdir()
    s = ServerThread(build(data, "<test>", tmp_path))
    yield s
    s.stop()


def listen_local(dma, record: int = 64 * KiB) -> None:
    dma.call("TAPE_OPEN", device="t0", mode=C.TAPE_RDWR_MODE)
    dma.call("MOVER_SET_RECORD_SIZE", len=record)
    dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
    dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_LOCAL)


@pytest.mark.parametrize("version", [3, 4])
def test_both_sides_are_halted_when_the_first_halt_notice_arrives(server, version):
    with server.client(version=version) as dma:
        for _ in range(3):                   # one backup after another, as a DMA's jobs run
            listen_local(dma)
            dma.call("DATA_CONNECT", addr=T.addr(addr_type=C.ADDR_LOCAL))
            dma.call("DATA_START_BACKUP", butype_name="tar", env=[T.pval(name="FILESYSTEM", value="/vol")])
            first, body = dma.next_post(HALTS)
            data, mover = dma.call("DATA_GET_STATE"), dma.call("MOVER_GET_STATE")
            assert (data.state, mover.state) == (C.DATA_STATE_HALTED, C.MOVER_STATE_HALTED)
            assert first == C.NOTIFY_DATA_HALTED
            assert body.reason == C.DATA_HALT_SUCCESSFUL
            assert dma.wait_post(C.NOTIFY_MOVER_HALTED, timeout=10).reason == C.MOVER_HALT_CONNECT_CLOSED
            dma.call("DATA_STOP")
            dma.call("MOVER_STOP")
            dma.call("TAPE_CLOSE")


def _back_up(dma) -> None:
    listen_local(dma)
    dma.call("DATA_CONNECT", addr=T.addr(addr_type=C.ADDR_LOCAL))
    dma.call("DATA_START_BACKUP", butype_name="tar", env=[T.pval(name="FILESYSTEM", value="/vol")])
    for code in (C.NOTIFY_DATA_HALTED, C.NOTIFY_MOVER_HALTED):
        dma.wait_post(code, timeout=30)
    dma.call("DATA_STOP")
    dma.call("MOVER_STOP")


@pytest.mark.parametrize("version", [3, 4])
def test_a_local_restore_the_dma_closes_halts_the_mover_notice_after_the_data_one(server, tmp_path, version):
    """ndmjob's restore: the mover stops at the image's end (PAUSED) while the data side still
    restores; the DMA closes the mover. Its halt notice waits for the data side's, so the DMA,
    woken by NOTIFY_DATA_HALTED, finds both HALTED and then gets the mover's notice."""
    with server.client(version=version) as dma:
        _back_up(dma)
        dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
        dma.call("MOVER_SET_RECORD_SIZE", len=64 * KiB)
        dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_WRITE, addr_type=C.ADDR_LOCAL)
        dma.call("DATA_CONNECT", addr=T.addr(addr_type=C.ADDR_LOCAL))
        dma.call("DATA_START_RECOVER", butype_name="tar", nlist=[],
                 env=[T.pval(name="FILESYSTEM", value="/vol"), T.pval(name="PREFIX", value="/vol/restored")])
        read = dma.wait_post(C.NOTIFY_DATA_READ, timeout=20)
        dma.call("MOVER_READ", offset=read.offset, length=read.length)
        dma.wait_post(C.NOTIFY_MOVER_PAUSED, timeout=30)
        dma.call("MOVER_CLOSE")
        first, body = dma.next_post(HALTS, timeout=30)
        assert first == C.NOTIFY_DATA_HALTED and body.reason == C.DATA_HALT_SUCCESSFUL
        data, mover = dma.call("DATA_GET_STATE"), dma.call("MOVER_GET_STATE")
        assert (data.state, mover.state) == (C.DATA_STATE_HALTED, C.MOVER_STATE_HALTED)
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED, timeout=10).reason == C.MOVER_HALT_CONNECT_CLOSED
        dma.call("DATA_STOP")
        dma.call("MOVER_STOP")
    assert sorted(p.name for p in (tmp_path / "vol" / "restored" / "d3").iterdir()) == sorted(f"f{f}" for f in range(50))


@pytest.mark.parametrize("version", [3, 4])
def test_a_mover_that_fails_mid_backup_posts_its_reason_before_the_data_halt(server, monkeypatch, version):
    """The tape fails while the data side still streams: the DMA hears the mover's words and
    halt first (so it reports "media error: ..." as the cause), then the data side's halt."""
    def failing(self, data, size):
        raise MediaError("the drive reported a write fault")
    monkeypatch.setattr(VirtualTape, "write_records", failing)
    with server.client(version=version) as dma:
        listen_local(dma)
        dma.call("DATA_CONNECT", addr=T.addr(addr_type=C.ADDR_LOCAL))
        dma.call("DATA_START_BACKUP", butype_name="tar", env=[T.pval(name="FILESYSTEM", value="/vol")])
        first, body = dma.next_post(HALTS | {C.LOG_MESSAGE}, timeout=30)
        assert first == C.LOG_MESSAGE and body.entry.startswith("mover halted: tape write failed: ")
        assert "the drive reported a write fault" in body.entry
        first, body = dma.next_post(HALTS, timeout=30)
        expected = C.MOVER_HALT_MEDIA_ERROR if version == 4 else C.MOVER_HALT_INTERNAL_ERROR
        assert (first, body.reason) == (C.NOTIFY_MOVER_HALTED, expected)
        data = dma.wait_post(C.NOTIFY_DATA_HALTED, timeout=30)
        assert data.reason != C.DATA_HALT_SUCCESSFUL
        dma.call("DATA_STOP")
        dma.call("MOVER_STOP")


def test_a_mover_with_no_data_side_running_posts_its_notice_at_once(server):
    """A stream handed over with no data service behind it: nothing is held."""
    with server.client() as dma:
        listen_local(dma)
        session = server.only_session()
        peer, handoff = server.on_loop(session.mover.accept_local)
        writer = threading.Thread(target=lambda: (handoff.put(memoryview(bytes(3 * MiB + 100))),
                                                  handoff.end()), daemon=True)
        writer.start()
        assert dma.wait_post(C.NOTIFY_MOVER_HALTED, timeout=10).reason == C.MOVER_HALT_CONNECT_CLOSED
        assert handoff.wait_finished(threading.Event(), poll=0.05)
        writer.join(10)
        assert dma.call("MOVER_GET_STATE").state == C.MOVER_STATE_HALTED
        peer.close()
        dma.call("MOVER_STOP")


def test_held_notices_go_after_the_data_halt_or_after_the_limit():
    posted: list[str] = []
    waiting = Handoff(local=True)
    waiting.after_data_halted(lambda: posted.append("held"), limit=30.0)
    assert posted == []
    waiting.data_halted()
    assert posted == ["held"]
    waiting.after_data_halted(lambda: posted.append("late"), limit=30.0)    # halted already: at once
    assert posted == ["held", "late"]
    never = Handoff(local=True)
    released = threading.Event()
    never.after_data_halted(released.set, limit=0.2)      # a data side that never halts
    assert released.wait(10)
    never.data_halted()                                   # nothing runs twice
    assert posted == ["held", "late"]
