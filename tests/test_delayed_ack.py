"""No request waits for a delayed ACK: not a client without TCP_NODELAY that sends a message
in pieces (Sun RPC's xdrrec, as Amanda's ndmp: device), nor a direct-access restore whose
every MOVER_READ ends in a tail Nagle would hold back."""

from __future__ import annotations

import os
import socket
import time

from tests.blocking_client import NdmpClient
from ndmpd.tcp import acknowledge_now, send_without_delay
from ndmpd.wire import C

from .helpers import make_config
from .server_thread import ServerThread

XDRREC_FRAGMENT = 4000          # what xdrrec cuts a record into (ndmp-src ndml_conn.c)
REQUESTS = 150                  # at the 40 ms delayed-ACK stall: 6 s; without it: well under 0.2 s
BOUND = 2.0                     # seconds; 13 ms a request leaves a loaded machine room
RECORD = 32768
READS = 300                     # MOVER_READs of READ_LENGTH: ~9 ms each with Nagle (2.7 s), 0.2 ms without
READ_LENGTH = 3 * RECORD        # not a multiple of loopback's 65483-byte MSS: each read ends in a short segment
READ_BOUND = 1.5                # seconds: 3.3 s with Nagle (measured), 0.1-0.3 s without; room for a loaded 2-core CI


class XdrrecClient(NdmpClient):
    """Nagle on (TCP_NODELAY off), and every request sent one 4000-byte fragment per write."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, 4)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

    max_fragment = XDRREC_FRAGMENT

    def _write(self, wire: bytes) -> None:
        view, step = memoryview(wire), XDRREC_FRAGMENT + 4
        for start in range(0, len(view), step):
            self.sock.sendall(view[start:start + step])


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


def test_a_direct_access_restore_over_tcp_gets_every_mover_read_without_the_delayed_ack_stall(tmp_path):
    server = ServerThread(make_config(tmp_path, listen=["127.0.0.1:0"]))
    try:
        with NdmpClient(server.host, server.port, 4) as dma:
            dma.login("ndmp", "secret")
            dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
            image = os.urandom(READS * READ_LENGTH)
            for start in range(0, len(image), RECORD):
                dma.call("TAPE_WRITE", data_out=image[start:start + RECORD])
            dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)
            dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
            dma.call("MOVER_SET_RECORD_SIZE", len=RECORD)
            dma.call("MOVER_SET_WINDOW", offset=0, length=len(image))
            entry = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_WRITE, addr_type=C.ADDR_TCP).connect_addr.tcp_addr[0]
            with socket.create_connection((socket.inet_ntoa(entry.ip_addr.to_bytes(4, "big")), entry.port)) as peer:
                received = bytearray()
                start = time.monotonic()
                for n in range(READS):      # as a data service asks for each file's bytes, one after the other
                    dma.call("MOVER_READ", offset=n * READ_LENGTH, length=READ_LENGTH)
                    wanted = len(received) + READ_LENGTH
                    while len(received) < wanted:
                        chunk = peer.recv(wanted - len(received))
                        assert chunk, "the mover closed the data connection"
                        received += chunk
                elapsed = time.monotonic() - start
            dma.call("MOVER_ABORT")
        assert received == image
        assert elapsed < READ_BOUND, f"{READS} MOVER_READs took {elapsed:.2f} s: {elapsed / READS * 1000:.1f} ms each"
    finally:
        server.stop()


def test_the_tcp_options_are_harmless_on_a_socket_that_refuses_them():
    """A connection reset before its options are set (or a socket that is not TCP) costs
    nothing: the transfer or the session reports what is wrong, not the tuning."""
    gone = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    gone.close()
    unix_a, unix_b = socket.socketpair()
    with unix_a, unix_b:
        for sock in (gone, unix_a):
            send_without_delay(sock)
            acknowledge_now(sock)
