"""TLS for data connections between two ndmpd servers (the ndmpd TLS data extension).

Once a DMA has selected the extension (CONFIG_SET_EXT_LIST) and told a session which
certificate the other server presents (NDMPD_TLS_DATA_PEER), that session's TCP data
connections are TLS: the listening side (MOVER_LISTEN / DATA_LISTEN) is the TLS server, the
connecting side (MOVER_CONNECT / DATA_CONNECT) the client; each presents its own
``tls_certificate`` and accepts only the peer's. See protocol/ndmpd-tls-data.md.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

from ..mover.handoff import Handoff
from . import ktls
from .certs import fingerprint
from .contexts import check_pin, data_context
from .relay import relay
from .stream import HandshakeFailed, TlsStream

log = logging.getLogger("ndmpd.tls")
HANDSHAKE_TIMEOUT = 30.0
EXTENSION_CLASS = 0x2DD0         # a vendor class (>= 0x2000: messages from 0x2DD00000)
EXTENSION_VERSION = 1


@dataclass(frozen=True)
class DataTls:
    """How one session's data connections are secured: its own pair, and the peer it accepts."""

    certificate: Path
    key: Path
    peer: bytes                  # the other server's DER certificate
    inbound: Handoff | None = None   # where a receiving mover takes the stream (see relay)
    outbound: Handoff | None = None  # where a sending data service hands its stream over

    @property
    def peer_fingerprint(self) -> str:
        return fingerprint(self.peer)

    def receiving_into(self, handoff: Handoff) -> "DataTls":
        """The same TLS, with what the peer sends handed to a mover's ``handoff`` rather than
        passed through the plain socket (a backup's receiving side: two copies fewer)."""
        return replace(self, inbound=handoff)

    def sending_from(self, handoff: Handoff) -> "DataTls":
        """The same TLS, with what a data service hands to ``handoff`` sent to the peer
        (a backup's sending side: no socket pair; a restore still uses the plain socket)."""
        return replace(self, outbound=handoff)

    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """The (listener, connector) SSL contexts."""
        return (data_context(True, self.certificate, self.key, self.peer),
                data_context(False, self.certificate, self.key, self.peer))

    def accepted(self, sock: socket.socket) -> socket.socket:
        """A connection accepted by a data listener (TLS server side): the handshake and the
        pin are checked here, so a wrong peer is refused and the listener can wait on."""
        stream = self._stream(sock, server_side=True)
        self._handshake(stream)
        return relay(stream, _peer(sock), inbound=self.inbound, outbound=self.outbound)

    def connected(self, sock: socket.socket) -> socket.socket:
        """A connection this side opened (TLS client side). Its handshake runs on the relay's
        thread: the listening side may only accept once its job starts (DATA_LISTEN accepts at
        DATA_START_*, which the DMA sends after this side's DATA_CONNECT returned). Nothing
        written meanwhile leaves before the listener's certificate passed its pin."""
        stream = self._stream(sock, server_side=False)
        return relay(stream, _peer(sock), first=lambda: self._handshake(stream), inbound=self.inbound,
                     outbound=self.outbound)

    def _stream(self, sock: socket.socket, server_side: bool) -> TlsStream:
        try:
            listener, connector = self.contexts()
            return TlsStream(sock, listener if server_side else connector, server_side)
        except Exception as exc:           # a certificate that cannot be loaded (changed on disk)
            sock.close()
            raise HandshakeFailed(f"TLS set-up failed: {exc}") from None

    def _handshake(self, stream: TlsStream) -> None:
        try:
            stream.handshake(HANDSHAKE_TIMEOUT)
            check_pin(stream.tls, self.peer_fingerprint, "data connection peer")
        except Exception as exc:           # a pin mismatch is an SSLError, not a HandshakeFailed
            stream.sock.close()
            raise exc if isinstance(exc, HandshakeFailed) else HandshakeFailed(str(exc)) from None
        cipher = (stream.tls.cipher() or ("?",))[0]
        log.info("TLS data connection with %s (%s, %s, %s); records encrypted in user space, kernel TLS "
                 "not used: %s", _peer(stream.sock), stream.tls.version(), cipher, self.peer_fingerprint,
                 ktls.unavailable_reason() or "Python's ssl cannot hand a connection to it")


def _peer(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return "?"
