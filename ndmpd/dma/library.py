"""A tape library (any SMC changer behind NDMP) as the DMA sees it: slots, drives, ports.

Slots, drives and import/export ports are numbered from 1 in element-address order, as
a user counts them (``load 3``); ``@ADDR`` names an element by its SMC address instead.

Which NDMP tape device a drive element is: the changer's READ ELEMENT STATUS device
identifier (DVCID) where it gives one — ndmpd's virtual library says ``NDMPD   <name>``
for its ``[[tape]] name`` — matched on its last word; a library with a single drive
needs no identifier; otherwise the caller names the element (``drive=2`` or ``@129``).

Example::

    async with Agent.connect(...) as robot:
        lib = await Library.open(robot, "vlib0")
        inv = await lib.inventory()
        await lib.load(1, drive="ltape0")          # slot 1 into the drive that is ltape0
        await lib.unload("ltape0")                 # back to the slot it came from
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .smc import DRIVE, IMPORT_EXPORT, STORAGE, TRANSPORT, Element, ScsiChanger


class LibraryError(Exception):
    """A library request that cannot be done (one line for the user)."""


@dataclass(frozen=True)
class Inventory:
    """What READ ELEMENT STATUS said, by kind, each list in address order."""

    transports: list[Element]
    slots: list[Element]
    drives: list[Element]
    ports: list[Element]

    @classmethod
    def of(cls, elements: list[Element]) -> "Inventory":
        def kind(k: int) -> list[Element]:
            return sorted((e for e in elements if e.kind == k), key=lambda e: e.address)
        return cls(kind(TRANSPORT), kind(STORAGE), kind(DRIVE), kind(IMPORT_EXPORT))

    def all(self) -> list[Element]:
        return [*self.transports, *self.slots, *self.drives, *self.ports]

    def element(self, address: int) -> Element:
        for e in self.all():
            if e.address == address:
                return e
        raise LibraryError(f"the library has no element at address {address}")

    def slot(self, number: int) -> Element:
        return _nth(self.slots, number, "slot")

    def slot_number(self, address: int) -> int | None:
        """The user's number of the slot at ``address`` (None: not a slot)."""
        for i, e in enumerate(self.slots, 1):
            if e.address == address:
                return i
        return None

    def drive(self, which: str | int | None) -> Element:
        """The drive element for an NDMP device name, a drive number, ``@ADDR`` or None (the only one)."""
        if isinstance(which, int):
            return _nth(self.drives, which, "drive")
        if which is None:
            if len(self.drives) == 1:
                return self.drives[0]
            raise LibraryError(f"the library has {len(self.drives)} drives: say which (--drive)")
        if which.startswith("@"):
            e = self.element(_address(which))
            if e.kind != DRIVE:
                raise LibraryError(f"element {which} is not a drive")
            return e
        named = [e for e in self.drives if e.identifier and e.identifier.split()[-1] == which]
        if len(named) == 1:
            return named[0]
        if not any(e.identifier for e in self.drives) and len(self.drives) == 1:
            return self.drives[0]
        if which.isdigit():
            return _nth(self.drives, int(which), "drive")
        known = ", ".join(e.identifier.split()[-1] for e in self.drives if e.identifier) or "none given"
        raise LibraryError(f"no drive element of the library is {which!r} (its drives identify as: {known}); "
                           "name the element as a number or @ADDR")

    def locate(self, spec: str) -> Element:
        """An element from the user's text: ``N`` or ``slotN`` (a slot), ``driveN``, ``ieN``, ``@ADDR``."""
        text = spec.strip().lower()
        if text.startswith("@"):
            return self.element(_address(text))
        for prefix, members, name in (("slot", self.slots, "slot"), ("drive", self.drives, "drive"),
                                      ("ie", self.ports, "import/export port"), ("", self.slots, "slot")):
            rest = text[len(prefix):]
            if text.startswith(prefix) and rest.isdigit():
                return _nth(members, int(rest), name)
        raise LibraryError(f"{spec!r}: expected a slot number, slotN, driveN, ieN or @ADDR")

    def by_barcode(self, barcode: str, kinds: tuple[int, ...] | None = None) -> Element | None:
        """The full element holding ``barcode`` (among ``kinds`` only, when given)."""
        for e in self.all():
            if kinds is not None and e.kind not in kinds:
                continue
            if e.full and e.barcode == barcode:
                return e
        return None


