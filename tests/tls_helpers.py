"""Certificates and TLS fixtures for the TLS tests: pairs made with ndmpd's own code, a CA, a
raw TLS server that records every byte it receives after the handshake."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

from ndmpd.config import Config, build
from ndmpd.tls import certs


def pair(directory: Path, name: str = "ndmpd-test", hosts: tuple[str, ...] = ("127.0.0.1",)) -> certs.CertificatePair:
    return certs.create(directory, name, 2, hosts)


def server_config(tmp_path: Path, cert: Path | None = None, key: Path | None = None, **extra) -> Config:
    """user ndmp/secret, one virtual tape; with ``cert``, a TLS listener on 127.0.0.1:0 too."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    server = {"listen": ["127.0.0.1:0"], "state_dir": str(state), "auth": ["md5", "text"], **extra}
    if cert is not None:
        server.update(tls_listen="127.0.0.1:0", tls_certificate=str(cert), tls_key=str(key))
    data = {"server": server, "user": [{"name": "ndmp", "password": "secret"}],
            "tape": [{"name": "vtape0", "path": str(tmp_path / "c0.img"), "capacity": "1GiB"}]}
    return build(data, "<test>", tmp_path)


def ca_signed(directory: Path, san_ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """(ca.pem, server.crt, server.key): a CA and a server certificate it signed for ``san_ip``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "srv")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def greeting() -> bytes:
    """What an NDMP server says first (NOTIFY_CONNECTION_STATUS CONNECTED, v4), record-marked."""
    from ndmpd.wire import REQUEST, protocol
    from ndmpd.wire.message import Header
    from ndmpd.wire.records import frame
    p = protocol(4)
    code = p.const.NOTIFY_CONNECTION_STATUS
    body = p.types.notify_connection_status_post(reason=p.const.CONNECTED, protocol_version=4, text_reason="hi")
    return frame(Header(1, int(time.time()), REQUEST, code, 0, 0).pack() + p.encode_body(code, REQUEST, body))


class RecordingTlsServer:
    """Accepts one TLS connection, greets like an NDMP server (so a DMA would answer with
    CONNECT_OPEN) and records every application byte the client sends."""

    def __init__(self, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.handshake_done = threading.Event()
        self.finished = threading.Event()
        self._context = context
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            with self._context.wrap_socket(raw, server_side=True) as tls:
                self.handshake_done.set()
                tls.settimeout(10)
                tls.sendall(greeting())
                while True:
                    data = tls.recv(65536)
                    if not data:
                        break
                    self.received += data
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.finished.set()

    def close(self) -> None:
        self.listener.close()
        self._thread.join(10)


def _accept_and_connect(listener: socket.socket, port: int) -> tuple[socket.socket, socket.socket] | None:
    """A proxy's two ends: the peer it accepts and its own connection to ``port``; None if
    either fails (the accepted one is then closed)."""
    try:
        inbound, _ = listener.accept()
    except OSError:
        return None
    try:
        return inbound, socket.create_connection(("127.0.0.1", port), timeout=20)
    except OSError:
        inbound.close()
        return None


class TamperingProxy:
    """A man in the middle on loopback: forwards one connection to ``port`` and flips one
    bit of the byte at ``flip_at`` of what the connecting side sends (well after the handshake);
    with ``cut_at``, forwards only that many of its bytes and then ends the TCP connection
    cleanly (FIN both ways), as an attacker truncating the stream would."""

    def __init__(self, port: int, flip_at: int = -1, cut_at: int | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self._target, self._flip_at, self._cut_at = port, flip_at, cut_at
        threading.Thread(target=self._forward, daemon=True).start()

    def _forward(self) -> None:
        pair = _accept_and_connect(self.listener, self._target)
        if pair is None:
            return
        inbound, outbound = pair
        back = threading.Thread(target=self._pump, args=(outbound, inbound, False), daemon=True)
        back.start()
        self._pump(inbound, outbound, True)
        back.join(10)

    def _pump(self, src: socket.socket, dst: socket.socket, tamper: bool) -> None:
        seen, flip_at = 0, self._flip_at
        try:
            while data := src.recv(65536):
                if tamper and seen <= flip_at < seen + len(data):
                    data = bytearray(data)
                    data[flip_at - seen] ^= 0x01
                if tamper and self._cut_at is not None and seen + len(data) >= self._cut_at:
                    dst.sendall(data[:self._cut_at - seen])
                    break
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


class CuttingProxy:
    """A man in the middle on loopback that truncates a TLS stream: forwards one connection to
    ``port`` whole, but of what the listening side sends (``direction="back"``, a mover serving
    a restore) or the connecting side sends (``"forth"``, a copy's source) only ``cut_at``
    bytes, at the first TLS record boundary from there on with ``whole_records``; then it ends
    both TCP connections without close_notify, with a FIN or (``reset``) an RST. ``cut_at``
    None forwards everything. ``cut`` is set once it cut."""

    def __init__(self, port: int, cut_at: int | None, direction: str = "back", whole_records: bool = False,
                 reset: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self._target, self._cut_at, self._direction = port, cut_at, direction
        self._whole_records, self._reset = whole_records, reset
        self._thread = threading.Thread(target=self._forward, daemon=True)
        self._thread.start()

    def _forward(self) -> None:
        ends = _accept_and_connect(self.listener, self._target)
        if ends is None:
            return
        inbound, outbound = ends
        for s in ends:
            s.settimeout(120)                 # a quiet connection (a paused mover) is no end
        forth = threading.Thread(target=self._pump, args=(inbound, outbound, self._direction == "forth", ends),
                                 daemon=True)
        forth.start()
        self._pump(outbound, inbound, self._direction == "back", ends)
        forth.join(20)
        for s in ends:
            s.close()

    def _pump(self, src: socket.socket, dst: socket.socket, cutting: bool, ends) -> None:
        limit = self._cut_at if cutting else None
        sent, held = 0, bytearray()
        try:
            while not self.cut.is_set() and (data := src.recv(65536)):
                if limit is None:
                    dst.sendall(data)
                    continue
                held += data
                take = self._forwardable(held, limit - sent)
                dst.sendall(held[:take])
                sent += take
                del held[:take]
                if sent >= limit:
                    self._end(ends)
                    return
        except OSError:
            pass
        if not self.cut.is_set():            # the other side ended first: pass that end on
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _forwardable(self, held: bytearray, left: int) -> int:
        """How much of ``held`` goes on: up to ``left`` bytes, or whole TLS records until at
        least ``left`` went."""
        if not self._whole_records:
            return min(len(held), left)
        at = 0
        while at < left and at + 5 <= len(held):
            end = at + 5 + int.from_bytes(held[at + 3:at + 5], "big")
            if end > len(held):
                break
            at = end
        return at

    def _end(self, ends) -> None:
        """FIN both ways now; or, for an RST, no linger and the read side shut (which wakes the
        other pump), the close that resets coming once both pumps are done."""
        self.cut.set()
        for s in ends:
            try:
                if self._reset:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RD if self._reset else socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self._thread.join(20)
