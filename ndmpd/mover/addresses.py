"""Data connections: NDMP addresses to sockets and back, listening and connecting.

NDMP carries IPv4 addresses only. When the control connection is IPv6 a listener binds
the same IPv6 address and advertises it in the v4 address's ``addr_env`` as
``AF=INET6``/``ADDR=<address>`` (with ``ip_addr`` 0); ndmpd's own connectors understand it.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import NdmpError
from ..tcp import send_without_delay
from ..wire import C, T

log = logging.getLogger("ndmpd.mover")
CONNECT_TIMEOUT = 30.0
ACCEPT_POLL = 0.25          # seconds between checks for an abort while waiting for the peer


@dataclass(frozen=True)
class Endpoint:
    """Where a TCP data connection goes: host (IPv4 or IPv6 text) and port."""

    host: str
    port: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


def listen_host(control_local_host: str) -> str:
    """The address a data listener binds: the control connection's own local address."""
    try:
        ip = ipaddress.ip_address(control_local_host.split("%")[0])
    except ValueError:
        return "127.0.0.1"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def open_listener(host: str) -> tuple[socket.socket, Endpoint]:
    """A listening TCP socket on ``host`` with a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1)
    return sock, Endpoint(host, sock.getsockname()[1])


def open_data_listener(control_local_host: str, version: int) -> tuple[socket.socket, object]:
    """A TCP data listener on the control connection's address, and the NDMP address to announce."""
    host = listen_host(control_local_host)
    if ":" in host and version < 4:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, "an IPv6 data connection needs NDMPv4")
    listener, endpoint = open_listener(host)
    return listener, to_ndmp(endpoint)


class Securing(Protocol):
    """Turns a connected TCP socket into the data connection (TLS: see ndmpd/tls/data.py)."""

    def accepted(self, sock: socket.socket) -> socket.socket: ...

    def connected(self, sock: socket.socket) -> socket.socket: ...


def accept(listener: socket.socket, stopped: Callable[[], bool], poll: float = ACCEPT_POLL,
           secure: Securing | None = None) -> socket.socket | None:
    """The peer's connection, tuned; None once ``stopped()`` (checked every ``poll`` seconds).
    With ``secure``, a connection that fails its TLS handshake (not the pinned peer) is
    refused and the listener waits on for the right one."""
    while not stopped():
        ready, _, _ = select.select([listener], [], [], poll)
        if ready:
            sock, peer = listener.accept()
            tune(sock)
            if secure is None:
                return sock
            try:
                return secure.accepted(sock)
            except ConnectionError as exc:
                log.warning("refused a data connection from %s: %s", peer[0], exc)
    return None


def to_ndmp(endpoint: Endpoint | None) -> object:
    """The internal (v4) ``addr`` for an endpoint; None means LOCAL."""
    if endpoint is None:
        return T.addr(addr_type=C.ADDR_LOCAL)
    if endpoint.family == socket.AF_INET:
        ip_addr = int(ipaddress.IPv4Address(endpoint.host))
        env = []
    else:
        ip_addr = 0
        env = [T.pval(name="AF", value="INET6"), T.pval(name="ADDR", value=endpoint.host)]
    return T.addr(addr_type=C.ADDR_TCP, tcp_addr=[T.tcp_addr(ip_addr=ip_addr, port=endpoint.port, addr_env=env)])


def from_ndmp(addr: object) -> list[Endpoint]:
    """The TCP endpoints an ``addr`` offers, in order (ILLEGAL_ARGS when there are none)."""
    if addr.addr_type != C.ADDR_TCP:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"address type {addr.addr_type} is not TCP")
    endpoints = []
    for entry in addr.tcp_addr or []:
        env = {p.name: p.value for p in entry.addr_env or []}
        host = env.get("ADDR") if env.get("AF") == "INET6" else str(ipaddress.IPv4Address(entry.ip_addr))
        if host and 0 < entry.port < 65536:
            endpoints.append(Endpoint(host, entry.port))
    if not endpoints:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, "no usable TCP address")
    return endpoints


def connect(endpoints: list[Endpoint], timeout: float = CONNECT_TIMEOUT,
            secure: Securing | None = None) -> socket.socket:
    """Connect to the first endpoint that answers (and, with ``secure``, passes its TLS
    handshake); CONNECT_ERR when none does."""
    errors = []
    for ep in endpoints:
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
            sock.settimeout(None)
            tune(sock)
            return sock if secure is None else secure.connected(sock)
        except OSError as exc:          # a failed TLS handshake is a ConnectionError
            errors.append(f"{ep.host}:{ep.port}: {exc.strerror or exc}")
    raise NdmpError(C.CONNECT_ERR, "; ".join(errors))


def tune(sock: socket.socket) -> None:
    """Large socket buffers for bulk data, and no Nagle: data goes out in whole records or
    1 MiB buffers, so Nagle only holds back the tail of each MOVER_READ's bytes until the
    peer's delayed ACK (a direct-access restore waited ~10 ms per read on loopback)."""
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass
    send_without_delay(sock)
