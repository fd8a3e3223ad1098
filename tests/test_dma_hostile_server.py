"""The DMA against a server whose replies cannot be trusted (a proxy rewriting a real ndmpd's
records): a reply of another message, a cut or garbled body, a garbled greeting, and random
rewriting. Each ends in one of the DMA's own errors saying what came (the connection closed
when a reply was wrong), and ``ndmp`` prints one line and exits 1, never a traceback."""

from __future__ import annotations

import asyncio
import struct

import pytest

from ndmpd.dma import cli
from ndmpd.dma.agent import Agent
from ndmpd.dma.errors import NdmpConnectError, NdmpConnectionLost, NdmpProtocolError
from ndmpd.wire import C

from .dma_fuzz import DMA_ERRORS, RewritingProxy, message_code, outcome, random_rewrite
from .server_thread import ServerThread
from .test_dma_agent import config

PASSWORD = "secret"


@pytest.fixture
def server(tmp_path):
    s = ServerThread(config(tmp_path))
    yield s
    s.stop()


@pytest.fixture
def proxied(server):
    """proxied(rewrite) -> a RewritingProxy in front of the server (closed after the test)."""
    proxies = []

    def start(rewrite):
        proxies.append(RewritingProxy((server.host, server.port), rewrite))
        return proxies[-1]
    yield start
    for proxy in proxies:
        proxy.close()


def of_code(code: int, change):
    """A rewrite of the records of message ``code`` only."""
    return lambda record: change(record) if message_code(record) == code else record


async def host_info_then_more(port: int) -> None:
    async with Agent.connect("127.0.0.1", port, user="ndmp", password=PASSWORD, timeout=5) as agent:
        with pytest.raises(NdmpProtocolError) as caught:
            await agent.call("CONFIG_GET_HOST_INFO")
        with pytest.raises(NdmpConnectionLost):        # closed: nothing after it is trusted
            await agent.call("CONFIG_GET_SERVER_INFO")
        raise caught.value


@pytest.mark.parametrize("change, said", [
    (lambda r: r[:12] + struct.pack(">I", C.CONFIG_GET_SERVER_INFO) + r[16:], "it is a message 0x108, not 0x100"),
    (lambda r: r[:30], "truncated"),
    (lambda r: r[:28] + struct.pack(">I", 0x7FFFFFF0) + r[32:], "past end of record"),
], ids=["another-message", "cut-short", "huge-string-length"])
def test_a_reply_the_dma_cannot_trust_closes_the_connection_saying_what_came(proxied, change, said):
    proxy = proxied(of_code(C.CONFIG_GET_HOST_INFO, change))
    with pytest.raises(NdmpProtocolError) as caught:
        asyncio.run(host_info_then_more(proxy.port))
    message = str(caught.value)
    assert "CONFIG_GET_HOST_INFO reply could not be decoded" in message and said in message, message
    assert f"127.0.0.1:{proxy.port}" in message and "connection closed" in message, message


def test_a_garbled_greeting_is_a_connect_error(proxied):
    proxy = proxied(of_code(C.NOTIFY_CONNECTION_STATUS, lambda r: r[:26]))
    with pytest.raises(NdmpConnectError, match="the greeting could not be decoded"):
        asyncio.run(Agent.connect("127.0.0.1", proxy.port, user="ndmp", password=PASSWORD, timeout=5).__aenter__())


def test_ndmp_info_against_a_garbling_server_prints_one_line_and_exits_1(proxied, monkeypatch, capsys):
    proxy = proxied(of_code(C.CONFIG_GET_TAPE_INFO, lambda r: r[:40]))
    monkeypatch.setenv("NDMP_PASSWORD", PASSWORD)
    status = cli.main(["info", f"ndmp@127.0.0.1:{proxy.port}"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("ndmp: ") and "CONFIG_GET_TAPE_INFO reply" in err, err


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.8])
def test_randomly_rewritten_replies_and_posts_end_only_in_the_dmas_errors(proxied, rate):
    unexpected = []
    for seed in range(12):
        proxy = proxied(random_rewrite(seed, rate))
        ended = outcome(proxy.port, PASSWORD)
        if ended is not None and not isinstance(ended, DMA_ERRORS):
            unexpected.append((seed, repr(ended)))
    assert unexpected == []
