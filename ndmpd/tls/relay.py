"""A TLS data connection presented as a plain socket: the relay between the two.

The data and mover services (and the dump engine, which ``sendfile``\\ s straight into the
data socket's descriptor) work on a plain stream socket; a TLS connection is handed to them
as one end of a local socket pair whose other end a relay thread pumps through TLS (OpenSSL
via ``ssl``'s memory BIOs, one thread, so one SSL object is never used by two threads).
So every use of a data socket — ``sendfile``, half-close, ``MSG_PEEK``, shutdown on abort —
works the same with TLS as without, by construction.

Half-close maps to TLS ``close_notify``: end of stream on the plain side sends close_notify
and shuts the TCP write side; a close_notify from the peer is end of stream on the plain
side. A TCP end without close_notify (a truncation) is logged and the plain side is cut.

A mover receiving a backup can take the decrypted stream through a :class:`Handoff`
instead (``inbound``), as a LOCAL connection does: the relay decrypts into its batch buffer
and the mover writes its tape records straight out of it, so the bytes skip the socket
pair's two copies (measured: a fifth to a quarter of the receiving side's CPU). The socket
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

log = logging.getLogger("ndmpd.tls")
CHUNK = 1 << 20                  # bytes read at once from either side
HIGH_WATER = 4 << 20            # stop reading a side while this much waits to go out on the other
SPARE_BUFFERS = 8                # batch buffers kept for reuse (HIGH_WATER / CHUNK, and some)
PAIR_BUFFER = 4 << 20           # the local pair's socket buffers (as addresses.tune for TCP)


class HandshakeFailed(ConnectionError):
    """The TLS handshake failed or the peer's certificate was refused."""


