"""The kernel TLS probe says what a connected socket would get: ndmpd logs it with every TLS
data connection, so an admin knows where the records are encrypted."""

from __future__ import annotations

import socket

from ndmpd.tls import ktls


def test_the_probe_agrees_with_a_connected_socket():
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as sock:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, ktls.TCP_ULP, b"tls")
            attached = True
        except OSError:
            attached = False
        listener.accept()[0].close()
    reason = ktls.unavailable_reason()
    assert (reason is None) == attached, reason
    assert reason is None or reason.strip()
