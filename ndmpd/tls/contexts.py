"""The SSL contexts ndmpd's programs use: the control listener, the DMA, and data connections.

TLS 1.2 at least. A pinned peer is checked by the SHA-256 of its DER certificate, after the
handshake and before a single application byte is sent (:func:`check_pin`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .certs import CertificateError, fingerprint, peer_der


class PinMismatch(ConnectionError):
    """The peer's certificate is not the pinned one: nothing was sent to it."""


def _base(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def listener_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """ndmpd's control listener: presents its certificate; DMAs authenticate with NDMP."""
    context = _base(ssl.PROTOCOL_TLS_SERVER)
    context.num_tickets = 0                     # no resumption: nothing to gain on a long control connection
    context.load_cert_chain(certificate, key)
    return context


def dma_context(ca: Path | None) -> ssl.SSLContext:
    """The DMA's: verify the chain to ``ca`` and the host name, or (``ca`` None) verify nothing
    here and compare a pinned fingerprint with :func:`check_pin` instead."""
    context = _base(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"ca: cannot use {ca}: {getattr(exc, 'strerror', None) or exc}") from None
    return context


def data_context(server_side: bool, certificate: Path, key: Path, peer: bytes) -> ssl.SSLContext:
    """A data connection between two ndmpd servers: each presents its own certificate and
    accepts exactly ``peer`` (the DER certificate the DMA saw on the other server's control
    connection). The listener is the TLS server and requires the connector's certificate,
    so nobody else can connect to a listening mover or data service and take the image."""
    context = _base(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    if server_side:
        context.num_tickets = 0
    context.check_hostname = False              # the certificate itself is pinned: names do not matter
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN    # the pinned leaf is the trust anchor
    context.load_verify_locations(cadata=peer)
    context.load_cert_chain(certificate, key)
    context.minimum_version = ssl.TLSVersion.TLSv1_3    # only ever between two ndmpd servers
    context.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)  # a TCP end without close_notify is an error
    return context


def check_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: str, who: str) -> None:
    """Raise :class:`PinMismatch` unless the peer's certificate has fingerprint ``expected``."""
    got = fingerprint(peer_der(ssl_object)) if peer_der(ssl_object) else "no certificate"
    if got != expected:
        raise PinMismatch(f"{who}: certificate fingerprint {got} is not the pinned {expected}; "
                          "nothing was sent")