class TlsStream:
    """One side of a TLS connection over a connected TCP socket, driven through memory BIOs."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side)

    def handshake(self, timeout: float) -> None:
        """Complete the handshake on the blocking socket within ``timeout`` seconds per step."""
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    self.tls.do_handshake()
                    self.sock.sendall(self.outgoing.read())
                    return
                except ssl.SSLWantReadError:
                    self.sock.sendall(self.outgoing.read())
                    data = self.sock.recv(CHUNK)
                    if not data:
                        raise HandshakeFailed("the peer closed the connection during the TLS handshake")
                    self.incoming.write(data)
        except ssl.SSLError as exc:
            pending = self.outgoing.read()          # our alert tells the peer why
            if pending:
                try:
                    self.sock.sendall(pending)
                except OSError:
                    pass
            raise HandshakeFailed(f"TLS handshake failed: {exc.reason or exc}") from None
        except (OSError, TimeoutError) as exc:
            raise HandshakeFailed(f"TLS handshake failed: {exc}") from None
        finally:
            self.sock.settimeout(None)


def relay(stream: TlsStream, name: str, first: Callable[[], None] | None = None,
          inbound: Handoff | None = None, outbound: Handoff | None = None) -> socket.socket:
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
    pump = _Relay(stream, inner, first, inbound, outbound)
    threading.Thread(target=pump.run, name=f"tls relay {name}", daemon=True).start()
    return plain


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
                 inbound: Handoff | None = None, outbound: Handoff | None = None) -> None:
        self.stream, self.inner, self.first, self.inbound, self.outbound = stream, inner, first, inbound, outbound
        self.handed = False             # the service's stream comes over ``outbound`` (a buffer or its end came)
        self.wake_in = self.wake_out = None
        if outbound is not None:        # the handoff's buffers, end and close wake the selector
            self.wake_in, self.wake_out = socket.socketpair()
            for sock in (self.wake_in, self.wake_out):
                sock.setblocking(False)
            outbound.watch(self._wake)
        self.net, self.tls = stream.sock, stream.tls
        self.spare: list[bytearray] = []
        self.to_net, self.to_app = _Pending(), _Pending(self.spare)
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
                self._close_handoffs()
                _shut(self.inner, socket.SHUT_RDWR)
                for sock in (self.inner, self.net, self.wake_in, self.wake_out):
                    _close(sock)
                return
        self.to_net.add(self.stream.outgoing.read())
        self.net.setblocking(False)
        self.inner.setblocking(False)
        self._decrypt()                 # records that came with the handshake's last flight
        selector = selectors.DefaultSelector()
        try:
            self._loop(selector)
        except Exception as exc:        # a broken connection ends the relay, never the server
            log.warning("TLS data connection ended: %s", exc)
        finally:
            selector.close()
            self._close_handoffs()             # whatever happened, neither service waits on
            for sock in (self.inner, self.net, self.wake_in, self.wake_out):
                _close(sock)

    def _loop(self, selector: selectors.BaseSelector) -> None:
        watched: dict[socket.socket, int] = {}
        while not (self.net_shut and self.app_shut):
            self.to_net.send(self.net)          # first without waiting: most of the time it goes at once
            self._from_outbound()               # after it, never before select: a buffer left waiting for
                                                # room leaves to_net full, so the network's writability wakes us
            self.to_app.send(self.inner)
            self._shut_finished()
            if self.net_shut and self.app_shut:
                return
            net_events = (selectors.EVENT_READ if not self.net_done and len(self.to_app) < HIGH_WATER else 0) \
                | (selectors.EVENT_WRITE if self.to_net else 0)
            app_events = (selectors.EVENT_READ if not self.app_done and len(self.to_net) < HIGH_WATER else 0) \
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

    def _shut_finished(self) -> None:
        """Pass on an end of stream once everything before it has gone."""
        if self.app_done and not self.to_net and not self.net_shut:
            _shut(self.net, socket.SHUT_WR)
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
            self._encrypt(self.buffer[:n])
        elif self.handed:               # the service shut its socket in mid-stream: an abort, not an end
            self._cut()
            return
        else:
            if n < 0 or self.inbound is not None:   # a receiving mover only closes its end to stop
                self._close_handoffs()
                self.net_done = True
                self.to_app.clear()
            self._close_notify()
        self.to_net.add(self.stream.outgoing.read())

    def _from_outbound(self) -> None:
        """A buffer the service handed over: encrypted, then released for reuse; the handoff's
        end becomes close_notify, its close after a buffer or the end a cut."""
        out = self.outbound
        if out is None or self.app_done or len(self.to_net) >= HIGH_WATER:
            return
        data = out.poll()
        if data is not None:
            self.handed = True
            try:
                self._encrypt(data)
            finally:
                out.release()
            self.to_net.add(self.stream.outgoing.read())
        elif out.ended:
            self.handed = True
            self._close_notify()
            self.to_net.add(self.stream.outgoing.read())
        elif out.closed and self.handed:
            self._cut()

    def _encrypt(self, view: memoryview) -> None:
        while view:
            view = view[self.tls.write(view):]

    def _close_notify(self) -> None:
        """The service's stream is over: queue close_notify (the peer's may come later)."""
        self.app_done = True
        try:
            self.tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass

    def _from_net(self) -> None:
        """Records from the peer: decrypt them; close_notify is the end of its stream."""
        try:
            n = self.net.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("TLS data connection broken: %s", exc)
            self._cut()
            return
        if not n:
            if not self.net_done:
                log.warning("TLS data connection ended without close_notify (truncated); cutting it")
                self._cut()
            return
        self.stream.incoming.write(self.buffer[:n])
        self._decrypt()

    def _decrypt(self) -> None:
        """Every whole record the incoming BIO holds, to the plain side: decrypted straight into
        a batch buffer, so the plain side gets one send per CHUNK, not one per 16 KiB record."""
        batch, filled = self._batch(), 0
        while not self.net_done:
            if filled == CHUNK:
                if not self._deliver(batch):
                    return
                batch, filled = self._batch(), 0
            try:
                n = self.tls.read(CHUNK - filled, batch[filled:])
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._peer_ended()
                break
            except ssl.SSLError as exc:
                log.warning("TLS data connection: %s", exc.reason or exc)
                self._cut()
                return
            if not n:
                self._peer_ended()
                break
            filled += n
        if filled:
            if not self._deliver(batch[:filled]):
                return
        else:
            self.spare.append(batch.obj)
        self.to_net.add(self.stream.outgoing.read())     # a key update's answer

    def _peer_ended(self) -> None:
        """The peer's close_notify. After the end of what the service handed over, it is the
        peer saying it has every byte (as its close after a half-close is on plain TCP)."""
        self.net_done = True
        if self.outbound is not None and self.handed and self.app_done:
            self.outbound.finish()

    def _deliver(self, data: memoryview) -> bool:
        """Plaintext for the service: queued for the plain socket, or handed to the mover and
        taken (its buffer free again) when ``put`` returns. False: the mover is gone, cut."""
        if self.inbound is None:
            self.to_app.add(data)
            return True
        try:
            self.inbound.put(data)
        except BrokenPipeError:
            self._cut()
            return False
        if len(self.spare) < SPARE_BUFFERS:
            self.spare.append(data.obj)
        return True

    def _close_handoffs(self) -> None:
        """The connection is over or cut: neither service waits on a handoff any more."""
        for handoff in (self.inbound, self.outbound):
            if handoff is not None:
                handoff.close()

    def _wake(self) -> None:
        try:
            self.wake_out.send(b"\0")
        except OSError:                 # full: a wake-up is pending anyway; closed: the relay is over
            pass

    def _batch(self) -> memoryview:
        return memoryview(self.spare.pop() if self.spare else bytearray(CHUNK))

    def _cut(self) -> None:
        """The network side failed: the service sees its connection end; nothing more is relayed."""
        self.net_done = self.app_done = self.net_shut = self.app_shut = True
        self._close_handoffs()
        self.to_app.clear()
        self.to_net.clear()
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
