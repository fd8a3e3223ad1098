"""Which cartridge goes into a job's drive, and putting it there: the one object jobs ask.

A backup asks :meth:`MediaLoader.next_for_backup` for a cartridge to write on (first at the
start, then at each end of medium); a restore asks :meth:`MediaLoader.load_for` for the
cartridge holding offset X of backup B's image (the SEEK of a DAR, or the next part of
a spanning image). The loader owns the drive's TAPE_OPEN/TAPE_CLOSE on the tape agent
around each robot move (a drive is moved to and from only while closed).

A cartridge of the slot range may be written when the catalog names no part of any backup
it keeps on it (by barcode) and it is blank, holds only an ``ndmp`` label, or was marked
reusable by ``ndmp prune``; a backup writes from the start of the tape (after the label),
one image per cartridge. Anything else (data the catalog does not know) is skipped with a
warning, never overwritten.

Example (a restore that needs the second cartridge)::

    loader = MediaLoader(library, tape_agent, "ltape0", catalog, names=("nas:vlib0", "nas:ltape0"))
    part = await loader.load_for(backup, offset=window_wanted)   # drive open, at part.file_number
    await tape_agent.call("MOVER_SET_WINDOW", offset=part.first_byte, length=part_length(part))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...wire import C
from .. import tapes
from ..catalog import Backup, Catalog, Media
from ..errors import NdmpReplyError
from ..library import Inventory, Library, LibraryError, element_name
from ..smc import IMPORT_EXPORT, STORAGE
from ..progress import NullReporter, Reporter

WINDOW_ALL = (1 << 64) - 1


class MediaError(Exception):
    """No cartridge can do what the job needs (one line for the user)."""


class SlotsError(MediaError):
    """A ``--slots`` text that does not parse (a usage error)."""


@dataclass(frozen=True)
class Loaded:
    """The cartridge now in the drive, open and positioned."""

    barcode: str | None
    slot: int | None               # the user's slot number it came from
    label: tapes.Label | None
    file_number: int               # the tape file the drive is at (a new image starts here)
    library: str | None = None     # HOST:CHANGER and HOST:DRIVE as the user named them, for the catalog
    drive: str | None = None

    def media(self, first_byte: int, last_byte: int | None) -> Media:
        return Media(label=self.label.name if self.label else None, barcode=self.barcode, slot=self.slot,
                     file_number=self.file_number, first_byte=first_byte, last_byte=last_byte,
                     library=self.library, drive=self.drive)


def parse_slots(text: str | None) -> list[int] | None:
    """``1-4``, ``2,5,7`` or ``1-3,6`` as slot numbers (None: every slot)."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise SlotsError(f"--slots {text}: expected N, N-M or a comma list of them") from None
        if first < 1 or last < first:
            raise SlotsError(f"--slots {text}: slots count from 1 and ranges go upwards")
        out.extend(n for n in range(first, last + 1) if n not in out)
    return out


def part_covering(backup: Backup, offset: int) -> Media:
    """The Media row of ``backup`` whose byte range holds image offset ``offset``."""
    for m in backup.media:
        if m.first_byte <= offset and (m.last_byte is None or offset < m.last_byte):
            return m
    raise MediaError(f"no medium of backup {backup.id} holds image offset {offset}")


def part_length(part: Media) -> int:
    """The window length for a part (``infinite`` when its end is unknown)."""
    return WINDOW_ALL if part.last_byte is None else part.last_byte - part.first_byte


