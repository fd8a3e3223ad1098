"""A backup larger than its cartridge: when the mover stops at the full medium the data side
says so (halt reason and LOG_MESSAGE), never reports the backup complete, and records no
dump date a later incremental could build on."""

from __future__ import annotations

import json
import os

import pytest

from ndmpd.config import build
from ndmpd.wire import C, T

from .server_thread import ServerThread

ALL = (1 << 64) - 1
KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def server(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    data = {
        "server": {"listen": ["127.0.0.1:0"], "state_dir": str(tmp_path / "state"), "auth": ["md5", "text"]},
        "user": [{"name": "ndmp", "password": "secret"}],
        "volume": [{"name": "/vol", "path": str(vol), "snapshot": "none"}],
        "tape": [{"name": "small", "path": str(tmp_path / "small.img"), "capacity": "1MiB",
                  "early_warning": "64KiB"}],
    }
    (tmp_path / "state").mkdir()
    s = ServerThread(build(data, "<test>", tmp_path))
    yield s, vol, tmp_path / "state"
    s.stop()


def messages(dma) -> list[str]:
    return [body.entry for code, body in dma.posts if code == C.LOG_MESSAGE]


def listen_local(dma, record: int) -> None:
    """The small drive opened for a backup, its mover listening LOCAL with ``record``-byte records."""
    dma.call("TAPE_OPEN", device="small", mode=C.TAPE_RDWR_MODE)
    dma.call("MOVER_SET_RECORD_SIZE", len=record)
    dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
    dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_LOCAL)


def start_local_backup(dma, record: int) -> None:
    """A two-way tar backup of /vol (UPDATE=y) into the small drive."""
    listen_local(dma, record)
    dma.call("DATA_CONNECT", addr=T.addr(addr_type=C.ADDR_LOCAL))
    dma.call("DATA_START_BACKUP", butype_name="tar",
             env=[T.pval(name="FILESYSTEM", value="/vol"), T.pval(name="UPDATE", value="y")])


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("image", [1200 * KiB, 3 * MiB])     # within the buffers in flight, and beyond
def test_a_full_medium_ends_the_backup_as_incomplete(server, version, image):
    srv, vol, state = server
    (vol / "data.bin").write_bytes(os.urandom(image))
    with srv.client(version=version) as dma:
        start_local_backup(dma, 10 * KiB)
        paused = dma.wait_post(C.NOTIFY_MOVER_PAUSED)
        assert paused.reason == C.MOVER_PAUSE_EOM
        dma.call("MOVER_ABORT")                       # a DMA with no next cartridge gives up
        halted = dma.wait_post(C.NOTIFY_DATA_HALTED)
        text = "\n".join(messages(dma))
        assert halted.reason not in (C.DATA_HALT_SUCCESSFUL, C.DATA_HALT_CONNECT_ERROR)
        assert "incomplete: the medium is full" in text, text
        assert " complete:" not in text, text
        dma.call("DATA_STOP")
        dma.call("MOVER_STOP")
    dates = state / "dumpdates.json"
    assert not dates.exists() or not json.loads(dates.read_text()).get("/vol")


def test_a_local_stream_is_delivered_only_once_its_last_record_is_on_the_medium(server):
    """The last, partial record of a LOCAL backup hits the end of the medium: the data side must
    not take the stream as delivered (on main it did, as soon as the mover saw the end)."""
    import threading
    srv, _, _ = server
    with srv.client() as dma:
        listen_local(dma, 64 * KiB)
        session = srv.only_session()
        peer, handoff = srv.on_loop(session.mover.accept_local)
        # 14 whole records (64 KiB + 24 bytes of framing each) stay below the early warning at
        # 960 KiB; the 15th, the partial last one, crosses it
        writer = threading.Thread(target=lambda: (handoff.put(memoryview(bytes(14 * 64 * KiB + 100))),
                                                  handoff.end()), daemon=True)
        writer.start()
        assert dma.wait_post(C.NOTIFY_MOVER_PAUSED).reason == C.MOVER_PAUSE_EOM
        assert not handoff.finished
        dma.call("MOVER_ABORT")
        writer.join(10)
        assert not handoff.wait_finished(threading.Event(), poll=0.05)
        assert session.mover.ended_by_medium() == "the medium is full"
        peer.close()
        dma.call("MOVER_STOP")


def test_a_backup_whose_last_record_does_not_fit_is_not_successful_and_records_no_date(server):
    srv, vol, state = server
    (vol / "data.bin").write_bytes(os.urandom(920_000))      # an image of 14 whole 64 KiB records and a part
    with srv.client() as dma:
        start_local_backup(dma, 64 * KiB)
        assert dma.wait_post(C.NOTIFY_MOVER_PAUSED).reason == C.MOVER_PAUSE_EOM
        dma.call("MOVER_ABORT")
        halted = dma.wait_post(C.NOTIFY_DATA_HALTED)
        assert halted.reason != C.DATA_HALT_SUCCESSFUL
        assert any("incomplete: the medium is full" in m for m in messages(dma)), messages(dma)
        dma.call("DATA_STOP")
        dma.call("MOVER_STOP")
    dates = state / "dumpdates.json"
    assert not dates.exists() or not json.loads(dates.read_text()).get("/vol")
