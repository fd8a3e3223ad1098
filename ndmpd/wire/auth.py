"""NDMP authentication arithmetic both roles need: the server checks, the DMA answers."""

from __future__ import annotations

import hashlib

MD5_CHALLENGE_SIZE = 64


def md5_digest(password: bytes, challenge: bytes) -> bytes:
    """The NDMP MD5 digest: MD5(P ‖ zeros(64 − 2·len(P)) ‖ challenge ‖ P), P cut to 32 bytes."""
    if len(challenge) != MD5_CHALLENGE_SIZE:
        raise ValueError("NDMP MD5 challenge must be 64 bytes")
    p = password[:32]
    return hashlib.md5(p + bytes(64 - 2 * len(p)) + challenge + p).digest()
