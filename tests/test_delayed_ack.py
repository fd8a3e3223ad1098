"""Clients without TCP_NODELAY that send a message in pieces (Sun RPC's xdrrec, as in
Amanda's ndmp: device) must not wait for the server's delayed ACK on every request."""

from __future__ import annotations

import socket
import time

from ndmpd.dma.client import NdmpClient
from ndmpd.wire import C, REQUEST
from ndmpd.wire.message import Header
from ndmpd.wire.records import frame

from .helpers import make_config
from .server_thread import ServerThread

XDRREC_FRAGMENT = 4000          # what xdrrec cuts a record into (ndmp-src ndml_conn.c)
REQUESTS = 150                  # at the 40 ms delayed-ACK stall: 6 s; without it: well under 0.2 s
BOUND = 2.0                     # seconds; 13 ms a request leaves a loaded machine room


class XdrrecClient(NdmpClient):
    """Nagle on (TCP_NODELAY off), and every request sent one 4000-byte fragment per write."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, 4)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

    def _send(self, code: int, body: object) -> None:
        self.sequence += 1
        payload = b""
        if body is not None:
            payload = self.proto.encode_body(code, REQUEST, self.translator.from_internal(code, REQUEST, body))
        record = Header(self.sequence, int(time.time()), REQUEST, code, 0, 0).pack() + payload
        wire = memoryview(frame(record, max_fragment=XDRREC_FRAGMENT))
        step = XDRREC_FRAGMENT + 4
        for start in range(0, len(wire), step):
            self.sock.sendall(wire[start:start + step])


def test_a_client_without_nodelay_sending_fragments_is_answered_without_the_delayed_ack_stall(tmp_path):
    server = ServerThread(make_config(tmp_path, listen=["127.0.0.1:0"]))
    try:
        with XdrrecClient(server.host, server.port) as dma:
            dma.login("ndmp", "secret")
            dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
            block = bytes(range(256)) * 128                     # Amanda's 32 KiB block: 9 fragments
            start = time.monotonic()
            for _ in range(REQUESTS):
                dma.call("TAPE_WRITE", data_out=block)
            elapsed = time.monotonic() - start
            dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
            assert dma.call("TAPE_READ", count=len(block)).data_in == block
            dma.call("TAPE_CLOSE")
        assert elapsed < BOUND, f"{REQUESTS} TAPE_WRITEs took {elapsed:.2f} s: {elapsed / REQUESTS * 1000:.0f} ms each"
    finally:
        server.stop()
