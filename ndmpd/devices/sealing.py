"""Sealing record payloads: AES-256-GCM per chunk, bound to where the chunk belongs.

A layer over payloads, not over a file layout: a cartridge file (``cartridge.py``) or any
other store of records hands it a chunk and its place — the cartridge's identity, the tape
file number, the chunk's index in that file and whether it is the file's authenticated end —
and stores the envelope it gets back. See ``CARTRIDGE-FORMAT.md`` ("Encryption") for why:

- keys: the master key is never used directly. Every *write session* (one open of a
  cartridge for writing) draws a random 128-bit session id, and its chunks are encrypted
  under ``HKDF-SHA256(master, salt=cartridge id, info=INFO_CHUNK + session id)`` with a
  64-bit counter as the nonce. A (key, nonce) pair therefore never repeats: the counter
  never repeats inside a session, and two sessions (even on byte copies of one cartridge,
  or rewriting the same position) have different keys but with probability 2^-128.
- associated data: cartridge id, file number, chunk index and the last flag, so a chunk
  that is moved, swapped, copied from another cartridge or cut off fails authentication.
- a check value of the key in the cartridge header, so a wrong key is found at open.

Nothing here does I/O; a failed authentication raises :class:`SealBroken`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
CARTRIDGE_ID_SIZE = 16
SESSION_SIZE = 16
TAG_SIZE = 16
KEY_ID_SIZE = 8
CHECK_SIZE = 16
INFO_CHUNK = b"ndmpd cartridge chunk key v2\0"
INFO_CHECK = b"ndmpd cartridge key check v2\0"
ID_PREFIX = b"ndmpd key id v1\0"
_PREFIX = struct.Struct(f">{SESSION_SIZE}sQ")           # session id, counter
_NONCE = struct.Struct(">IQ")                            # 0, counter: 96 bits
_AAD = struct.Struct(f">4s{CARTRIDGE_ID_SIZE}sQQB")      # "NDVT", cartridge id, file, index, last
_COUNT = struct.Struct(">Q")
PREFIX_SIZE = _PREFIX.size
ENVELOPE_OVERHEAD = PREFIX_SIZE + TAG_SIZE               # bytes a sealed chunk adds to its plaintext
END_MARKER_SIZE = _COUNT.size + ENVELOPE_OVERHEAD        # a file's end: its chunk count, and a sealed empty chunk
MAX_SESSIONS_CACHED = 64


class SealBroken(Exception):
    """A sealed chunk does not authenticate at the place it was read from."""


def key_id(master: bytes) -> bytes:
    """A key's public name: a hash of it, so every copy of a key has the same id and the id
    reveals nothing about the key."""
    return hashlib.sha256(ID_PREFIX + master).digest()[:KEY_ID_SIZE]


def _derive(master: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(master)


def new_cartridge_id() -> bytes:
    return os.urandom(CARTRIDGE_ID_SIZE)


class CartridgeSeal:
    """The keys of one cartridge (master key + cartridge id): seals and opens its chunks."""

    def __init__(self, master: bytes, cartridge_id: bytes) -> None:
        if len(master) != KEY_SIZE or len(cartridge_id) != CARTRIDGE_ID_SIZE:
            raise ValueError("a 32-byte key and a 16-byte cartridge id")
        self._master = master
        self.cartridge_id = cartridge_id
        self._openers: dict[bytes, AESGCM] = {}
        self._session: bytes | None = None
        self._sealer: AESGCM | None = None
        self._counter = 0

    def check_value(self) -> bytes:
        """HMAC of a constant under a key derived for this cartridge: proves the key at open
        without decrypting data, and without revealing the key."""
        check_key = _derive(self._master, self.cartridge_id, INFO_CHECK)
        return hmac.new(check_key, b"ndmpd key check", hashlib.sha256).digest()[:CHECK_SIZE]

    def _aad(self, file: int, index: int, last: bool) -> bytes:
        return _AAD.pack(b"NDVT", self.cartridge_id, file, index, last)

    def _cipher(self, session: bytes) -> AESGCM:
        cipher = self._openers.get(session)
        if cipher is None:
            if len(self._openers) >= MAX_SESSIONS_CACHED:
                self._openers.clear()
            cipher = self._openers[session] = AESGCM(_derive(self._master, self.cartridge_id,
                                                             INFO_CHUNK + session))
        return cipher

    def _reserve(self, count: int) -> tuple[bytes, AESGCM, int]:
        """This write session's id, cipher and the first of ``count`` counters taken for the
        caller (taken before any is used: a failure half way never hands one out twice)."""
        if self._sealer is None:
            self._session = os.urandom(SESSION_SIZE)
            self._sealer = self._cipher(self._session)
            self._counter = 0
        assert self._session is not None
        counter = self._counter
        self._counter += count
        return self._session, self._sealer, counter

    def seal_into(self, file: int, index: int, last: bool, plain: bytes | memoryview,
                  out: memoryview) -> bytes:
        """Encrypt ``plain`` into ``out`` (``len(plain) + TAG_SIZE`` bytes: ciphertext and
        tag); returns the envelope's prefix, to be stored in front of them."""
        session, cipher, counter = self._reserve(1)
        cipher.encrypt_into(_NONCE.pack(0, counter), plain, self._aad(file, index, last), out)
        return _PREFIX.pack(session, counter)

    def seal_records_into(self, file: int, first: int, data: bytes | memoryview, size: int,
                          out: bytearray | memoryview) -> list[tuple[bytes, memoryview]]:
        """Seal the ``len(data) // size`` records in ``data`` (chunks ``first``, ``first + 1``,
        ... of ``file``, none the last) into ``out``, ``size + TAG_SIZE`` bytes each; returns
        each one's envelope prefix and ciphertext-and-tag. The mover's batches: seal_into's
        lookups done once per batch (with 10 KiB records they cost as much as the AES)."""
        count = len(data) // size
        session, cipher, counter = self._reserve(count)
        encrypt, nonce, aad, prefix = cipher.encrypt_into, _NONCE.pack, _AAD.pack, _PREFIX.pack
        cartridge_id, stride, source, target = self.cartridge_id, size + TAG_SIZE, memoryview(data), memoryview(out)
        sealed = []
        for i in range(count):
            slot = target[i * stride:(i + 1) * stride]
            encrypt(nonce(0, counter + i), source[i * size:(i + 1) * size],
                    aad(b"NDVT", cartridge_id, file, first + i, False), slot)
            sealed.append((prefix(session, counter + i), slot))
        return sealed

    def seal(self, file: int, index: int, last: bool, plain: bytes | memoryview = b"") -> bytes:
        """The whole envelope of one chunk (for small ones: end markers, single records)."""
        body = bytearray(len(plain) + TAG_SIZE)
        prefix = self.seal_into(file, index, last, plain, memoryview(body))
        return prefix + bytes(body)

    def open_into(self, file: int, index: int, last: bool, envelope: bytes | memoryview,
                  out: memoryview) -> int:
        """Authenticate and decrypt ``envelope`` into ``out`` (at least its plaintext's size);
        returns the plaintext's size. On failure ``out`` is cleared: no unauthenticated byte
        is left where the caller might use it."""
        size = len(envelope) - ENVELOPE_OVERHEAD
        if size < 0:
            raise SealBroken("sealed chunk is shorter than its envelope")
        session, counter = _PREFIX.unpack_from(envelope)
        target = out[:size]
        try:
            self._cipher(bytes(session)).decrypt_into(_NONCE.pack(0, counter), memoryview(envelope)[PREFIX_SIZE:],
                                                      self._aad(file, index, last), target)
        except InvalidTag:
            target[:] = bytes(size)
            raise SealBroken(f"file {file} chunk {index}{' (end marker)' if last else ''} "
                             "fails authentication") from None
        return size

    def seal_end(self, file: int, count: int) -> bytes:
        """The end marker of a file of ``count`` chunks: the count in clear, then an empty chunk
        sealed as chunk ``count``, flagged last (so the count is authenticated)."""
        return _COUNT.pack(count) + self.seal(file, count, True)

    def open_end(self, file: int, marker: bytes | memoryview) -> int:
        """The chunk count an end marker of ``file`` authenticates (SealBroken if it does not)."""
        if len(marker) != END_MARKER_SIZE:
            raise SealBroken(f"file {file}: end marker of {len(marker)} bytes")
        (count,) = _COUNT.unpack_from(marker)
        self.open(file, count, True, memoryview(marker)[_COUNT.size:])
        return count

    def open(self, file: int, index: int, last: bool, envelope: bytes | memoryview) -> bytes:
        out = bytearray(max(0, len(envelope) - ENVELOPE_OVERHEAD))
        self.open_into(file, index, last, envelope, memoryview(out))
        return bytes(out)
