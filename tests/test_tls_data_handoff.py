"""Over a TLS data connection, a mover receiving a backup takes the decrypted stream through a
Handoff and a data service sending one hands its buffers over one (no socket pair copies):
every byte and the end arrive, the sender counts the stream delivered only once the peer
closed after it, a cut is never an end, and a side that stops ends the TLS connection and
leaves nobody waiting."""

from __future__ import annotations

import os
import socket
import threading
import time

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

    def __init__(self, handoff: Handoff, pause: float = 0.0) -> None:
        self.handoff, self.got, self.ended, self.pause = handoff, bytearray(), None, pause
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.handoff.take()) is not None:
            self.got += data
            if len(self.got) % (8 << 20) < len(data):
                time.sleep(self.pause)            # a tape that stops now and then: back-pressure, then a rush
            self.handoff.release()
        self.handoff.finish()                     # counts only after a real end of stream
        self.ended = self.handoff.finished

    def join(self) -> None:
        self.thread.join(20)
        assert not self.thread.is_alive(), "the mover was left waiting in take()"


def receiving(two, proxied: bool = False, sending: Handoff | None = None, cut_at: int | None = None):
    """(connector's plain socket, mover's plain socket, mover's handoff, listener socket),
    ``proxied`` through a TamperingProxy (flipping a bit, or with ``cut_at`` truncating the
    connector's stream); with ``sending``, the connector hands its stream over that handoff."""
    lsock, ep = addresses.open_listener("127.0.0.1")
    if cut_at is not None:
        port = TamperingProxy(ep.port, cut_at=cut_at).port
    else:
        port = TamperingProxy(ep.port, flip_at=3 << 20).port if proxied else ep.port
    handoff = Handoff()
    out: dict = {}
    accepting = threading.Thread(target=lambda: out.update(sock=addresses.accept(
        lsock, lambda: False, poll=0.05, secure=two[0].receiving_into(handoff))), daemon=True)
    accepting.start()
    connector = two[1] if sending is None else two[1].sending_from(sending)
    client = addresses.connect([addresses.Endpoint("127.0.0.1", port)], secure=connector)
    accepting.join(20)
    return client, out["sock"], handoff, lsock


class DataService:
    """What jobs.backup does with a Handoff: put each buffer (reused at once), then end and
    wait until the stream is delivered."""

    def __init__(self, handoff: Handoff, payload: bytes) -> None:
        self.handoff, self.payload, self.delivered, self.error = handoff, payload, None, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buffer = memoryview(bytearray(1 << 20))
        try:
            for at in range(0, len(self.payload), len(buffer)):
                piece = self.payload[at:at + len(buffer)]
                buffer[:len(piece)] = piece
                self.handoff.put(buffer[:len(piece)])
                buffer[:len(piece)] = bytes(len(piece))   # the relay must have encrypted it already
        except BrokenPipeError as exc:
            self.error = exc
            return
        self.handoff.end()
        self.delivered = self.handoff.wait_finished(self.stop, poll=0.05)

    def join(self) -> None:
        self.thread.join(20)
        assert not self.thread.is_alive(), "the data service was left waiting"


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


@pytest.mark.parametrize("cut_at", [(5 << 20) + 7, 6 << 20])   # inside a record, and wherever 6 MiB falls
def test_a_truncated_stream_is_a_cut_never_an_end_and_the_mover_is_not_left_waiting(two, cut_at, caplog):
    """A man in the middle ends the TCP connection cleanly (FIN) in mid-stream: no close_notify
    came, so the mover must not store what it got as a complete image, and the log says why."""
    client, plain, handoff, lsock = receiving(two, cut_at=cut_at)
    mover = Mover(handoff)
    payload = os.urandom(8 << 20)
    with caplog.at_level("WARNING", logger="ndmpd.tls"):
        try:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        mover.join()
    assert 0 < len(mover.got) < cut_at and payload.startswith(bytes(mover.got))
    assert mover.ended is False and not handoff.ended
    assert "without close_notify (truncated)" in caplog.text
    assert handoff.cut.startswith("TLS data stream cut")     # what the mover's halt says to the DMA
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


