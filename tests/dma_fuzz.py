"""A server the DMA cannot trust: a proxy in front of a real ndmpd that rewrites what the server
sends (a record at a time), and a random rewriting of replies and posts.

What the ``ndmp`` DMA may do with such a server is fail a request or the connection with one of
its own errors (:data:`DMA_ERRORS`), saying what came; never raise a decoder's internals, never
hang past its timeouts.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
from collections.abc import Callable

from ndmpd.dma import info
from ndmpd.dma.agent import Agent
from ndmpd.dma.errors import NdmpConnectError, NdmpConnectionLost, NdmpReplyError
from ndmpd.wire.records import RecordReader, frame

Rewrite = Callable[[bytes], bytes]
DMA_ERRORS = (NdmpConnectError, NdmpConnectionLost, NdmpReplyError, TimeoutError)
CALLS = [("TAPE_OPEN", {"device": "vtape0", "mode": 0}), ("TAPE_GET_STATE", {}), ("MOVER_GET_STATE", {}),
         ("DATA_GET_STATE", {}), ("DATA_GET_ENV", {}), ("TAPE_CLOSE", {})]


def message_code(record: bytes) -> int:
    """The message code of a record's NDMP header (0 for a record too short to have one)."""
    return struct.unpack_from(">I", record, 12)[0] if len(record) >= 16 else 0


UNKNOWN_CODE = 0x7FFF


def dropping(code: int, seen: list[bytes] | None = None) -> Rewrite:
    """A rewrite that makes every record of message ``code`` one of a code nobody knows, so the
    DMA drops it as a post it cannot read (a NOTIFY that never comes); each is kept in ``seen``."""
    def rewrite(record: bytes) -> bytes:
        if message_code(record) != code:
            return record
        if seen is not None:
            seen.append(record)
        return record[:12] + struct.pack(">I", UNKNOWN_CODE) + record[16:]
    return rewrite


class RewritingProxy:
    """Listens on 127.0.0.1 and relays each connection to ``upstream``: requests as they are,
    every record the server sends through ``rewrite`` (then framed again)."""

    def __init__(self, upstream: tuple[str, int], rewrite: Rewrite) -> None:
        self.upstream, self.rewrite = upstream, rewrite
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=30)
            self._sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client), daemon=True).start()

    @staticmethod
    def _requests(client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shut(server)

    def _replies(self, server: socket.socket, client: socket.socket) -> None:
        reader = RecordReader(1 << 30)
        try:
            while data := server.recv(65536):
                for record in reader.feed(data):
                    client.sendall(frame(self.rewrite(record)))
        except OSError:
            pass
        finally:
            _shut(client)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def random_rewrite(seed: int, rate: float) -> Rewrite:
    """Rewrites a ``rate`` share of the records: bytes of the body flipped, the record cut
    short or lengthened, a length field made huge, or the message code changed."""
    rnd = random.Random(seed)

    def rewrite(record: bytes) -> bytes:
        if rnd.random() >= rate:
            return record
        b = bytearray(record)
        k = rnd.random()
        if k < 0.4 and b:
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(24, len(b)) if len(b) > 24 and rnd.random() < 0.9 else rnd.randrange(len(b))] = \
                    rnd.randrange(256)
        elif k < 0.55:
            del b[rnd.randrange(len(b) + 1):]
        elif k < 0.7:
            b += rnd.randbytes(rnd.randint(1, 64))
        elif k < 0.85 and len(b) > 28:
            at = rnd.randrange(24, len(b) - 3) & ~3
            b[at:at + 4] = struct.pack(">I", rnd.choice([0xFFFFFFFF, 0x7FFFFFFF, 0x10000000, 65536, 1000]))
        elif len(b) >= 16:
            b[12:16] = struct.pack(">i", rnd.choice([0, 1, 2, -1, 0x7FFF, 0x100, 0x500]))
        return bytes(b)
    return rewrite


async def session_against(port: int, password: str, timeout: float = 1.0) -> None:
    """What ``ndmp info`` does (and renders, as text and as JSON), then a few tape, mover and
    data requests, through the proxy on ``port``; refusals of single requests are passed over."""
    async with asyncio.timeout(60):
        async with Agent.connect("127.0.0.1", port, user="ndmp", password=password, timeout=timeout) as agent:
            report = {"host": "fuzz", "address": f"127.0.0.1:{port}", **await info.gather(agent)}
            info.render(report)
            json.dumps(report)
            for message, fields in CALLS:
                try:
                    await agent.call(message, **fields)
                except NdmpReplyError:
                    pass


def outcome(port: int, password: str) -> BaseException | None:
    """None, or the exception one hostile session ended in (a DMA error is an allowed end)."""
    try:
        asyncio.run(session_against(port, password))
    except BaseException as exc:           # noqa: B902 -- the caller sorts them
        return exc
    return None
