"""One side of a TLS data connection: OpenSSL's own socket BIO over the TCP socket.

OpenSSL reads records straight from the kernel and writes them straight to it, so a relay
moves bytes between the kernel and its buffers with no memory BIOs: no zeroing and copying
into them, no bytes object per chunk. It costs a system call per record written and two per
record read instead (Python's ``ssl`` offers no read-ahead); measured on a 2-core VM, the CPU
per GiB is the same as with memory BIOs, the memory per connection smaller. The calls here
never block once the handshake is over: the relay's selector waits for them.

An ``ssl.SSLSocket`` whose TLS session is over silently reads and writes plaintext; this
class never lets that happen (:attr:`TlsStream.open`), and never uses ``SSLSocket.shutdown``,
which ends the TLS session too: a half-close shuts only the TCP write side.
"""

from __future__ import annotations

import socket
import ssl


class HandshakeFailed(ConnectionError):
    """The TLS handshake failed or the peer's certificate was refused."""


class Truncated(ConnectionError):
    """The TCP connection ended without the peer's close_notify: never a clean end."""


class TlsStream:
    """A TLS connection over a connected TCP socket (which it takes over)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool) -> None:
        # suppress_ragged_eofs=False: a TCP end without close_notify raises, never reads as an end
        self.tls = context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False,
                                       suppress_ragged_eofs=False)
        self.sock = self.tls            # the connection's socket (peer name, close)
        self.open = True                # False once close_notify went both ways: no more TLS calls
        self._writing: memoryview | None = None     # an SSL_write waiting for room, retried as it is
        self._notify = False            # our close_notify waits for room
        self._ended = False             # our close_notify is queued or sent: nothing may follow it

    def handshake(self, timeout: float) -> None:
        """Complete the handshake within ``timeout`` seconds per step, then go non-blocking."""
        self.tls.settimeout(timeout)
        try:
            self.tls.do_handshake()
        except ssl.SSLEOFError:
            raise HandshakeFailed("the peer closed the connection during the TLS handshake") from None
        except ssl.SSLError as exc:     # OpenSSL sent our alert, which tells the peer why
            raise HandshakeFailed(f"TLS handshake failed: {exc.reason or exc}") from None
        except (OSError, TimeoutError) as exc:
            raise HandshakeFailed(f"TLS handshake failed: {exc}") from None
        self.tls.setblocking(False)

    # -- reading -----------------------------------------------------------------------------

    def pending(self) -> int:
        """Decrypted bytes OpenSSL holds (the socket will not wake a selector for them)."""
        return self.tls.pending() if self.open else 0

    def read_into(self, view: memoryview) -> int | None:
        """Decrypt into ``view``: bytes read, 0 at the peer's close_notify, None when nothing is
        there yet. Raises :class:`Truncated` for a TCP end without close_notify, ``ssl.SSLError``
        for a bad record, OSError for a broken connection."""
        if not self.open:
            return 0
        try:
            return self.tls.recv_into(view, len(view))
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except ssl.SSLZeroReturnError:  # close_notify after ours
            return 0
        except ssl.SSLEOFError:
            raise Truncated("the TLS data connection ended without close_notify (truncated)") from None

    # -- writing -----------------------------------------------------------------------------

    @property
    def writing(self) -> bool:
        """Something (bytes or close_notify) waits for room on the socket."""
        return self._writing is not None or self._notify

    def write(self, view: memoryview) -> bool:
        """Encrypt ``view`` straight to the socket (OpenSSL cuts it into records). False: part
        of it waits for room; :meth:`flush` sends the rest, and ``view`` must stay valid till then."""
        if not self.open or self._ended:
            raise BrokenPipeError("the TLS data connection's sending side is closed")
        self._writing = view
        self._cork(True)
        return self.flush()

    def close_notify(self) -> bool:
        """End our stream with close_notify (the peer's may come later). False: it waits for room."""
        self._notify = self._ended = True
        return self.flush()

    def flush(self) -> bool:
        """Send what waits; True when nothing does any more."""
        while self._writing is not None:
            try:
                sent = self.tls.send(self._writing)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            self._writing = self._writing[sent:] or None
            if self._writing is None:
                self._cork(False)
        if self._notify and self.open:
            try:
                self.tls.unwrap()       # both close_notify exchanged: the TLS session is over
                self.open = False
            except ssl.SSLWantWriteError:
                return False
            except ssl.SSLWantReadError:
                pass                    # ours went; the peer's is still to come
            except (ssl.SSLError, OSError):
                pass                    # the peer is gone: nothing can go out any more
        self._notify = False
        return True

    def _cork(self, on: bool) -> None:
        """While one SSL_write's records go out (one send each), the kernel packs them into
        full segments: a 16 KiB segment costs the stack as much as a 64 KiB one."""
        try:
            self.tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))
        except OSError:
            pass

    def shut_write(self) -> None:
        """Shut the TCP write side (after close_notify), the TLS session left as it is."""
        try:
            socket.socket.shutdown(self.tls, socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.tls.close()
        except OSError:
            pass
