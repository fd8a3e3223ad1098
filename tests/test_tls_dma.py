"""The DMA's request for TLS data connections: both servers end up pinned to each other's
certificate as the DMA saw it; NDMPv3 or a plain control connection leaves data plain."""

from __future__ import annotations

import asyncio

from ndmpd.dma.agent import Agent
from ndmpd.dma.hosts import TlsPeer
from ndmpd.dma.tls_data import secure_data_connection
from ndmpd.tls.certs import certificate_der

from .server_thread import ServerThread
from .tls_helpers import pair, server_config


def two_servers(tmp_path):
    started = []
    for name in ("a", "b"):
        own = pair(tmp_path / name / "tls")
        (tmp_path / name).mkdir(exist_ok=True)
        s = ServerThread(server_config(tmp_path / name, own.certificate, own.key))
        s.pair = own
        started.append(s)
    return started


def agent(server, tls=True, versions=(4, 3)):
    host, port = server.server.tls_addresses[0] if tls else (server.host, server.port)
    return Agent.connect(host, port, user="ndmp", password="secret", timeout=20, versions=versions,
                         tls=TlsPeer(fingerprint=server.pair.fingerprint) if tls else None)


def test_both_servers_are_pinned_to_each_other(tmp_path):
    a, b = two_servers(tmp_path)
    try:
        async def go():
            async with agent(a) as x, agent(b) as y:
                assert await secure_data_connection(x, y)
                assert not await secure_data_connection(x, x)        # one server: LOCAL, nothing to do
                return a.only_session().data_tls.peer, b.only_session().data_tls.peer
        peer_of_a, peer_of_b = asyncio.run(go())
        assert peer_of_a == certificate_der(b.pair.certificate)
        assert peer_of_b == certificate_der(a.pair.certificate)
    finally:
        a.stop()
        b.stop()


def test_ndmpv3_or_a_plain_control_connection_leaves_the_data_connection_plain(tmp_path, capsys):
    a, b = two_servers(tmp_path)
    try:
        async def go():
            async with agent(a, versions=(3,)) as x, agent(b) as y:
                assert not await secure_data_connection(x, y)
            async with agent(a, tls=False) as x, agent(b) as y:
                assert not await secure_data_connection(x, y)
        asyncio.run(go())
        assert "offers no TLS data connections" in capsys.readouterr().err
        for server in (a, b):
            assert all(s.data_tls is None for s in server.ctx.sessions)
    finally:
        a.stop()
        b.stop()
