"""TCP options for the control and data connections, where the kernel's defaults can cost 40 ms a message.

An option the platform lacks (``TCP_QUICKACK`` is Linux-only) or a socket refuses (reset or
closed meanwhile, not TCP) is skipped, never an error: the connection's own I/O reports what
is wrong with it.
"""

from __future__ import annotations

import socket
from typing import Any

QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def send_without_delay(sock: Any) -> None:
    """Replies leave at once (no Nagle): each is one write the peer waits for."""
    _set(sock, socket.TCP_NODELAY)


def acknowledge_now(sock: Any) -> None:
    """Acknowledge what was just read now, not at the delayed-ACK timer (40 ms on Linux).

    A peer without TCP_NODELAY that sends one message in several writes (Sun RPC's xdrrec
    sends 4000-byte fragments) holds each further piece under Nagle until its first is
    acknowledged; once we have replied, Linux treats the connection as interactive and
    delays that ACK, so every message stalls. ``TCP_QUICKACK`` sends the pending ACK at
    once; Linux clears it again by itself (the next reply makes the connection interactive
    again), so the caller sets it after each read that leaves a message incomplete. Setting
    it once, or after sending a reply, does not help (measured).
    """
    if QUICKACK is not None:
        _set(sock, QUICKACK)


def _set(sock: Any, option: int) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
    except OSError:                     # closed or reset meanwhile, or not TCP
        pass
