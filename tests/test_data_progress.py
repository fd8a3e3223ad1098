"""DATA_GET_STATE follows a backup's bytes as they stream (a DMA's progress bar depends on it),
even in the middle of one large file, and the halt reports the final figure."""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

from ndmpd.config import build
from ndmpd.mover.addresses import Endpoint, to_ndmp
from ndmpd.wire import C, T

from .server_thread import ServerThread

MiB = 1 << 20


@pytest.fixture
def server(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "small.txt").write_text("hello")
    with open(vol / "big.bin", "wb") as f:             # one large file: no entry boundary for 48 MiB
        for _ in range(48):
            f.write(os.urandom(MiB))
    data = {
        "server": {"listen": ["127.0.0.1:0"], "state_dir": str(tmp_path / "state"), "auth": ["md5", "text"]},
        "user": [{"name": "ndmp", "password": "secret"}],
        "volume": [{"name": "/vol", "path": str(vol), "snapshot": "none"}],
        "tape": [{"name": "vtape0", "path": str(tmp_path / "c0.img")}],
    }
    (tmp_path / "state").mkdir()
    s = ServerThread(build(data, "<test>", tmp_path))
    yield s
    s.stop()


def test_bytes_processed_moves_while_one_large_file_streams(server, caplog):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    states = []
    received = 0
    with caplog.at_level(logging.INFO, logger="ndmpd.data"), server.client() as dma:
        dma.call("DATA_CONNECT", addr=to_ndmp(Endpoint("127.0.0.1", port)))
        peer, _ = listener.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
        dma.call("DATA_START_BACKUP", butype_name="tar", env=[T.pval(name="FILESYSTEM", value="/vol")])
        deadline = time.monotonic() + 120
        next_poll = time.monotonic()
        while time.monotonic() < deadline:                    # a slow tape: about 16 MiB/s
            chunk = peer.recv(256 << 10)
            if not chunk:
                break
            received += len(chunk)
            time.sleep(0.015)
            if time.monotonic() >= next_poll and 4 * MiB < received < 40 * MiB:
                states.append((received, dma.call("DATA_GET_STATE")))
                next_poll = time.monotonic() + 0.3
        peer.close()
        halted = dma.wait_post(C.NOTIFY_DATA_HALTED, timeout=60)
        final = dma.call("DATA_GET_STATE")
        dma.call("DATA_STOP")
    listener.close()
    assert halted.reason == C.DATA_HALT_SUCCESSFUL
    assert len(states) >= 3
    figures = [s.bytes_processed for _, s in states]
    assert figures == sorted(figures) and figures[-1] > figures[0], figures
    for got, state in states:                      # follows the bytes, not the entries
        assert state.bytes_processed >= got - 16 * MiB, (got, state.bytes_processed)
        assert not state.unsupported & C.DATA_STATE_EST_BYTES_REMAIN_UNS
        assert state.est_bytes_remain > 0 and state.bytes_processed + state.est_bytes_remain >= 48 * MiB
    assert final.bytes_processed == received
    assert f"data halted (reason {C.DATA_HALT_SUCCESSFUL}), {received} bytes" in caplog.text