class MediaLoader:
    """Loads cartridges of one library into one drive for a job."""

    def __init__(self, library: Library, tape: Any, drive: str, catalog: Catalog,
                 slots: Sequence[int] | None = None, drive_element: str | None = None,
                 reporter: Reporter | None = None, names: tuple[str, str] | None = None) -> None:
        self.library, self.tape, self.drive, self.catalog = library, tape, drive, catalog
        self.names = names                           # (HOST:CHANGER, HOST:DRIVE) recorded on the media rows
        self.slots = list(slots) if slots is not None else None
        self.drive_element = drive_element           # the changer's element, if the mapping cannot tell
        self.reporter = reporter or NullReporter()
        self.tried: set[int] = set()                 # slot numbers offered already in this job
        self.is_open = False
        self.current: Loaded | None = None

    # ------------------------------------------------------------ backup

    async def next_for_backup(self) -> Loaded | None:
        """Unload what the drive holds and load, open (read/write) and position the next
        writable cartridge of the slot range; None when there is none left."""
        await self._close()
        inv = await self.library.inventory()
        element = self._drive(inv)
        if element.full:
            await self.library.unload(self._which())
            inv = await self.library.inventory()
        in_use = self.catalog.media_in_use()
        reusable = self.catalog.reusable_media()
        for number in self.slots or range(1, len(inv.slots) + 1):
            if number in self.tried:
                continue
            self.tried.add(number)
            slot = inv.slot(number)
            if not slot.full:
                continue
            if slot.barcode is not None and slot.barcode in in_use:
                continue
            await self.library.load(number, self._which())
            await self._open(C.TAPE_RDWR_MODE)
            found = await tapes.contents(self.tape)
            if found.has_data and slot.barcode not in reusable:
                self.reporter.warning(f"slot {number} ({slot.barcode or 'no barcode'}) holds data the catalog "
                                      "does not know: skipped")
                await self._close()
                await self.library.unload(self._which())
                inv = await self.library.inventory()
                continue
            file_number = await tapes.position_for_writing(self.tape, found.label)
            self.current = Loaded(slot.barcode, number, found.label, file_number, *(self.names or (None, None)))
            return self.current
        return None

    # ------------------------------------------------------------ restore

    async def load_for(self, backup: Backup, offset: int, mode: int = C.TAPE_READ_MODE) -> Media:
        """Make the cartridge holding image ``offset`` of ``backup`` the open one, positioned
        at the start of that part's tape file; returns the part (its byte range is the window)."""
        part = part_covering(backup, offset)
        if part.barcode is None:
            raise MediaError(f"backup {backup.id}'s part at offset {offset} has no barcode to find it by")
        inv = await self.library.inventory()
        element = self._drive(inv)
        if not (element.full and element.barcode == part.barcode):
            await self._close()
            if element.full:
                await self.library.unload(self._which())
                inv = await self.library.inventory()
            where = inv.by_barcode(part.barcode, (STORAGE,))      # an import/export port is outside
            if where is None:
                port = inv.by_barcode(part.barcode, (IMPORT_EXPORT,))
                there = f" (it is in {element_name(inv, port)}: move it to a slot)" if port is not None else ""
                raise MediaError(f"cartridge {part.barcode} (backup {backup.id}, image bytes {part.first_byte}-"
                                 f"{part.last_byte}) is not in the library's slots{there}")
            await self.library.load(where, self._which())
            self.current = Loaded(part.barcode, inv.slot_number(where.address), None, part.file_number or 0)
        if not self.is_open:
            await self._open(mode)
        await tapes.to_file(self.tape, part.file_number)
        return part

    # ------------------------------------------------------------ the drive

    async def release(self, unload: bool = False) -> None:
        """Close the drive (and put its cartridge back when ``unload``)."""
        await self._close()
        if unload:
            await self.library.unload(self._which())

    def _which(self) -> str:
        return self.drive_element or self.drive

    def _drive(self, inv: Inventory):
        try:
            return inv.drive(self._which())
        except LibraryError as exc:
            raise MediaError(str(exc)) from None

    async def _open(self, mode: int) -> None:
        await tapes.open_drive(self.tape, self.drive, mode)
        self.is_open = True

    async def _close(self) -> None:
        if self.is_open:
            self.is_open = False
            try:
                await self.tape.call("TAPE_CLOSE")
            except NdmpReplyError:
                pass
