"""A TLS data connection presented as a plain socket: the relay between the two.

The data and mover services (and the dump engine, which ``sendfile``\\ s straight into the
data socket's descriptor) work on a plain stream socket; a TLS connection is handed to them
as one end of a local socket pair whose other end a relay thread pumps through TLS (OpenSSL
reading and writing the TCP socket itself, :mod:`.stream`; one thread, so one SSL object is
never used by two threads).
So every use of a data socket — ``sendfile``, half-close, ``MSG_PEEK``, shutdown on abort —
works the same with TLS as without, by construction.

Half-close maps to TLS ``close_notify``: end of stream on the plain side sends close_notify
and shuts the TCP write side; a close_notify from the peer is end of stream on the plain
side. A TCP end without close_notify (a truncation) is logged and the plain side is cut.

The plain socket handed out is a :class:`RelayedSocket`: its end of stream is the peer's
close_notify and nothing else. When the relay cut the connection instead (a TCP FIN or RST
without close_notify, a bad record, a broken connection, a failed handshake), every read
that reaches the end raises :class:`~.stream.Truncated` saying why, and a failed send does
too: whatever a service does with the socket (a restore reading an image, a mover serving
one), a truncated stream cannot pass for a complete one. The handoffs carry the same reason.

A mover receiving a backup can take the decrypted stream through a :class:`Handoff`
instead (``inbound``), as a LOCAL connection does: the relay decrypts into its batch buffer
and the mover writes its tape records straight out of it, so the bytes skip the socket
pair's two copies (measured: a fifth to a quarter of the receiving side's CPU); the relay
decrypts the next batch while the mover writes the one before (``Handoff.offer``). The socket
pair still carries the connection's lifetime: the mover closing or shutting its end (halt,
abort) closes the handoff and ends the TLS connection, and an end or a cut of the TLS
connection ends the handoff.

The data service sending a backup hands its buffers over ``outbound`` the same way (the
dump engine reads files into its buffers rather than sending them into the pair with ``sendfile``):
the relay encrypts straight out of each buffer and releases it. The handoff's end becomes
close_notify, and the peer's close_notify after it is the stream delivered (``finish``), as
the peer's close after a half-close is on plain TCP; a close in mid-stream is a cut, never
a close_notify. Until a buffer or the end arrives the plain socket works as always, so a
restore on the same connection needs nothing else.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable

from ..mover.handoff import Handoff
from .stream import TlsStream, Truncated

log = logging.getLogger("ndmpd.tls")
CHUNK = 1 << 20                  # bytes read at once from either side
HIGH_WATER = 4 << 20            # stop reading a side while this much waits to go out on the other
SPARE_BUFFERS = 8                # batch buffers kept for reuse (HIGH_WATER / CHUNK, and some)
PAIR_BUFFER = 4 << 20           # the local pair's socket buffers (as addresses.tune for TCP)


class Fate:
    """How the relay ended the plain side, written by the relay thread before it shuts its end
    (so a reader that saw the end of stream sees this too)."""

    def __init__(self) -> None:
        self.clean = False          # the peer's close_notify came: the end of stream is real
        self.why = ""               # why the relay cut the connection (empty: it did not, yet)

    def cut(self, why: str) -> None:
        if not self.clean and not self.why:
            self.why = f"TLS data stream cut: {why}"

    @property
    def reason(self) -> str:
        return self.why or "TLS data stream cut: the connection ended without close_notify"


class RelayedSocket(socket.socket):
    """The service's end of a relayed TLS data connection: an end of stream without the peer's
    close_notify raises :class:`Truncated`, and a send failing after a cut says it was one."""

    def __init__(self, plain: socket.socket, fate: Fate) -> None:
        super().__init__(plain.family, plain.type, plain.proto, fileno=plain.detach())
        self.fate = fate
        self._shut_here = False     # this side shut its own reading: its end of stream is its own

    @property
    def cut(self) -> str:
        """Why the relay cut the connection, or empty."""
        return "" if self.fate.clean else self.fate.why

    def _ended(self, got: int, wanted: int) -> None:
        if not got and wanted and not self.fate.clean and not self._shut_here:
            raise Truncated(self.fate.reason)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self._ended(len(data), bufsize)
        return data

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        got = super().recv_into(buffer, nbytes, flags)
        self._ended(got, nbytes or memoryview(buffer).nbytes)
        return got

    def send(self, data, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise self._as_cut(exc) from None

    def sendall(self, data, flags: int = 0) -> None:
        try:
            super().sendall(data, flags)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise self._as_cut(exc) from None

    def _as_cut(self, exc: OSError) -> OSError:
        return Truncated(self.fate.why) if self.cut else exc

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._shut_here = True
        super().shutdown(how)


def relay(stream: TlsStream, name: str, first: Callable[[], None] | None = None,
          inbound: Handoff | None = None, outbound: Handoff | None = None) -> RelayedSocket:
    """The plain socket standing for ``stream``; a daemon thread relays until both directions
    are closed, then closes the TCP socket. ``first`` (the handshake and the peer's check,
    when the caller cannot wait for them) runs on that thread before anything is relayed:
    if it raises, the plain socket is cut and not one byte written to it reaches the network.
    With ``inbound``, what the peer sends arrives there instead of on the plain socket; with
    ``outbound``, what the service hands over there goes to the peer."""
    plain, inner = socket.socketpair()
    for sock in (plain, inner):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, PAIR_BUFFER)
            except OSError:
                pass
    fate = Fate()
    pump = _Relay(stream, inner, first, inbound, outbound, fate)
    threading.Thread(target=pump.run, name=f"tls relay {name}", daemon=True).start()
    return RelayedSocket(plain, fate)


class _Pending:
    """Bytes waiting to go out on one socket: whole chunks, sent without copying them again."""

    def __init__(self, spare: list[bytearray] | None = None) -> None:
        self.chunks: deque[memoryview] = deque()
        self.size = 0
        self.spare = spare              # where sent CHUNK-sized buffers go back for reuse

    def __len__(self) -> int:
        return self.size

    def add(self, data: bytes | memoryview) -> None:
        if data:
            self.chunks.append(memoryview(data))
            self.size += len(data)

    def clear(self) -> None:
        self.chunks.clear()
        self.size = 0

    def send(self, sock: socket.socket) -> None:
        """Send what the socket takes now; the rest stays pending."""
        while self.chunks:
            chunk = self.chunks[0]
            try:
                sent = sock.send(chunk)
            except BlockingIOError:
                return
            self.size -= sent
            if sent < len(chunk):
                self.chunks[0] = chunk[sent:]
                return
            self.chunks.popleft()
            self._recycle(chunk.obj)

    def _recycle(self, buffer: object) -> None:
        """A batch buffer of the decrypting side, fully sent, is used again: fresh 1 MiB
        buffers cost page faults and zeroing on every batch."""
        if self.spare is not None and isinstance(buffer, bytearray) and len(buffer) == CHUNK \
                and len(self.spare) < SPARE_BUFFERS:
            self.spare.append(buffer)


class _Relay:
    """The pump: plaintext from ``inner`` is encrypted to the network and back."""

    def __init__(self, stream: TlsStream, inner: socket.socket, first: Callable[[], None] | None,
                 inbound: Handoff | None = None, outbound: Handoff | None = None, fate: Fate | None = None) -> None:
        self.stream, self.inner, self.first, self.inbound, self.outbound = stream, inner, first, inbound, outbound
        self.fate = fate or Fate()
        self.handed = False             # the service's stream comes over ``outbound`` (a buffer or its end came)
        self.wake_in = self.wake_out = None
        if outbound is not None:        # the handoff's buffers, end and close wake the selector
            self.wake_in, self.wake_out = socket.socketpair()
            for sock in (self.wake_in, self.wake_out):
                sock.setblocking(False)
            outbound.watch(self._wake)
        self.net = stream.sock
        self.spare: list[bytearray] = []
        self.to_app = _Pending(self.spare)
        self.sent: Callable[[], None] | None = None     # once the write waiting for room is done
        self.offered: object = None     # the batch the mover may still be writing from (never reused till released)
        self.buffer = memoryview(bytearray(CHUNK))
        self.app_done = False           # the plain side ended its stream (close_notify queued)
        self.net_done = False           # the peer ended its stream (or the connection broke)
        self.net_shut = False           # our TCP write side is shut
        self.app_shut = False           # the plain side's read side has its end of stream

    def run(self) -> None:
        if self.first is not None:
            try:
                self.first()
            except Exception as exc:
                log.warning("TLS data connection refused: %s", exc)
                self.fate.cut(f"the connection was refused: {exc}")
                self._close_handoffs()
                _shut(self.inner, socket.SHUT_RDWR)
                self._close_all()
                return
        self.inner.setblocking(False)
        selector = selectors.DefaultSelector()
        try:
            self._loop(selector)
        except Exception as exc:        # a broken connection ends the relay, never the server
            log.warning("TLS data connection ended: %s", exc)
            if self.to_app:             # bytes the service never got: after close_notify too, a cut
                self.fate.clean = False
            self.fate.cut(f"the connection broke: {exc}")
        finally:
            selector.close()
            self._close_handoffs()             # whatever happened, neither service waits on
            self._close_all()

    def _close_all(self) -> None:
        self.stream.close()
        for sock in (self.inner, self.wake_in, self.wake_out):
            _close(sock)

    def _loop(self, selector: selectors.BaseSelector) -> None:
        watched: dict[socket.socket, int] = {}
        while not (self.net_shut and self.app_shut):
            self._flush()                       # first without waiting: most of the time it goes at once
            self._from_outbound()               # after it, never before select: a buffer left waiting for
                                                # room keeps the stream writing, so writability wakes us
            self.to_app.send(self.inner)
            if self.stream.pending() and self._can_read_net():
                self._from_net()                # decrypted bytes OpenSSL holds wake no selector
                continue
            self._shut_finished()
            if self.net_shut and self.app_shut:
                return
            net_events = (selectors.EVENT_READ if self._can_read_net() else 0) \
                | (selectors.EVENT_WRITE if self.stream.writing else 0)
            app_events = (selectors.EVENT_READ if not self.app_done and not self.stream.writing else 0) \
                | (selectors.EVENT_WRITE if self.to_app else 0)
            if not net_events and not app_events:
                return                  # cannot happen while a direction is open; never spin
            wake_events = selectors.EVENT_READ if self.wake_in is not None and not self.app_done else 0
            for sock, events in ((self.net, net_events), (self.inner, app_events), (self.wake_in, wake_events)):
                if sock is not None:
                    _watch(selector, watched, sock, events)
            for key, events in selector.select():
                if not events & selectors.EVENT_READ:
                    continue
                if key.fileobj is self.net:
                    self._from_net()
                elif key.fileobj is self.inner:
                    self._from_app()
                else:
                    _drain(self.wake_in)        # the loop's top polls the handoff

    def _can_read_net(self) -> bool:
        return not self.net_done and len(self.to_app) < HIGH_WATER

    def _shut_finished(self) -> None:
        """Pass on an end of stream once everything before it has gone."""
        if self.app_done and not self.stream.writing and not self.net_shut:
            self.stream.shut_write()
            self.net_shut = True
        if self.net_done and not self.to_app and not self.app_shut:
            if self.inbound is not None:
                self.inbound.end()      # the peer's stream ended: the mover stores the rest
            _shut(self.inner, socket.SHUT_WR)
            self.app_shut = True

    def _from_app(self) -> None:
        """Plaintext from the service: encrypt it; its end of stream becomes close_notify."""
        try:
            n = self.inner.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError:                 # the service is gone (abort): nothing more either way
            n = -1
        if n > 0:
            self._write(self.buffer[:n])
        elif self.handed:               # the service shut its socket in mid-stream: an abort, not an end
            self._cut()
        else:
            if n < 0 or self.inbound is not None:   # a receiving mover only closes its end to stop
                self._close_handoffs()
                self.net_done = True
                self.to_app.clear()
            self._close_notify()

    def _from_outbound(self) -> None:
        """A buffer the service handed over: encrypted straight out of it, then released for
        reuse; the handoff's end becomes close_notify, its close after a buffer or the end a cut."""
        out = self.outbound
        if out is None or self.app_done:
            return
        if out.closed and self.handed:  # an abort while a buffer waits for room ends it too
            self._cut()
            return
        if self.stream.writing:
            return
        data = out.poll()
        if data is not None:
            self.handed = True
            self._write(data, out.release)
        elif out.ended:
            self.handed = True
            self._close_notify()

    def _write(self, view: memoryview, sent: Callable[[], None] | None = None) -> None:
        """SSL_write ``view`` to the network; ``sent`` runs once all of it went (maybe later)."""
        self.sent = sent
        if self.stream.write(view):
            self._sent()

    def _flush(self) -> None:
        if self.stream.writing and self.stream.flush():
            self._sent()
        if not self.stream.open:        # close_notify went both ways
            self._peer_ended()

    def _sent(self) -> None:
        sent, self.sent = self.sent, None
        if sent is not None:
            sent()

    def _close_notify(self) -> None:
        """The service's stream is over: close_notify (the peer's may come later)."""
        self.app_done = True
        self.stream.close_notify()
        if not self.stream.open:
            self._peer_ended()

    def _from_net(self) -> None:
        """Records from the peer, decrypted straight into a batch buffer (the plain side gets
        one send per CHUNK, not one per 16 KiB record); close_notify is the end of its stream."""
        batch, filled = self._batch(), 0
        while not self.net_done:
            if filled == CHUNK:
                if not self._deliver(batch):
                    return
                batch, filled = self._batch(), 0
                if len(self.to_app) >= HIGH_WATER:
                    break               # the rest waits in the kernel (or in OpenSSL: pending)
            try:
                n = self.stream.read_into(batch[filled:])
            except Truncated as exc:
                log.warning("%s; cutting it", exc)
                self._cut(str(exc))
                return
            except ssl.SSLError as exc:
                log.warning("TLS data connection: %s", exc.reason or exc)
                self._cut(f"a bad TLS record: {exc.reason or exc}")
                return
            except OSError as exc:
                log.warning("TLS data connection broken: %s", exc)
                self._cut(f"the connection broke: {exc.strerror or exc}")
                return
            if n is None:
                break
            if not n:
                self._peer_ended()
                break
            filled += n
        if filled:
            self._deliver(batch[:filled])
        else:
            self.spare.append(batch.obj)

    def _peer_ended(self) -> None:
        """The peer's close_notify. After the end of what the service handed over, it is the
        peer saying it has every byte (as its close after a half-close is on plain TCP)."""
        self.net_done = True
        self.fate.clean = not self.fate.why
        if self.outbound is not None and self.handed and self.app_done:
            self.outbound.finish()

    def _deliver(self, data: memoryview) -> bool:
        """Plaintext for the service: queued for the plain socket, or offered to the mover once
        it has released the batch before (that one's buffer is then free again). False: the
        mover is gone, cut."""
        if self.inbound is None:
            self.to_app.add(data)
            return True
        try:
            self.inbound.wait_released()        # the batch before, which the mover wrote meanwhile
            self.inbound.offer(data)
        except BrokenPipeError:
            self._cut()
            return False
        if self.offered is not None and len(self.spare) < SPARE_BUFFERS:
            self.spare.append(self.offered)
        self.offered = data.obj
        return True

    def _close_handoffs(self) -> None:
        """The connection is over or cut: neither service waits on a handoff any more."""
        for handoff in (self.inbound, self.outbound):
            if handoff is not None:
                handoff.close(self.fate.why)

    def _wake(self) -> None:
        try:
            self.wake_out.send(b"\0")
        except OSError:                 # full: a wake-up is pending anyway; closed: the relay is over
            pass

    def _batch(self) -> memoryview:
        return memoryview(self.spare.pop() if self.spare else bytearray(CHUNK))

    def _cut(self, why: str = "") -> None:
        """The network side failed (``why``), or the service stopped: the service sees its
        connection end (a network failure as :class:`Truncated`); nothing more is relayed."""
        if why:
            self.fate.cut(why)
        self.net_done = self.app_done = self.net_shut = self.app_shut = True
        self._close_handoffs()
        self.to_app.clear()
        _shut(self.inner, socket.SHUT_RDWR)


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _drain(sock: socket.socket) -> None:
    """Read every wake-up byte waiting."""
    try:
        while sock.recv(4096):
            pass
    except OSError:                     # BlockingIOError: none left
        pass


def _shut(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:                     # already reset or closed by the other side
        pass


def _watch(selector: selectors.BaseSelector, watched: dict[socket.socket, int], sock: socket.socket,
           events: int) -> None:
    """Make ``sock`` watched for exactly ``events`` (none: not watched)."""
    now = watched.get(sock, 0)
    if events == now:
        return
    if not events:
        selector.unregister(sock)
        del watched[sock]
    elif now:
        selector.modify(sock, events)
        watched[sock] = events
    else:
        selector.register(sock, events)
        watched[sock] = events
