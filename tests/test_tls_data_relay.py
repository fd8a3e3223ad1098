"""TLS data connections between two servers, below NDMP: the relay keeps a plain socket's
semantics (half-close, sendfile, abort), both sides pin each other, and a wrong peer gets
not one byte of the data."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from ndmpd.mover import addresses
from ndmpd.tls.certs import certificate_der
from ndmpd.tls.data import DataTls
from ndmpd.tls.stream import HandshakeFailed

from .tls_helpers import RecordingTlsServer, TamperingProxy, pair


@pytest.fixture
def two(tmp_path):
    """(listener's DataTls, connector's DataTls) pinned to each other, and a third party's pair."""
    a, b, c = pair(tmp_path / "a"), pair(tmp_path / "b"), pair(tmp_path / "c")
    der = {p: certificate_der(p.certificate) for p in (a, b, c)}
    return DataTls(a.certificate, a.key, der[b]), DataTls(b.certificate, b.key, der[a]), (c, der)


def accept_in_thread(listener, secure, out: dict):
    def run():
        out["sock"] = addresses.accept(listener, lambda: "stop" in out, poll=0.05, secure=secure)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def listener():
    sock, endpoint = addresses.open_listener("127.0.0.1")
    return sock, endpoint


def read_all(sock) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def is_cut(sock) -> bool:
    """The data connection ended with nothing more to read, as an error (the relay's cut, a
    reset): never the end of stream a peer's close_notify is."""
    try:
        read_all(sock)
    except ConnectionError:
        return True
    return False


def connected(two) -> tuple[socket.socket, socket.socket, socket.socket]:
    """(connector's data socket, listener's data socket, the listener) over pinned TLS."""
    lsock, ep = listener()
    out: dict = {}
    thread = accept_in_thread(lsock, two[0], out)
    client = addresses.connect([ep], secure=two[1])
    thread.join(20)
    return client, out["sock"], lsock


def test_a_stream_arrives_whole_and_half_close_round_trips(two):
    client, server, lsock = connected(two)
    payload = os.urandom(8 << 20)
    sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
    sender.start()
    assert read_all(server) == payload            # the sender's end of stream is an end of stream here
    server.sendall(b"bye")                        # the other direction still works after it
    server.close()
    sender.join(20)
    assert read_all(client) == b"bye"             # and closing is the end of stream there: delivered
    client.close()
    lsock.close()


def test_the_dump_engine_may_sendfile_into_the_data_socket(two, tmp_path):
    client, server, lsock = connected(two)
    source = tmp_path / "file"
    source.write_bytes(os.urandom(3 << 20))
    with open(source, "rb") as f:
        sent = 0
        while sent < source.stat().st_size:
            sent += os.sendfile(client.fileno(), f.fileno(), sent, 1 << 20)
    client.shutdown(socket.SHUT_WR)
    assert read_all(server) == source.read_bytes()
    for s in (client, server, lsock):
        s.close()


def test_a_listener_refuses_a_connector_that_is_not_the_pinned_peer_and_waits_on(two):
    server_tls, client_tls, (third, der) = two
    intruder = DataTls(third.certificate, third.key, certificate_der(server_tls.certificate))
    lsock, ep = listener()
    out: dict = {}
    thread = accept_in_thread(lsock, server_tls, out)
    bad = addresses.connect([ep], secure=intruder)
    try:
        bad.sendall(b"x" * 1000)
    except OSError:                               # cut already: its handshake failed first
        pass
    assert is_cut(bad)                            # the listener never took it
    assert thread.is_alive() and "sock" not in out
    good = addresses.connect([ep], secure=client_tls)
    good.sendall(b"hello")
    good.shutdown(socket.SHUT_WR)
    thread.join(20)
    assert read_all(out["sock"]) == b"hello"
    for s in (bad, good, out["sock"], lsock):
        s.close()


def test_a_connector_sends_nothing_to_a_listener_that_fails_its_pin(two):
    _, client_tls, (third, _) = two
    recorder = RecordingTlsServer(third.certificate, third.key)
    try:
        sock = addresses.connect([addresses.Endpoint("127.0.0.1", recorder.port)], secure=client_tls)
        try:
            sock.sendall(b"secret image bytes" * 100)
        except OSError:
            pass
        assert is_cut(sock)                       # the relay cut the data connection
        assert recorder.finished.wait(20)
        assert bytes(recorder.received) == b""
        sock.close()
    finally:
        recorder.close()


def test_an_abort_on_the_plain_side_ends_the_tls_connection(two):
    client, server, lsock = connected(two)
    client.sendall(b"partial")
    client.shutdown(socket.SHUT_RDWR)             # what a MOVER_ABORT / DATA_ABORT does
    client.close()
    server.settimeout(20)
    assert read_all(server) == b"partial"
    server.close()
    lsock.close()


def test_a_handshake_failure_is_a_connection_error():
    assert issubclass(HandshakeFailed, ConnectionError)   # addresses.connect reports it as CONNECT_ERR


def test_a_tampered_record_cuts_the_stream_and_never_delivers_wrong_bytes(two):
    """A man in the middle flips one byte well after the handshake: the listener's side gets a
    prefix of the stream and then its end, never a changed byte."""
    lsock, ep = listener()
    out: dict = {}
    thread = accept_in_thread(lsock, two[0], out)
    middle = TamperingProxy(ep.port, flip_at=3 << 20)    # about 3 MiB into the connector's bytes
    client = addresses.connect([addresses.Endpoint("127.0.0.1", middle.port)], secure=two[1])
    payload = os.urandom(8 << 20)

    def send():
        try:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    thread.join(20)
    server = out["sock"]
    server.settimeout(20)
    got = bytearray()
    with pytest.raises(ConnectionError, match="TLS data stream cut: a bad TLS record"):
        while data := server.recv(1 << 20):    # the cut is an error, never an end of stream
            got += data
    assert len(got) < len(payload) and payload.startswith(got)
    for s in (client, server, lsock, middle):
        s.close()
