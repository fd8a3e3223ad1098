"""The TLS listener through reload and shutdown, like the plain one: tls_listen is bound until
a restart (a reload says so), a certificate renewed in place is presented to new connections
at once, and SIGTERM closes TLS sessions and the TLS port."""

from __future__ import annotations

import asyncio
import logging
import shutil

import pytest

from ndmpd.config import load
from ndmpd.context import ServerContext
from ndmpd.dma.agent import Agent
from ndmpd.dma.errors import NdmpConnectError, NdmpConnectionLost
from ndmpd.dma.hosts import TlsPeer
from ndmpd.server import NdmpServer
from ndmpd.tls import certs

from .tls_helpers import pair


def write(tmp_path, cert, key, tls_listen="127.0.0.1:0"):
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "ndmpd.toml"
    path.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{tmp_path / "state"}"\n'
                    f'tls_listen = "{tls_listen}"\ntls_certificate = "{cert}"\ntls_key = "{key}"\n'
                    '[[user]]\nname = "ndmp"\npassword = "secret"\n')
    path.chmod(0o600)
    return path


async def serve(tmp_path):
    own = pair(tmp_path / "tls")
    path = write(tmp_path, own.certificate, own.key)
    srv = NdmpServer(ServerContext(load(path)), reload_config=lambda: load(path))
    await srv.start()
    return srv, path, own, srv.tls_addresses[0]


def agent(address, fingerprint):
    return Agent.connect(*address, user="ndmp", password="secret", timeout=10, tls=TlsPeer(fingerprint=fingerprint))


async def stop(srv):
    srv.stop()
    await srv.serve_until_stopped()


async def test_a_reload_keeps_tls_listen_and_presents_a_renewed_certificate(tmp_path, caplog):
    srv, path, own, address = await serve(tmp_path)
    running = await agent(address, own.fingerprint)
    renewed = pair(tmp_path / "renewed")
    shutil.copy(renewed.certificate, own.certificate)          # renewed in place, same paths
    shutil.copy(renewed.key, own.key)
    write(tmp_path, own.certificate, own.key, tls_listen="127.0.0.1:1")
    with caplog.at_level(logging.WARNING, "ndmpd.server"):
        assert srv.reload()
    assert any("server.tls_listen changed" in r.getMessage() and "restart" in r.getMessage() for r in caplog.records)
    with pytest.raises(NdmpConnectError, match="is not the pinned"):
        await agent(address, own.fingerprint)                  # still bound where it was, with the new certificate
    fresh = await agent(address, renewed.fingerprint)
    assert certs.fingerprint(fresh.peer_certificate) == renewed.fingerprint
    assert (await running.call("CONFIG_GET_HOST_INFO")).hostname   # the running session goes on
    await fresh.close()
    await running.close()
    await stop(srv)


async def test_a_bad_certificate_at_reload_is_refused_and_the_old_one_stays(tmp_path, caplog):
    srv, path, own, address = await serve(tmp_path)
    other = pair(tmp_path / "other")
    write(tmp_path, own.certificate, other.key)                 # a key that is not the certificate's
    with caplog.at_level(logging.ERROR, "ndmpd.server"):
        assert not srv.reload()
    assert any("is not the key of" in r.getMessage() for r in caplog.records)
    async with agent(address, own.fingerprint) as a:
        assert a.version == 4
    await stop(srv)


async def test_shutdown_closes_tls_sessions_and_the_tls_port(tmp_path):
    srv, path, own, address = await serve(tmp_path)
    connected = await agent(address, own.fingerprint)
    stopped = asyncio.ensure_future(stop(srv))
    with pytest.raises(NdmpConnectionLost):
        await connected.wait_post(0x502, timeout=10)            # NOTIFY_CONNECTION_STATUS SHUTDOWN, then closed
        await connected.call("CONFIG_GET_HOST_INFO")
    await asyncio.wait_for(stopped, 20)
    with pytest.raises(NdmpConnectError):
        await agent(address, own.fingerprint)
    await connected.close()


async def test_removing_tls_at_reload_keeps_the_bound_listener_and_its_certificate_until_restart(tmp_path, caplog):
    srv, path, own, address = await serve(tmp_path)
    path.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{tmp_path / "state"}"\n'
                    '[[user]]\nname = "ndmp"\npassword = "secret"\n')
    with caplog.at_level(logging.WARNING, "ndmpd.server"):
        assert srv.reload()
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "server.tls_listen changed" in notes and "keeping the old certificate" in notes
    assert srv.config.server.tls_certificate == own.certificate       # the data extension stays usable
    async with agent(address, own.fingerprint) as a:
        assert a.version == 4
    await stop(srv)