def _nth(members: list[Element], number: int, what: str) -> Element:
    if not 1 <= number <= len(members):
        raise LibraryError(f"no {what} {number} (the library has {len(members)})")
    return members[number - 1]


def _address(text: str) -> int:
    try:
        return int(text[1:], 0)
    except ValueError:
        raise LibraryError(f"{text!r}: expected @ADDRESS") from None


class Library:
    """One changer opened on an Agent (its session holds the SCSI device until :meth:`close`)."""

    def __init__(self, agent: Any, name: str) -> None:
        self.agent, self.name = agent, name
        self.scsi = ScsiChanger(agent)

    @classmethod
    async def open(cls, agent: Any, name: str) -> "Library":
        """SCSI_OPEN ``name`` and check it is a medium changer."""
        await agent.call("SCSI_OPEN", device=name)
        lib = cls(agent, name)
        inquiry = await lib.scsi.inquiry()
        if inquiry.device_type != 0x08:
            await lib.close()
            raise LibraryError(f"{name} is not a medium changer (SCSI device type {inquiry.device_type})")
        return lib

    async def close(self) -> None:
        await self.agent.call("SCSI_CLOSE")

    async def inventory(self) -> Inventory:
        return Inventory.of(await self.scsi.read_element_status())

    async def _transport(self, inv: Inventory) -> int:
        return inv.transports[0].address if inv.transports else 0

    async def move(self, source: Element | int, destination: Element | int) -> None:
        """MOVE MEDIUM from one element to another (addresses or elements of an inventory)."""
        inv = await self.inventory()
        src = inv.element(source if isinstance(source, int) else source.address)
        dst = inv.element(destination if isinstance(destination, int) else destination.address)
        if not src.full:
            raise LibraryError(f"{_name(inv, src)} is empty")
        if dst.full:
            raise LibraryError(f"{_name(inv, dst)} is full ({dst.barcode or 'no barcode'})")
        await self.scsi.move_medium(await self._transport(inv), src.address, dst.address)

    async def load(self, slot: int | Element, drive: str | int | None = None) -> Element:
        """Move slot ``slot``'s cartridge into the drive; returns the slot element it came from."""
        inv = await self.inventory()
        src = inv.slot(slot) if isinstance(slot, int) else inv.element(slot.address)
        dst = inv.drive(drive)
        if dst.full:
            raise LibraryError(f"{_name(inv, dst)} already holds {dst.barcode or 'a cartridge'}: unload it first")
        if not src.full:
            raise LibraryError(f"{_name(inv, src)} is empty")
        await self.scsi.move_medium(await self._transport(inv), src.address, dst.address)
        return src

    async def unload(self, drive: str | int | None = None) -> Element | None:
        """Move the drive's cartridge back to the slot it came from (else the first empty slot);
        returns that slot, or None when the drive was empty."""
        inv = await self.inventory()
        src = inv.drive(drive)
        if not src.full:
            return None
        home = None
        if src.source is not None:
            candidate = next((e for e in inv.all() if e.address == src.source), None)
            if candidate is not None and not candidate.full and candidate.kind in (STORAGE, IMPORT_EXPORT):
                home = candidate
        if home is None:
            home = next((e for e in inv.slots if not e.full), None)
        if home is None:
            raise LibraryError(f"no empty slot to unload {_name(inv, src)} into")
        await self.scsi.move_medium(await self._transport(inv), src.address, home.address)
        return home

    async def initialize(self) -> None:
        await self.scsi.initialize_element_status()


def element_name(inv: Inventory, e: Element) -> str:
    """``slot 3``, ``drive 1``, ``ie 1`` or ``transport 1``: how the user counts it."""
    return _name(inv, e)


def _name(inv: Inventory, e: Element) -> str:
    members = {STORAGE: inv.slots, DRIVE: inv.drives, IMPORT_EXPORT: inv.ports, TRANSPORT: inv.transports}
    for i, m in enumerate(members.get(e.kind, []), 1):
        if m.address == e.address:
            return f"{e.kind_name} {i}"
    return f"element @{e.address}"
