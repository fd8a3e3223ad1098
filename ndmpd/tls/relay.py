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
          inbound: Handoff | None = None) -> socket.socket:
    """The plain socket standing for ``stream``; a daemon thread relays until both directions
    are closed, then closes the TCP socket. ``first`` (the handshake and the peer's check,
    when the caller cannot wait for them) runs on that thread before anything is relayed:
    if it raises, the plain socket is cut and not one byte written to it reaches the network.
    With ``inbound``, what the peer sends arrives there instead of on the plain socket."""
    plain, inner = socket.socketpair()
    for sock in (plain, inner):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, PAIR_BUFFER)
            except OSError:
                pass
    pump = _Relay(stream, inner, first, inbound)
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
                 inbound: Handoff | None = None) -> None:
        self.stream, self.inner, self.first, self.inbound = stream, inner, first, inbound
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
                self._end_inbound(closed=True)
                _shut(self.inner, socket.SHUT_RDWR)
                self.inner.close()
                self.net.close()
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
            self._end_inbound(closed=True)     # whatever happened, the mover does not wait on
            for sock in (self.inner, self.net):
                try:
                    sock.close()
                except OSError:
                    pass

    def _loop(self, selector: selectors.BaseSelector) -> None:
        watched: dict[socket.socket, int] = {}
        while not (self.net_shut and self.app_shut):
            self.to_net.send(self.net)          # first without waiting: most of the time it goes at once
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
            for sock, events in ((self.net, net_events), (self.inner, app_events)):
                _watch(selector, watched, sock, events)
            for key, events in selector.select():
                if events & selectors.EVENT_READ:
                    self._from_net() if key.fileobj is self.net else self._from_app()

    def _shut_finished(self) -> None:
        """Pass on an end of stream once everything before it has gone."""
        if self.app_done and not self.to_net and not self.net_shut:
            _shut(self.net, socket.SHUT_WR)
            self.net_shut = True
        if self.net_done and not self.to_app and not self.app_shut:
            self._end_inbound(closed=False)
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
            view = self.buffer[:n]
            while view:
                view = view[self.tls.write(view):]
        else:
            self.app_done = True
            if n < 0 or self.inbound is not None:   # a receiving mover only closes its end to stop
                self._end_inbound(closed=True)
                self.net_done = True
                self.to_app.clear()
            try:
                self.tls.unwrap()       # queues close_notify; the peer's may come later
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
        self.to_net.add(self.stream.outgoing.read())

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
                self.net_done = True
                break
            except ssl.SSLError as exc:
                log.warning("TLS data connection: %s", exc.reason or exc)
                self._cut()
                return
            if not n:
                self.net_done = True
                break
            filled += n
        if filled:
            if not self._deliver(batch[:filled]):
                return
        else:
            self.spare.append(batch.obj)
        self.to_net.add(self.stream.outgoing.read())     # a key update's answer

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

    def _end_inbound(self, closed: bool) -> None:
        """The peer's stream ended (``end``: the mover stores the rest) or the connection is
        over or cut (``close``: the mover stops waiting)."""
        if self.inbound is not None:
            self.inbound.close() if closed else self.inbound.end()

    def _batch(self) -> memoryview:
        return memoryview(self.spare.pop() if self.spare else bytearray(CHUNK))

    def _cut(self) -> None:
        """The network side failed: the service sees its connection end; nothing more is relayed."""
        self.net_done = self.app_done = self.net_shut = self.app_shut = True
        self._end_inbound(closed=True)
        self.to_app.clear()
        self.to_net.clear()
        _shut(self.inner, socket.SHUT_RDWR)


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
