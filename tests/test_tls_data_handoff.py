"""A mover receiving a backup over a TLS data connection takes the decrypted stream through a
Handoff (no socket pair copies): it gets every byte and the end, a cut is never an end, and a
mover that stops ends the TLS connection and is never left waiting."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from ndmpd.mover import addresses
from ndmpd.mover.handoff import Handoff
from ndmpd.tls.certs import certificate_der
from ndmpd.tls.data import DataTls

from .tls_helpers import TamperingProxy, pair


@pytest.fixture
def two(tmp_path):
    """(listener's DataTls, connector's DataTls) pinned to each other."""
    a, b = pair(tmp_path / "a"), pair(tmp_path / "b")
    return (DataTls(a.certificate, a.key, certificate_der(b.certificate)),
            DataTls(b.certificate, b.key, certificate_der(a.certificate)))


class Mover:
    """What pump.run_backup_handed does with a Handoff: take, copy, release until None."""

    def __init__(self, handoff: Handoff) -> None:
        self.handoff, self.got, self.ended = handoff, bytearray(), None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.handoff.take()) is not None:
            self.got += data
            self.handoff.release()
        self.handoff.finish()                     # counts only after a real end of stream
        self.ended = self.handoff.finished

    def join(self) -> None:
        self.thread.join(20)
        assert not self.thread.is_alive(), "the mover was left waiting in take()"


def receiving(two, proxied: bool = False):
    """(connector's plain socket, mover's plain socket, mover's handoff, listener socket),
    ``proxied`` through a TamperingProxy."""
    lsock, ep = addresses.open_listener("127.0.0.1")
    port = TamperingProxy(ep.port, flip_at=3 << 20).port if proxied else ep.port
    handoff = Handoff()
    out: dict = {}
    accepting = threading.Thread(target=lambda: out.update(sock=addresses.accept(
        lsock, lambda: False, poll=0.05, secure=two[0].receiving_into(handoff))), daemon=True)
    accepting.start()
    client = addresses.connect([addresses.Endpoint("127.0.0.1", port)], secure=two[1])
    accepting.join(20)
    return client, out["sock"], handoff, lsock


def test_the_whole_stream_reaches_the_mover_through_the_handoff_and_ends_there(two):
    client, plain, handoff, lsock = receiving(two)
    mover = Mover(handoff)
    payload = os.urandom(9 << 20 | 12345)         # several relay batches and a partial one
    client.sendall(payload)
    client.shutdown(socket.SHUT_WR)
    mover.join()
    assert bytes(mover.got) == payload and mover.ended
    plain.settimeout(5)
    assert plain.recv(1) == b""                   # the plain socket carries the end, not the bytes
    plain.close()                                 # the mover halts: its close ends the TLS connection
    client.settimeout(20)
    assert client.recv(1) == b""                  # as close_notify, an end of stream on the sender
    for s in (client, lsock):
        s.close()


def test_a_tampered_stream_is_a_cut_never_an_end_and_no_changed_byte_is_handed_over(two):
    client, plain, handoff, lsock = receiving(two, proxied=True)
    mover = Mover(handoff)
    payload = os.urandom(8 << 20)
    try:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
    except OSError:                               # cut already
        pass
    mover.join()
    assert len(mover.got) < len(payload) and payload.startswith(bytes(mover.got))
    assert mover.ended is False                   # the mover must not store it as a complete image
    for s in (client, plain, lsock):
        s.close()


def test_a_mover_that_stops_is_not_left_waiting_and_the_sender_is_cut(two):
    client, plain, handoff, lsock = receiving(two)
    mover = Mover(handoff)
    client.sendall(b"first records")
    plain.shutdown(socket.SHUT_RDWR)              # MOVER_ABORT / a halt while waiting for data
    mover.join()
    assert mover.ended is False
    client.settimeout(20)
    with pytest.raises(OSError):                  # the sender's data connection ends: it cannot go on
        for _ in range(64):
            client.sendall(bytes(1 << 20))
    for s in (client, plain, lsock):
        s.close()
