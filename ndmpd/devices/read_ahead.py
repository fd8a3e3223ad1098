"""The next record of a sealed cartridge, opened by a worker thread while the mover sends this one.

Why: opening a sealed record (``preadv`` of its envelope, AES-GCM authentication and
decryption) and sending the one before (``sendall``) both release the GIL; one after the
other in the mover's thread their times add up. Reading ahead by one record makes a sealed
restore cost about the longer of the two, plus one copy of the record.

It holds one record, keyed by where it is (offset, tape file, chunk index): a read anywhere
else drops it, and so must anything that changes the cartridge (:meth:`ReadAhead.drop` waits
for the worker first). A record that fails to open is not an error until it is read: its
error is raised then, at that record, and none of its bytes is kept.
"""

from __future__ import annotations

from collections.abc import Callable

from .background_writer import BackgroundWriter
from .cartridge import Cartridge, Entry

Opener = Callable[[Cartridge, Entry, int, int, memoryview], int]


class ReadAhead:
    """Opens one record ahead with ``open_into`` (which must not share buffers or ciphers with
    the reader's own opener: both may run at once)."""

    def __init__(self, name: str, open_into: Opener) -> None:
        self._worker = BackgroundWriter(name, 1)
        self._open_into = open_into
        self._key: tuple[int, int, int] | None = None     # what is being (or was) opened ahead
        self._entry: Entry | None = None
        self._got = 0
        self._error: Exception | None = None
        self._buffer = bytearray()

    def start(self, cart: Cartridge, offset: int, file: int, index: int) -> None:
        """Open the entry at ``offset`` (chunk ``index`` of tape file ``file``) ahead, if it is a record."""
        self.drop()
        if offset >= cart.eod:
            return
        self._key = (offset, file, index)
        self._worker.submit(lambda: self._open(cart, offset, file, index))

    def _open(self, cart: Cartridge, offset: int, file: int, index: int) -> None:
        try:
            entry = cart.entry_at(offset)
            if entry is None or entry.is_filemark:
                return
            if len(self._buffer) < entry.length:
                self._buffer = bytearray(entry.length)
            self._got = self._open_into(cart, entry, file, index, memoryview(self._buffer))
            self._entry = entry
        except Exception as exc:            # the reader's, if it reads this record
            self._error = exc

    def take(self, entry: Entry, file: int, index: int, buffer: memoryview) -> int | None:
        """The record opened ahead copied into ``buffer``, when it is ``entry`` (chunk ``index``
        of ``file``) and fits; raises its error if opening it failed; None: the caller opens
        it itself."""
        if self._key is None:
            return None
        self._worker.drain()
        key, opened, got, error = self._key, self._entry, self._got, self._error
        self._key, self._entry, self._error = None, None, None
        if key != (entry.offset, file, index):
            return None
        if error is not None:
            raise error
        if opened != entry or len(buffer) < got:
            return None
        buffer[:got] = memoryview(self._buffer)[:got]
        return got

    def drop(self) -> None:
        """Wait for a record being opened ahead and forget it."""
        if self._key is not None:
            self._worker.drain()
            self._key, self._entry, self._error = None, None, None

    def close(self) -> None:
        self.drop()
        self._worker.close()
