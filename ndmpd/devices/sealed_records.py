"""Sealed records on a cartridge file: which key a drive seals with, and the record-level
calls the virtual drive and ``ndmpd tape`` make (the cipher itself is ``sealing.py``).

A sealed cartridge's records each carry one envelope (``sealing.ENVELOPE_OVERHEAD`` bytes
more than the record), and each filemark the end marker of the file it closes: a sealed
empty chunk whose index is the file's record count, flagged last.
"""

from __future__ import annotations

import dataclasses

from ..keystore import Key, Keystore, KeystoreError
from .cartridge import WRITE_DEPTH, Cartridge, Entry, SealInfo
from .sealing import ENVELOPE_OVERHEAD, TAG_SIZE, CartridgeSeal, SealBroken, new_cartridge_id
from .tape import MediaError


class KeyUnavailable(MediaError):
    """The key a cartridge needs (or a drive seals with) is missing or wrong: TAPE_OPEN fails."""


class RecordSeal:
    """One open sealed cartridge's records: seal what is written, open what is read."""

    overhead = ENVELOPE_OVERHEAD

    def __init__(self, seal: CartridgeSeal, where: str) -> None:
        self._seal = seal
        self.where = where
        self._out = bytearray()          # ciphertexts of a record written at once (write_record)
        self._ring = [bytearray() for _ in range(WRITE_DEPTH + 1)]   # of batches written in the background
        self._turn = 0
        self._scratch = bytearray()      # an envelope read back

    def _broken(self, exc: SealBroken, file: int, index: int) -> MediaError:
        return MediaError(f"{self.where}: tape file {file} record {index}: {exc}; the cartridge was "
                          "tampered with or damaged (no data of this record is returned)")

    def seal_records(self, file: int, first: int, data: bytes | memoryview, size: int
                     ) -> list[tuple[bytes, memoryview]]:
        """Envelopes (prefix, ciphertext and tag) of the ``len(data) // size`` records in
        ``data``, the first being record ``first`` of tape file ``file``."""
        if len(self._out) < len(data) // size * (size + TAG_SIZE):
            self._out = bytearray(len(data) // size * (size + TAG_SIZE))
        return self._seal.seal_records_into(file, first, data, size, self._out)


    def write_records(self, cart: Cartridge, offset: int, file: int, first: int, data: memoryview,
                      size: int) -> int:
        """Seal the records of a batch and hand them to the cartridge's background writer;
        returns the new end of data. The mover thread seals (and receives) the next batch while
        this one is written: both release the GIL, so a sealed backup takes about the longer
        of the two, not their sum (per record hand-offs cost more than that saves: batches).
        The ciphertexts go into the next of ``WRITE_DEPTH + 1`` buffers in turn: the write that
        used it last was ``WRITE_DEPTH + 1`` writes ago and has finished (``write_parted_records``)."""
        need = len(data) // size * (size + TAG_SIZE)
        if len(self._ring[self._turn]) < need:
            self._ring[self._turn] = bytearray(need)      # the old one stays alive while in flight
        out = self._ring[self._turn]
        self._turn = (self._turn + 1) % len(self._ring)
        return cart.write_parted_records(offset, self._seal.seal_records_into(file, first, data, size, out),
                                         background=True)

    def end_marker(self, file: int, records: int) -> bytes:
        return self._seal.seal_end(file, records)

    def _envelope(self, cart: Cartridge, entry: Entry) -> memoryview:
        if len(self._scratch) < entry.length:
            self._scratch = bytearray(entry.length)
        view = memoryview(self._scratch)[:entry.length]
        cart.read_payload_into(entry, view)
        return view

    def open_record_into(self, cart: Cartridge, entry: Entry, file: int, index: int, buffer: memoryview) -> int:
        """Record ``index`` of ``file`` into ``buffer``; as a plain read, a longer record is cut
        to the buffer (after the whole record authenticated)."""
        envelope = self._envelope(cart, entry)
        size = entry.length - ENVELOPE_OVERHEAD
        try:
            if len(buffer) >= size:
                return self._seal.open_into(file, index, False, envelope, buffer)
            buffer[:] = self._seal.open(file, index, False, envelope)[:len(buffer)]
            return len(buffer)
        except SealBroken as exc:
            raise self._broken(exc, file, index) from None

    def open_record(self, cart: Cartridge, entry: Entry, file: int, index: int, limit: int) -> bytes:
        try:
            return self._seal.open(file, index, False, self._envelope(cart, entry))[:limit]
        except SealBroken as exc:
            raise self._broken(exc, file, index) from None

    def records_before(self, cart: Cartridge, entry: Entry, file: int) -> int:
        """The record count of ``file`` that the filemark closing it authenticates (the head
        moved back over it: the chunk index there is known without counting)."""
        try:
            return self._seal.open_end(file, self._envelope(cart, entry))
        except SealBroken as exc:
            raise MediaError(f"{self.where}: the filemark closing tape file {file} fails authentication "
                             f"({exc}): the cartridge was tampered with or damaged") from None

    def check_end(self, cart: Cartridge, entry: Entry, file: int, records: int) -> None:
        """The filemark closing ``file`` carries its end marker for exactly ``records`` records."""
        if self.records_before(cart, entry, file) != records:
            raise MediaError(f"{self.where}: the filemark closing tape file {file} does not authenticate as "
                             f"the end of {records} records: records were removed, added or moved")


class CartridgeKeys:
    """A drive's keys: the keystore that opens sealed cartridges, and the key (by name) it
    seals with — None: it writes plain cartridges."""

    def __init__(self, drive: str, keystore: Keystore | None = None, key_name: str | None = None) -> None:
        self.drive = drive
        self.keystore = keystore
        self.key_name = key_name

    @property
    def encrypting(self) -> bool:
        return self.key_name is not None

    def writing_key(self) -> Key | None:
        """The current version of the drive's key (KeyUnavailable when it cannot be read)."""
        if self.key_name is None:
            return None
        if self.keystore is None:
            raise KeyUnavailable(f"{self.drive}: encryption key {self.key_name}: no keystore configured")
        try:
            return self.keystore.current(self.key_name)
        except KeystoreError as exc:
            raise KeyUnavailable(f"{self.drive}: encryption {exc}") from None

    def seal_for(self, cart: Cartridge) -> RecordSeal | None:
        """The opened cartridge's seal (None: plain); KeyUnavailable names the key it needs."""
        info = cart.superblock.seal
        if info is None:
            return None
        needed = f"key {info.key_name or '?'} (id {info.key_id.hex()})"
        key = self.keystore.by_id(info.key_id) if self.keystore is not None else None
        if key is None:
            namesakes = self._ids_named(info.key_name)
            if namesakes:
                raise KeyUnavailable(f"{self.drive}: cartridge {cart.path} is encrypted with {needed}, but key "
                                     f"{info.key_name} here is id {', '.join(namesakes)} (wrong key: a different "
                                     "key under that name; restore the original key file to read it)")
            unreadable = self.keystore.unreadable() if self.keystore is not None else []
            raise KeyUnavailable(f"{self.drive}: cartridge {cart.path} is encrypted with {needed}, which this "
                                 "server does not keep (missing key; restore it to the keystore to read it)"
                                 + "".join(f"; {problem}" for problem in unreadable))
        seal = CartridgeSeal(key.material, info.cartridge_id)
        if seal.check_value() != info.key_check:
            raise KeyUnavailable(f"{self.drive}: cartridge {cart.path} needs {needed}: key {key.name} "
                                 f"version {key.version} ({key.path}) has that id but fails the key check "
                                 "(wrong key)")
        return RecordSeal(seal, f"{self.drive}: {cart.path}")

    def _ids_named(self, name: str) -> list[str]:
        """The ids of the kept versions of key ``name`` (for the message about a wrong key)."""
        if self.keystore is None or not name:
            return []
        try:
            return [key.id_hex for key in self.keystore.versions(name)]
        except KeystoreError:
            return []

    def reformat(self, cart: Cartridge) -> RecordSeal | None:
        """A write at the beginning of tape: the cartridge becomes sealed under the drive's
        current key with a new cartridge id, or plain when the drive does not encrypt."""
        key = self.writing_key()
        sb = cart.superblock
        if key is None:
            if sb.seal is not None:
                cart.replace_superblock(dataclasses.replace(sb, seal=None))
            return None
        seal = CartridgeSeal(key.material, new_cartridge_id())
        info = SealInfo(seal.cartridge_id, key.id, seal.check_value(), key.name)
        cart.replace_superblock(dataclasses.replace(sb, seal=info))
        return RecordSeal(seal, f"{self.drive}: {cart.path}")
