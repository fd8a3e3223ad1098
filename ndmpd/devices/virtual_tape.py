"""A virtual tape drive: Linux-st position semantics over a cartridge file."""

from __future__ import annotations

import logging

from . import cartridge
from .medium import Location
from .cartridge import DATA_START, KIND_FILEMARK, KIND_RECORD, OVERHEAD, Cartridge
from .sealed_records import CartridgeKeys, RecordSeal
from .tape import (EarlyWarning, EndOfData, FilemarkReached, MediaError, NoMedium, NotWritable, PhysicalEnd,
                   SpaceResult, Stop, TapeDevice, TapeStatus, WriteProtected)

log = logging.getLogger("ndmpd.tape")


class VirtualTape(TapeDevice):
    """A drive holding one cartridge file; a blank cartridge is created on first open.

    The position survives close/open (a non-rewinding drive) for as long as the same
    cartridge stays loaded. With ``keys`` naming an encryption key, what this drive writes
    from the beginning of tape is sealed (``sealed_records.py``); a sealed cartridge reads
    in any drive whose keystore keeps its key.
    """

    def __init__(self, name: str, path: Location | None, capacity: int, early_warning: int | None = None,
                 keys: CartridgeKeys | None = None) -> None:
        self.name = name
        self.path = path
        self.home = path                # the cartridge a standalone drive gets back after an unload
        self.capacity = capacity
        self.early_warning = early_warning
        self.keys = keys or CartridgeKeys(name)
        self._cart: Cartridge | None = None
        self._seal: RecordSeal | None = None  # the open cartridge's, when it is sealed
        self._written_from: int | None = None  # lowest offset written since the cartridge was opened
        self._open_mode: bool | None = None   # open(write=...) by a session, until close()
        self._rewound()

    def _rewound(self) -> None:
        self.offset = DATA_START
        self.file_num = 0
        self.blockno: int | None = 0
        self._chunk: int | None = 0    # records before the head in its tape file (None: not counted yet)
        self._last_was_write = False
        self._warned = False
        self._full = False          # a record met the physical end here: see PhysicalEnd

    # ------------------------------------------------------------ medium

    @property
    def loaded(self) -> bool:
        return self.path is not None

    def load(self, path: Location) -> None:
        """Insert the cartridge at ``path`` (a library's MOVE MEDIUM, or an operator). A session
        that has the drive open keeps it open and reaches the new cartridge, as with st."""
        self._release_cartridge()
        self.path = path
        self._rewound()

    def unload(self) -> None:
        self._release_cartridge()
        self.path = None
        self._rewound()

    def open(self, write: bool) -> None:
        if write:
            self.keys.writing_key()           # a missing key fails TAPE_OPEN, not the first write
        self._open_cartridge(write)
        self._open_mode = write
        self._warned = False                # a new opener is told of the zone again

    def _open_cartridge(self, write: bool) -> None:
        if self.path is None:
            raise NoMedium(f"{self.name}: no cartridge loaded")
        if not self.path.exists():
            cartridge.create(self.path, self.capacity, self.early_warning)
            log.info("%s: created blank cartridge %s (%d bytes)", self.name, self.path, self.capacity)
        try:
            cart = Cartridge(self.path, writable=write)
        except PermissionError:
            raise WriteProtected(f"{self.name}: {self.path} is not writable") from None
        except OSError as exc:
            raise MediaError(f"{self.name}: {self.path}: {exc.strerror}") from None
        if cart.torn:
            log.warning("%s: %s: end of data recovered at offset %d (file is %d bytes); the bytes after it "
                        "are not a complete entry", self.name, self.path, cart.eod, cart.eod + cart.torn)
        if write and cart.superblock.write_protected:
            cart.close()
            raise WriteProtected(f"{self.name}: cartridge {self.path} is write-protected")
        try:
            self._seal = self.keys.seal_for(cart)
        except MediaError as exc:
            cart.close()
            log.warning("%s", exc)
            raise
        self._cart = cart
        self._written_from = None
        if self.offset > cart.eod:          # changed behind our back: start over
            self._rewound()

    def close(self) -> None:
        self._open_mode = None
        self._release_cartridge()

    def _release_cartridge(self) -> None:
        if self._cart is None:
            return
        try:
            if self._last_was_write:
                self.write_filemarks(1)
        except PhysicalEnd:             # not even a filemark fits: the file ends at end of data
            log.warning("%s: no room for the closing filemark on %s", self.name, self.path)
        except MediaError as exc:       # the medium failed (its store is gone): the job already said so
            log.warning("%s: closing tape file not written: %s", self.name, exc)
        finally:
            self._cart.close()
            self._cart = self._seal = None
            self._last_was_write = False

    @property
    def cart(self) -> Cartridge:
        if self._cart is None:
            if self._open_mode is None or self.path is None:
                raise NoMedium(f"{self.name}: {'no cartridge loaded' if self._open_mode is not None else 'not open'}")
            try:
                self._open_cartridge(self._open_mode)    # a library loaded a cartridge meanwhile
            except WriteProtected:
                if not self._open_mode:
                    raise
                self._open_cartridge(False)              # as st: it reads; writes are refused
        assert self._cart is not None
        return self._cart

    # ------------------------------------------------------------ reading

    def read_record(self, limit: int) -> bytes:
        self._last_was_write = False
        entry = self._entry_or_end(self.cart.entry_at(self.offset))
        if self._seal is not None:
            data = self._seal.open_record(self.cart, entry, self.file_num, self._chunk_index(), limit)
        else:
            data = self.cart.read_payload(entry, limit)
        self._forward_over(entry)
        return data

    def read_record_into(self, buffer: memoryview) -> int:
        self._last_was_write = False
        if self._seal is not None:
            entry = self._entry_or_end(self.cart.entry_at(self.offset))
            got = self._seal.open_record_into(self.cart, entry, self.file_num, self._chunk_index(), buffer)
            self._forward_over(entry)
            return got
        entry, got = self.cart.read_into(self.offset, buffer)
        self._forward_over(self._entry_or_end(entry))
        return got

    def _entry_or_end(self, entry: cartridge.Entry | None) -> cartridge.Entry:
        """The record a read met; a filemark is crossed and reported, end of data reported."""
        if entry is None:
            if self._seal is not None and self._chunk_index() and not self._tail_written_here():
                raise MediaError(f"{self.name}: tape file {self.file_num} of {self.path} ends after record "
                                 f"{self._chunk_index() - 1} without its authenticated end (a filemark): "
                                 "the cartridge was truncated or its writer stopped before closing the file")
            raise EndOfData(f"{self.name}: end of data")
        if entry.is_filemark:
            self._forward_over(entry)
            raise FilemarkReached(f"{self.name}: filemark")
        return entry

    def _tail_written_here(self) -> bool:
        """The records before end of data were written since this cartridge was opened (a file
        still being written has no filemark yet; one read back later must have one)."""
        return self._written_from is not None and self.cart.eod > self._written_from

    def _chunk_index(self) -> int:
        """Records before the head in its tape file (sealed cartridges only); counted backwards
        to the filemark in front if unknown (a cartridge changed while the position was kept)."""
        if self._chunk is None:
            count, offset = 0, self.offset
            while (entry := self.cart.entry_before(offset)) is not None and not entry.is_filemark:
                count += 1
                offset = entry.offset
            self._chunk = count
        return self._chunk

    def _forward_over(self, entry: cartridge.Entry) -> None:
        """The head moved forward over ``entry`` (a sealed file's end marker is checked)."""
        if entry.is_filemark and self._seal is not None:
            self._seal.check_end(self.cart, entry, self.file_num, self._chunk_index())
        self.offset = entry.end
        if entry.is_filemark:
            self.file_num += 1
            self.blockno = 0
            self._chunk = 0
        else:
            if self.blockno is not None:
                self.blockno += 1
            if self._chunk is not None:
                self._chunk += 1

    def _backward_over(self, entry: cartridge.Entry) -> None:
        """The head moved backward over ``entry`` (over a sealed filemark: its end marker says,
        authenticated, how many records the file before it holds)."""
        if entry.is_filemark:
            closes = self.file_num - 1
            chunk = (0 if entry.offset == DATA_START else None if self._seal is None
                     else self._seal.records_before(self.cart, entry, closes))
        self.offset = entry.offset
        self._full = self._warned = False   # moving back makes room, and warns anew in the zone
        if entry.is_filemark:
            self.file_num = closes
            self.blockno = None if self.offset > DATA_START else 0   # st: unknown in front of a filemark
            self._chunk = chunk
        else:
            if self.blockno:
                self.blockno -= 1
            if self._chunk:
                self._chunk -= 1

    def _step(self, forward: bool) -> cartridge.Entry | None:
        """Move over one entry; None (and BOT position) when there is none that way."""
        if forward:
            entry = self.cart.entry_at(self.offset)
            if entry is not None:
                self._forward_over(entry)
            return entry
        entry = self.cart.entry_before(self.offset)
        if entry is None:
            self.offset, self.file_num, self.blockno, self._chunk = DATA_START, 0, 0, 0
        else:
            self._backward_over(entry)
        return entry

    # ------------------------------------------------------------ writing

    def _prepare_write(self) -> Cartridge:
        """Before any write: refused on a read-only cartridge; at the beginning of tape the
        cartridge takes this drive's format (sealed under its key, with a fresh cartridge id, or
        plain); elsewhere a plain cartridge in an encrypting drive is refused."""
        cart = self.cart
        if not cart.writable:
            if self._open_mode:                          # opened for writing, then a protected one loaded
                raise WriteProtected(f"{self.name}: cartridge {self.path} is write-protected")
            raise NotWritable(f"{self.name}: opened read-only")
        if self.offset == DATA_START:
            self._seal = self.keys.reformat(cart)
        elif self._seal is None and self.keys.encrypting:
            raise MediaError(f"{self.name}: cartridge {self.path} is not encrypted and this drive writes "
                             "only encrypted data; rewrite it from the beginning of tape (it is then sealed)")
        self._written_from = self.offset if self._written_from is None else min(self._written_from, self.offset)
        return cart

    def _room(self, length: int, record: bool) -> None:
        """Refuse a write that does not fit: a record that would enter the early-warning
        zone once (EarlyWarning), any write past the physical end (PhysicalEnd), and every
        record after one met the physical end, even a smaller one that would fit, as a
        drive does. Filemarks never meet the early warning. A sealed cartridge counts each
        entry's envelope as used space."""
        cart = self._prepare_write()
        length += cart.superblock.filemark_length if not record else (self._seal.overhead if self._seal else 0)
        after = self.offset - DATA_START + OVERHEAD + length
        sb = cart.superblock
        if record and self._full or after > sb.capacity:
            self._full = self._full or record
            raise PhysicalEnd(f"{self.name}: physical end of medium: the cartridge is full "
                              f"({sb.capacity} bytes)")
        if not record:
            return
        if after > sb.capacity - sb.early_warning:
            if not self._warned:
                self._warned = True
                raise EarlyWarning(f"{self.name}: early warning: logical end of medium")
        else:
            self._warned = False

    def write_record(self, data: bytes | memoryview) -> None:
        self._room(len(data), record=True)
        if self._seal is not None:
            parts = self._seal.seal_records(self.file_num, self._chunk_index(), data, len(data))
            self.offset = self.cart.write_parted_records(self.offset, parts)
        else:
            self.offset = self.cart.write_entry(self.offset, KIND_RECORD, data)
        self._advance(1)

    def _advance(self, records: int) -> None:
        """The head moved over ``records`` it wrote."""
        if self.blockno is not None:
            self.blockno += records
        if self._chunk is not None:
            self._chunk += records
        self._last_was_write = True

    def write_records(self, data: memoryview, size: int) -> int:
        """The records that end before the early-warning zone go out in one batch; the
        first one that would not is left to write_record's end-of-medium rules."""
        cart = self.cart
        if not cart.writable or self._full or self.offset == DATA_START:
            return super().write_records(data[:size], size)     # the checks and the format, then batches
        sb = cart.superblock
        room = sb.capacity - sb.early_warning - (self.offset - DATA_START)
        overhead = OVERHEAD + (self._seal.overhead if self._seal else 0)
        fits = min(len(data) // size, max(0, room) // (overhead + size))
        if fits == 0:
            return super().write_records(data[:size], size)
        self._prepare_write()
        if self._seal is not None:
            self.offset = self._seal.write_records(cart, self.offset, self.file_num, self._chunk_index(),
                                                   data[:fits * size], size)
        else:
            self.offset = cart.write_records(self.offset, data[:fits * size], size)
        self._advance(fits)
        self._warned = False
        return fits

    def flush(self) -> None:
        """Sealed batches are written in the background (``RecordSeal.write_records``)."""
        if self._cart is not None:
            self._cart.settle()

    def write_filemarks(self, count: int) -> None:
        for _ in range(count):
            self._room(0, record=False)
            end = self._seal.end_marker(self.file_num, self._chunk_index()) if self._seal else b""
            self.offset = self.cart.write_entry(self.offset, KIND_FILEMARK, end)
            self.file_num += 1
            self.blockno = 0
            self._chunk = 0
        if count or self._last_was_write:
            self.cart.sync()            # MTWEOF 0 too, as st flushes its buffer: records so far are durable
        if count:
            self._last_was_write = False    # after MTWEOF 0 the tape file is still open: close ends it

    # ------------------------------------------------------------ positioning

    def space_records(self, count: int) -> SpaceResult:
        self._last_was_write = False
        edge = Stop.EOD if count > 0 else Stop.BOT
        jumped = self._jump(count)
        for done in range(jumped, abs(count)):
            entry = self._step(count > 0)
            if entry is None:
                return SpaceResult(abs(count) - done, edge)
            if entry.is_filemark:
                return SpaceResult(abs(count) - done, Stop.FILEMARK)
        return SpaceResult(0)

    def _jump(self, count: int) -> int:
        """Cross all but the last of ``count`` records at once where the medium maps a run of
        records of one length (an object store: no header is fetched for the records crossed);
        the last one is stepped over as usual, so what stops the spacing is still read."""
        if abs(count) < 2:
            return 0
        ahead, stride = (self.cart.records_ahead if count > 0 else self.cart.records_behind)(self.offset)
        jump = min(abs(count) - 1, ahead)
        if jump <= 0:
            return 0
        self.offset += jump * stride if count > 0 else -jump * stride
        step = jump if count > 0 else -jump
        if self.blockno is not None:
            self.blockno = max(0, self.blockno + step)
        if self._chunk is not None:
            self._chunk = max(0, self._chunk + step)
        if count < 0:
            self._full = self._warned = False
        return jump

    def space_filemarks(self, count: int) -> SpaceResult:
        self._last_was_write = False
        edge = Stop.EOD if count > 0 else Stop.BOT
        crossed = 0
        while crossed < abs(count):
            entry = self._step(count > 0)
            if entry is None:
                return SpaceResult(abs(count) - crossed, edge)
            crossed += entry.is_filemark
        return SpaceResult(0)

    def rewind(self) -> None:
        self.cart      # raises when not open
        self._rewound()

    def status(self) -> TapeStatus:
        if self._cart is None or self.path is None:
            return TapeStatus(None, None, 0, None, None, False, loaded=self.loaded)
        sb = self._cart.superblock
        used = self.offset - DATA_START
        remain = 0 if self._full else max(0, sb.capacity - used)
        return TapeStatus(self.file_num, self.blockno, 0, sb.capacity, remain, sb.write_protected)
