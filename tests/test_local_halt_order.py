"""The end of a LOCAL backup, as a DMA sees it: both sides are HALTED before the first halt
notice goes out, NOTIFY_DATA_HALTED first and NOTIFY_MOVER_HALTED after it.

ndmjob wakes on a halt notice, reads both states, and before it shuts the job down waits for
one more notice (up to 2 s). When the mover's notice came first, with the data side still
ACTIVE a moment longer, ndmjob read ACTIVE, waited for the data's notice, and then sat out its
2 s: a third of its two-way backups ended that late. The order here is what lets every one end
at once.
"""

from __future__ import annotations

import os
import threading

import pytest

from ndmpd.config import build
from ndmpd.mover import pump
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


def test_the_mover_notice_does_not_wait_for_a_data_side_that_never_halts(server, monkeypatch):
    """A stream handed over with no data service behind it (nothing will post a data halt):
    the mover's halt notice goes out once NOTICE_HOLD has passed."""
    monkeypatch.setattr(pump, "NOTICE_HOLD", 0.3)
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


def test_a_relayed_stream_does_not_hold_the_mover_notice(monkeypatch):
    """A TLS relay's handoff: the writer is another server's data service, whose halt this
    server never sees, so the end of its stream halts the mover at once."""
    monkeypatch.setattr(pump, "NOTICE_HOLD", 30.0)
    relayed, local = Handoff("the TLS data connection ended"), Handoff(local=True)
    for handoff in (relayed, local):
        handoff.end()
    done = threading.Thread(target=pump._hand_back, args=(relayed,), daemon=True)
    done.start()
    done.join(10)
    assert not done.is_alive() and relayed.finished
    held = threading.Thread(target=pump._hand_back, args=(local,), daemon=True)
    held.start()
    held.join(0.5)
    assert held.is_alive()               # until the data side says it halted
    local.data_halted()
    held.join(10)
    assert not held.is_alive()
