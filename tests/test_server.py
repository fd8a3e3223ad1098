"""The asyncio edge: IPv4 and IPv6 listeners, session limit, clean shutdown."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from ndmpd.context import ServerContext
from tests.blocking_client import NdmpClient
from ndmpd.server import NdmpServer
from ndmpd.wire.message import Header
from ndmpd.wire.records import RecordReader, frame

from .helpers import make_config


async def read_message(reader: asyncio.StreamReader, records: RecordReader) -> bytes:
    while True:
        got = records.feed(await asyncio.wait_for(reader.read(65536), 10))
        if got:
            return got[0]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def start(tmp_path, **server):
    listen = ["127.0.0.1:0"] + (["[::1]:0"] if has_ipv6_loopback() else [])
    srv = NdmpServer(ServerContext(make_config(tmp_path, listen=listen, **server)))
    bound = await srv.start()
    return srv, bound


async def test_every_listen_address_greets_and_answers(tmp_path):
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    srv, bound = await start(tmp_path)
    assert {h for h, _ in bound} == {"127.0.0.1", "::1"}
    for host, port in bound:
        reader, writer = await asyncio.open_connection(host, port)
        records = RecordReader(1 << 20)
        greeting = await read_message(reader, records)
        assert struct.unpack_from(">i", greeting, 12)[0] == 0x502
        writer.write(frame(Header(1, 1700000000, 0, 0x900, 0, 0).pack() + struct.pack(">I", 3)))
        reply = await read_message(reader, records)
        assert struct.unpack_from(">iiIiI", reply, 8) == (1, 0x900, 1, 0, 0)
        writer.close()
    srv.stop()
    await srv.serve_until_stopped()


async def test_sessions_over_the_limit_are_refused(tmp_path):
    srv, bound = await start(tmp_path, max_sessions=1)
    host, port = bound[0]
    first = await asyncio.to_thread(NdmpClient, host, port)
    await asyncio.to_thread(first.login, "ndmp", "secret")
    second_r, second_w = await asyncio.open_connection(host, port)
    refused = await read_message(second_r, RecordReader(1 << 20))
    assert struct.unpack_from(">iI", refused, 12) == (0x502, 0)
    assert struct.unpack_from(">i", refused, 24)[0] == 2          # REFUSED
    assert b"server.max_sessions = 1" in refused                  # names the setting to change
    assert await asyncio.wait_for(second_r.read(), 10) == b""      # then closed
    await asyncio.to_thread(first.close)
    srv.stop()
    await srv.serve_until_stopped()


async def test_stop_tells_connected_dmas_and_closes(tmp_path):
    srv, bound = await start(tmp_path)
    reader, writer = await asyncio.open_connection(*bound[0])
    records = RecordReader(1 << 20)
    await read_message(reader, records)
    srv.stop()
    await srv.serve_until_stopped()
    shutdown = await read_message(reader, records)
    assert struct.unpack_from(">i", shutdown, 12)[0] == 0x502 and struct.unpack_from(">i", shutdown, 24)[0] == 1
    assert await asyncio.wait_for(reader.read(), 10) == b""
