"""A virtual tape library: slots, import/export ports, drives and a picker, kept on disk.

Cartridges are files ``BARCODE.img`` in the library's directory, or with a store (S3) the
prefixes ``BARCODE/`` in its bucket; ``library.json`` (always in the directory) records
which element holds which barcode. Every operation takes an flock on the directory, reads
the state, changes it and writes it back atomically, so the state survives restarts and the
server and ``ndmpd library`` never see each other's half-written state. A cartridge file in
the directory that no element holds is outside the library (on the shelf).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..devices.medium import Location
from ..devices.tape import MediaError
from ..store_config import StoreConfig
from .sense import DESTINATION_FULL, INVALID_ELEMENT, REMOVAL_PREVENTED, SOURCE_EMPTY, CheckCondition

TRANSPORT, STORAGE, IMPORT_EXPORT, DRIVE = 1, 2, 3, 4     # SMC element type codes
TRANSPORT_BASE, IE_BASE, DRIVE_BASE, SLOT_BASE = 16, 0, 128, 1024   # as ndmjob's simulated robot
STATE_FILE = "library.json"
BARCODE = re.compile(r"^[A-Za-z0-9_.+-]{1,32}$")


class LibraryError(Exception):
    """An operator command that cannot be done (``ndmpd library``)."""


@dataclass
class Element:
    address: int
    kind: int
    barcode: str | None = None
    source: int | None = None          # where the cartridge came from (SMC SVALID)
    by_operator: bool = False          # an import/export port filled by hand (SMC ImpExp)
    drive: str | None = None           # DRIVE: the [[tape]] it is


@dataclass
class State:
    elements: dict[int, Element]
    preventers: set[str] = field(default_factory=set)   # initiators that sent PREVENT MEDIUM REMOVAL
    changed: bool = field(default=False, compare=False)
    # saved elements at addresses this geometry lacks: another configuration's (a reload grew the
    # library while a session of the old one has it open), written back as they were
    others: dict[str, dict] = field(default_factory=dict, compare=False)

    @property
    def prevent(self) -> bool:
        """The import/export ports stay shut while any initiator prevents removal (SPC-3)."""
        return bool(self.preventers)

    def set_prevent(self, initiator: str, prevent: bool) -> None:
        if (initiator in self.preventers) != prevent:
            (self.preventers.add if prevent else self.preventers.discard)(initiator)
            self.changed = True

    def keep_preventers(self, alive: set[str]) -> None:
        """Forget the prevention of initiators that are gone (their session closed: nexus loss)."""
        if not self.preventers <= alive:
            self.preventers &= alive
            self.changed = True

    def of_kind(self, kind: int) -> list[Element]:
        return [e for e in self.elements.values() if e.kind == kind]

    def element(self, address: int) -> Element:
        element = self.elements.get(address)
        if element is None:
            raise CheckCondition(INVALID_ELEMENT, f"no element {address}")
        return element

    def where(self, barcode: str) -> Element | None:
        return next((e for e in self.elements.values() if e.barcode == barcode), None)


def check_barcode(barcode: str) -> str:
    if not BARCODE.match(barcode):
        raise LibraryError(f"barcode {barcode!r}: 1-32 letters, digits or _.+-")
    return barcode


class VirtualLibrary:
    """The library's geometry (from the configuration) and its on-disk state."""

    def __init__(self, name: str, directory: Path, drives: tuple[str, ...], slots: int, import_export: int,
                 on_drive_change: Callable[[str, Location | None], None] | None = None,
                 store: StoreConfig | None = None) -> None:
        self.name = name
        self.directory = directory
        self.store = None
        if store is not None:
            from ..devices.s3_medium import S3Store     # boto3 only where a store is configured
            self.store = S3Store(store)
        self.drives = drives
        self.slots = slots
        self.import_export = import_export
        self._on_drive_change = on_drive_change
        self.serial = "NDMPD%08X" % zlib.crc32(str(directory).encode())

    # -- geometry -----------------------------------------------------------------------

    def empty_state(self) -> State:
        elements = {TRANSPORT_BASE: Element(TRANSPORT_BASE, TRANSPORT)}
        for i in range(self.import_export):
            elements[IE_BASE + i] = Element(IE_BASE + i, IMPORT_EXPORT)
        for i, drive in enumerate(self.drives):
            elements[DRIVE_BASE + i] = Element(DRIVE_BASE + i, DRIVE, drive=drive)
        for i in range(self.slots):
            elements[SLOT_BASE + i] = Element(SLOT_BASE + i, STORAGE)
        return State(elements)

    def cartridge_path(self, barcode: str) -> Location:
        """Where cartridge ``barcode`` lives: BARCODE.img in the directory, or BARCODE/ in the store."""
        check_barcode(barcode)
        return self.store.cartridge(barcode) if self.store else self.directory / f"{barcode}.img"

    def cartridges(self) -> list[str]:
        """Every cartridge's barcode, in or out of the library."""
        if self.store is not None:
            try:
                return [b for b in self.store.names() if BARCODE.match(b)]
            except MediaError as exc:
                raise LibraryError(str(exc)) from None
        return sorted(p.name[:-4] for p in self.directory.glob("*.img") if BARCODE.match(p.name[:-4]))

    # -- state on disk --------------------------------------------------------------------

    @contextmanager
    def state(self) -> Iterator[State]:
        """The state under the library's lock; written back when an operation changed it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            yield state
            if state.changed:
                self._write(state)

    def _read(self) -> State:
        state = self.empty_state()
        try:
            raw = json.loads((self.directory / STATE_FILE).read_text())
        except FileNotFoundError:
            return state
        except (OSError, ValueError) as exc:
            raise LibraryError(f"{self.directory / STATE_FILE}: unreadable ({exc})") from None
        state.preventers = {str(p) for p in raw.get("preventers", ["unknown"] if raw.get("prevent") else [])}
        present = set(self.cartridges())
        elsewhere = []
        for key, saved in raw.get("elements", {}).items():
            element = state.elements.get(int(key))
            barcode = saved.get("barcode")
            if element is None:
                elsewhere.append((key, saved))
                continue
            if element.kind == TRANSPORT or barcode not in present:
                continue                # a cartridge file removed
            element.barcode, element.source = barcode, saved.get("source")
            element.by_operator = bool(saved.get("by_operator", False))
            present.discard(barcode)
        for key, saved in elsewhere:    # kept only while this geometry does not hold the cartridge
            if saved.get("barcode") in present:
                state.others[key] = saved
                present.discard(saved["barcode"])
        return state

    def _write(self, state: State) -> None:
        held = {e.barcode for e in state.elements.values() if e.barcode}
        elements = {key: saved for key, saved in state.others.items() if saved["barcode"] not in held}
        elements.update({str(e.address): {"barcode": e.barcode, "source": e.source, "by_operator": e.by_operator}
                         for e in state.elements.values() if e.barcode})
        data = {"prevent": state.prevent, "preventers": sorted(state.preventers), "elements": elements}
        temporary = self.directory / (STATE_FILE + ".new")
        with open(temporary, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.directory / STATE_FILE)
        state.changed = False

    # -- the picker ----------------------------------------------------------------------

    def move(self, state: State, source: int, destination: int, drive_busy: Callable[[str], bool]) -> None:
        """MOVE MEDIUM; the state is unchanged when it raises."""
        src, dst = state.element(source), state.element(destination)
        if TRANSPORT in (src.kind, dst.kind) and source != destination:
            raise CheckCondition(INVALID_ELEMENT, "the picker holds nothing between moves")
        if src.barcode is None:
            raise CheckCondition(SOURCE_EMPTY, f"element {source} is empty")
        if source == destination:
            return
        if dst.barcode is not None:
            raise CheckCondition(DESTINATION_FULL, f"element {destination} holds {dst.barcode}")
        self._check_removable(src, drive_busy)
        self._put(state, dst, src.barcode, source if src.source is None or src.kind != DRIVE else src.source)
        self._take(state, src)

    def exchange(self, state: State, source: int, first: int, second: int,
                 drive_busy: Callable[[str], bool]) -> None:
        """EXCHANGE MEDIUM: source's cartridge to ``first``, whose cartridge goes to ``second``."""
        src, one, two = state.element(source), state.element(first), state.element(second)
        if TRANSPORT in (src.kind, one.kind, two.kind):
            raise CheckCondition(INVALID_ELEMENT, "the picker holds nothing between moves")
        if src.barcode is None or one.barcode is None:
            raise CheckCondition(SOURCE_EMPTY, f"element {source if src.barcode is None else first} is empty")
        if two.barcode is not None and second != source:
            raise CheckCondition(DESTINATION_FULL, f"element {second} holds {two.barcode}")
        self._check_removable(src, drive_busy)
        self._check_removable(one, drive_busy)
        moving, displaced = src.barcode, one.barcode
        self._take(state, src)
        self._take(state, one)
        self._put(state, two, displaced, first)
        self._put(state, one, moving, source)

    def _check_removable(self, element: Element, drive_busy: Callable[[str], bool]) -> None:
        if element.kind == DRIVE and element.drive and drive_busy(element.drive):
            raise CheckCondition(REMOVAL_PREVENTED, f"{element.drive} is in use")

    def _take(self, state: State, element: Element) -> None:
        self._put(state, element, None, None)

    def _put(self, state: State, element: Element, barcode: str | None, source: int | None) -> None:
        """Fill (or, with None, empty) ``element``; a drive loads or unloads with it."""
        element.barcode, element.source, element.by_operator = barcode, source, False
        state.changed = True
        if element.kind == DRIVE and element.drive and self._on_drive_change:
            self._on_drive_change(element.drive, self.cartridge_path(barcode) if barcode else None)

    def sync_drives(self) -> None:
        """Load each drive with what the state says it holds (server start)."""
        if self._on_drive_change is None:
            return
        with self.state() as state:
            for element in state.of_kind(DRIVE):
                path = self.cartridge_path(element.barcode) if element.barcode else None
                self._on_drive_change(element.drive or "", path)

    # -- the operator (ndmpd library) -------------------------------------------------------

    def place(self, barcode: str, address: int | None, kinds: tuple[int, ...]) -> int:
        """Put a cartridge that is outside the library into ``address`` or the first free element of ``kinds``."""
        check_barcode(barcode)
        with self.state() as state:
            if barcode not in self.cartridges():
                raise LibraryError(f"no cartridge {barcode} in {self.directory}")
            held = state.where(barcode)
            if held is not None:
                raise LibraryError(f"{barcode} is already in element {held.address}")
            if address is None:
                free = [e for kind in kinds for e in state.of_kind(kind) if e.barcode is None]
                if not free:
                    raise LibraryError("no free element to put it in")
                element = free[0]
            else:
                element = state.elements.get(address)
                if element is None or element.kind not in kinds:
                    raise LibraryError(f"element {address} is not a {' or '.join(KIND_NAMES[k] for k in kinds)}")
                if element.barcode is not None:
                    raise LibraryError(f"element {address} holds {element.barcode}")
            element.barcode, element.source = barcode, None
            element.by_operator = element.kind == IMPORT_EXPORT
            state.changed = True
            return element.address

    def remove(self, what: str) -> str:
        """Take a cartridge out through an import/export port (by barcode or port address)."""
        with self.state() as state:
            ports = state.of_kind(IMPORT_EXPORT)
            port = next((e for e in ports if e.barcode == what or str(e.address) == what), None)
            if port is None or port.barcode is None:
                raise LibraryError(f"{what}: not in an import/export port (move it there first)")
            if state.prevent:
                raise LibraryError(f"{REMOVAL_PREVENTED.text}: a DMA has locked the import/export ports")
            barcode = port.barcode
            port.barcode, port.source, port.by_operator = None, None, False
            state.changed = True
            return barcode


KIND_NAMES = {TRANSPORT: "transport", STORAGE: "slot", IMPORT_EXPORT: "import/export port", DRIVE: "drive"}
