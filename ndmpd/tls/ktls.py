"""Whether this kernel could take over TLS records (kernel TLS, the ``tls`` TCP upper layer).

ndmpd's TLS data connections encrypt in user space (OpenSSL through a relay thread). With
kernel TLS the records could be encrypted by the kernel and a data connection could keep
``sendfile``'s zero-copy path; Python 3.11's ``ssl`` cannot hand a connection to it, and
many kernels are built without it. This probe says which, for the log and the benchmark.
"""

from __future__ import annotations

import errno
import socket

TCP_ULP = getattr(socket, "TCP_ULP", 31)        # linux/tcp.h


def unavailable_reason() -> str | None:
    """None when the kernel has the ``tls`` upper layer protocol, else why not. An unconnected
    TCP socket suffices: the kernel answers ENOENT for an unknown layer before it checks that
    the socket is connected (ENOTCONN: the layer exists)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return None
        if exc.errno == errno.ENOENT:
            return "the kernel has no tls module (CONFIG_TLS)"
        return f"TCP_ULP tls: {exc.strerror or exc}"
    return None
