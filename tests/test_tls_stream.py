"""TlsStream: once close_notify has gone both ways the TLS session is over, and Python's
SSLSocket would then send and read plaintext on the same socket; the stream refuses instead.
A half-close keeps the session: the peer's close_notify still arrives after ours."""

from __future__ import annotations

import socket
import threading

import pytest

from ndmpd.tls.certs import certificate_der
from ndmpd.tls.contexts import data_context
from ndmpd.tls.stream import TlsStream

from .tls_helpers import pair


@pytest.fixture
def streams(tmp_path):
    """(server TlsStream, client TlsStream) over loopback TCP, handshakes done, non-blocking."""
    a, b = pair(tmp_path / "a"), pair(tmp_path / "b")
    server_ctx = data_context(True, a.certificate, a.key, certificate_der(b.certificate))
    client_ctx = data_context(False, b.certificate, b.key, certificate_der(a.certificate))
    listener = socket.create_server(("127.0.0.1", 0))
    client_sock = socket.create_connection(listener.getsockname(), timeout=10)
    server_sock, _ = listener.accept()
    listener.close()
    server, client = TlsStream(server_sock, server_ctx, True), TlsStream(client_sock, client_ctx, False)
    shaking = threading.Thread(target=server.handshake, args=(10,), daemon=True)
    shaking.start()
    client.handshake(10)
    shaking.join(10)
    yield server, client
    server.close()
    client.close()


def read_until(stream: TlsStream, into: bytearray, limit: int = 1000) -> int:
    """Read what arrives until the end (0) within ``limit`` polls; the last read's result."""
    buffer = memoryview(bytearray(1 << 16))
    for _ in range(limit):
        n = stream.read_into(buffer)
        if n is None:
            threading.Event().wait(0.01)
            continue
        if n == 0:
            return 0
        into += buffer[:n]
    raise AssertionError("no end of stream")


def test_after_close_notify_nothing_more_can_be_sent_on_either_side(streams):
    server, client = streams
    assert client.write(memoryview(b"x" * 100000)) or _flushed(client)
    assert client.close_notify() or _flushed(client)
    got = bytearray()
    assert read_until(server, got) == 0 and got == b"x" * 100000
    server.close_notify()
    assert read_until(client, bytearray()) == 0
    client.flush()
    server.flush()
    for stream in (server, client):
        with pytest.raises(BrokenPipeError):
            stream.write(memoryview(b"plaintext?"))


def test_a_half_close_keeps_the_session_and_the_peer_may_still_send(streams):
    server, client = streams
    assert client.close_notify() or _flushed(client)
    client.shut_write()
    assert read_until(server, bytearray()) == 0
    assert server.write(memoryview(b"answer")) or _flushed(server)
    server.close_notify()
    got = bytearray()
    assert read_until(client, got) == 0 and got == b"answer"


def _flushed(stream: TlsStream) -> bool:
    for _ in range(1000):
        if stream.flush():
            return True
        threading.Event().wait(0.01)
    return False