def test_a_stream_handed_over_by_the_data_service_arrives_whole_and_is_delivered_after_the_peer_closes(two):
    sending = Handoff()
    client, plain, handoff, lsock = receiving(two, sending=sending)
    payload = os.urandom(7 << 20 | 4321)
    mover = Mover(handoff)
    service = DataService(sending, payload)
    mover.join()
    assert bytes(mover.got) == payload and mover.ended
    assert service.delivered is None              # stored, but the peer has not closed yet
    plain.close()                                 # the mover halts: its relay answers close_notify
    service.join()
    assert service.delivered is True and service.error is None
    for s in (client, lsock):
        s.close()


def test_a_data_service_that_aborts_in_mid_stream_is_a_cut_at_the_mover_not_an_end(two):
    sending = Handoff()
    client, plain, handoff, lsock = receiving(two, sending=sending)
    mover = Mover(handoff)
    buffer = memoryview(bytes(1 << 20))
    sending.put(buffer)
    sending.put(buffer)
    sending.close()                               # DATA_ABORT: _shutdown_socket closes the handoff
    client.shutdown(socket.SHUT_RDWR)             # and shuts the data socket
    mover.join()
    assert mover.ended is False and len(mover.got) <= 2 << 20
    for s in (client, plain, lsock):
        s.close()


def test_a_data_service_whose_peer_stops_gets_a_broken_pipe_not_a_hang(two):
    sending = Handoff()
    client, plain, handoff, lsock = receiving(two, sending=sending)
    handoff.close()                               # the mover halts before taking anything
    plain.shutdown(socket.SHUT_RDWR)
    service = DataService(sending, bytes(64 << 20))
    service.join()
    assert isinstance(service.error, BrokenPipeError) and service.delivered is None
    for s in (client, plain, lsock):
        s.close()


def test_a_restore_on_a_connection_that_could_hand_over_uses_the_plain_socket(two):
    """The data service offers its handoff on every TLS connection; a restore never puts to
    it, and reads what the mover sends from the plain socket, to its end."""
    server_tls, client_tls = two
    lsock, ep = addresses.open_listener("127.0.0.1")
    out: dict = {}
    accepting = threading.Thread(target=lambda: out.update(sock=addresses.accept(
        lsock, lambda: False, poll=0.05, secure=server_tls)), daemon=True)
    accepting.start()
    sending = Handoff()
    data_side = addresses.connect([ep], secure=client_tls.sending_from(sending))
    accepting.join(20)
    mover_side = out["sock"]
    image = os.urandom(5 << 20)
    threading.Thread(target=lambda: (mover_side.sendall(image), mover_side.shutdown(socket.SHUT_WR)),
                     daemon=True).start()
    data_side.settimeout(20)
    got = bytearray()
    while chunk := data_side.recv(1 << 20):
        got += chunk
    assert bytes(got) == image
    sending.close()                               # the job ends: the unused handoff is closed
    data_side.sendall(b"done")                    # and the plain socket still works both ways
    data_side.shutdown(socket.SHUT_WR)
    mover_side.settimeout(20)
    assert mover_side.recv(16) == b"done"
    for s in (data_side, mover_side, lsock):
        s.close()


@pytest.mark.parametrize("pause", [0.1, 0.3])
def test_a_slow_mover_holds_the_data_service_back_and_the_stream_still_arrives_whole(two, pause):
    """The relay stops taking buffers while its network side is full and takes them again
    once the peer reads: a buffer waiting then must never be forgotten (a stalled backup)."""
    sending = Handoff()
    client, plain, handoff, lsock = receiving(two, sending=sending)
    payload = os.urandom(48 << 20)
    mover = Mover(handoff, pause)
    service = DataService(sending, payload)
    mover.thread.join(60)
    assert bytes(mover.got) == payload and mover.ended
    plain.close()
    service.join()
    assert service.delivered is True
    for s in (client, lsock):
        s.close()
