"""An SMC-3 media changer in software: CDBs in, status, data and sense out.

Answers what DMAs send a library (ndmjob, NetBackup, Bareos through NDMP): INQUIRY with
the serial number page, TEST UNIT READY, REQUEST SENSE, MODE SENSE(6)/(10) with the
element address assignment, transport geometry and device capabilities pages, READ
ELEMENT STATUS (volume tags, device identifiers, allocation length), MOVE MEDIUM,
EXCHANGE MEDIUM, INITIALIZE ELEMENT STATUS (with range), POSITION TO ELEMENT and
PREVENT/ALLOW MEDIUM REMOVAL. A command that fails leaves the library as it was.

One emulator per initiator (a session with the changer open): its sense data and its
PREVENT MEDIUM REMOVAL are its own, as SPC-3 keeps them per I_T nexus. The ports stay shut
while any initiator prevents removal; ALLOW ends only the sender's, closing the session ends
it too, and a reset ends everyone's.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Callable

from .library import DRIVE, DRIVE_BASE, IE_BASE, IMPORT_EXPORT, SLOT_BASE, STORAGE, TRANSPORT, TRANSPORT_BASE
from .library import Element, LibraryError, State, VirtualLibrary
from .sense import (CHECK_CONDITION, GOOD, INVALID_ELEMENT, INVALID_FIELD, INVALID_OPCODE, NO_ADDITIONAL,
                    NOT_READY_CAUSE_UNKNOWN, CdbResult, CheckCondition, Sense)

log = logging.getLogger("ndmpd.changer")

VENDOR, PRODUCT, REVISION = b"NDMPD   ", b"VIRTUAL LIBRARY ", b"0100"
VOLTAG_LEN = 36


def cdb_length(opcode: int) -> int:
    """The CDB length of an opcode's group (SPC-3 4.3)."""
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(opcode >> 5, 0)


class SmcEmulator:
    """Executes CDBs against one :class:`VirtualLibrary`."""

    def __init__(self, library: VirtualLibrary, drive_busy: Callable[[str], bool] = lambda name: False,
                 initiator: str | None = None) -> None:
        self.library = library
        self.drive_busy = drive_busy
        self.initiator = initiator or uuid.uuid4().hex[:16]      # whose PREVENT MEDIUM REMOVAL this is
        self._last_sense: Sense = NO_ADDITIONAL
        self._commands: dict[int, Callable[[bytes, int], bytes]] = {
            0x00: self._test_unit_ready, 0x03: self._request_sense, 0x12: self._inquiry,
            0x1A: self._mode_sense, 0x5A: self._mode_sense, 0xB8: self._read_element_status,
            0xA5: self._move_medium, 0xA6: self._exchange_medium, 0x07: self._init_element_status,
            0x37: self._init_element_status_range, 0x2B: self._position, 0x1E: self._prevent_allow,
        }

    def execute(self, cdb: bytes, datain_len: int = 0, data_out: bytes = b"", timeout_ms: int = 0) -> CdbResult:
        """Run one command; at most ``datain_len`` bytes of data come back. None of the
        commands emulated takes data out, so any is ignored (SPC: a zero parameter list)."""
        try:
            if not cdb:
                raise CheckCondition(INVALID_OPCODE, "empty CDB")
            command = self._commands.get(cdb[0])
            if command is None:
                raise CheckCondition(INVALID_OPCODE, f"opcode 0x{cdb[0]:02x}")
            if len(cdb) != cdb_length(cdb[0]):
                raise CheckCondition(INVALID_FIELD, f"{len(cdb)}-byte CDB for opcode 0x{cdb[0]:02x}")
            try:
                data = command(cdb, datain_len)
            except LibraryError as exc:         # its state or cartridge store cannot be read now
                log.warning("%s: %s", self.library.name, exc)
                raise CheckCondition(NOT_READY_CAUSE_UNKNOWN, str(exc)) from None
        except CheckCondition as exc:
            self._last_sense = exc.sense
            return CdbResult(CHECK_CONDITION, b"", exc.sense.data())
        if cdb[0] != 0x03:
            self._last_sense = NO_ADDITIONAL
        return CdbResult(GOOD, data[:datain_len])

    def address(self) -> tuple[int, int, int]:
        return 0, 0, 0

    def close(self) -> None:
        """The session is gone (an I_T nexus loss): its PREVENT MEDIUM REMOVAL ends with it."""
        with self.library.state() as state:
            state.set_prevent(self.initiator, False)

    def reset(self, bus: bool = False) -> None:
        """RESET DEVICE / RESET BUS: every initiator's removal lock is released, sense cleared."""
        with self.library.state() as state:
            state.keep_preventers(set())
        self._last_sense = NO_ADDITIONAL

    # -- identification ----------------------------------------------------------------------

    def _test_unit_ready(self, cdb: bytes, limit: int) -> bytes:
        return b""

    def _request_sense(self, cdb: bytes, limit: int) -> bytes:
        sense, self._last_sense = self._last_sense, NO_ADDITIONAL
        return sense.data()[:cdb[4]]

    def _inquiry(self, cdb: bytes, limit: int) -> bytes:
        evpd, page, alloc = cdb[1] & 1, cdb[2], struct.unpack_from(">H", cdb, 3)[0]
        if not evpd:
            if page:
                raise CheckCondition(INVALID_FIELD, "page code without EVPD")
            body = bytes([0x08, 0x00, 0x05, 0x02, 31, 0, 0, 0]) + VENDOR + PRODUCT + REVISION
            return body[:alloc]
        serial = self.library.serial.encode()
        if page == 0x00:
            pages = bytes([0x00, 0x80, 0x83])
            return (bytes([0x08, 0x00, 0, len(pages)]) + pages)[:alloc]
        if page == 0x80:
            return (bytes([0x08, 0x80, 0, len(serial)]) + serial)[:alloc]
        if page == 0x83:
            ident = VENDOR + serial                       # T10 vendor id based, ASCII
            descriptor = bytes([0x02, 0x01, 0, len(ident)]) + ident
            return (bytes([0x08, 0x83]) + struct.pack(">H", len(descriptor)) + descriptor)[:alloc]
        raise CheckCondition(INVALID_FIELD, f"no VPD page 0x{page:02x}")

    # -- mode pages ----------------------------------------------------------------------------

    def _mode_sense(self, cdb: bytes, limit: int) -> bytes:
        six = cdb[0] == 0x1A
        control, page = cdb[2] >> 6, cdb[2] & 0x3F
        alloc = cdb[4] if six else struct.unpack_from(">H", cdb, 7)[0]
        if cdb[3]:
            raise CheckCondition(INVALID_FIELD, "subpages are not supported")
        if control == 3:
            raise CheckCondition(Sense(0x5, 0x39, 0x00, "saving parameters not supported"))
        pages = {0x1D: self._element_address_page, 0x1E: self._geometry_page, 0x1F: self._capabilities_page}
        if page == 0x3F:
            body = b"".join(make(control == 1) for make in pages.values())
        elif page in pages:
            body = pages[page](control == 1)
        else:
            raise CheckCondition(INVALID_FIELD, f"no mode page 0x{page:02x}")
        if six:
            return (bytes([len(body) + 3, 0, 0, 0]) + body)[:alloc]
        return (struct.pack(">HBBHH", len(body) + 6, 0, 0, 0, 0) + body)[:alloc]

    def _element_address_page(self, changeable: bool) -> bytes:
        lib = self.library
        if changeable:
            return bytes([0x1D, 0x12]) + bytes(18)
        return bytes([0x1D, 0x12]) + struct.pack(">HHHHHHHH", TRANSPORT_BASE, 1, SLOT_BASE, lib.slots, IE_BASE,
                                                 lib.import_export, DRIVE_BASE, len(lib.drives)) + bytes(2)

    def _geometry_page(self, changeable: bool) -> bytes:
        return bytes([0x1E, 0x02, 0, 0])

    def _capabilities_page(self, changeable: bool) -> bytes:
        if changeable:
            return bytes([0x1F, 0x12]) + bytes(18)
        # storage capable: MT, ST, IE, DT; moves and exchanges between any two kinds
        every = 0x0F if self.library.import_export else 0x0B
        return bytes([0x1F, 0x12, every, 0, 0, 0, every, every, every, every, 0, 0, every, every, every, every,
                      0, 0, 0, 0])

    # -- element status ------------------------------------------------------------------------

    def _read_element_status(self, cdb: bytes, limit: int) -> bytes:
        voltag, kind = bool(cdb[1] & 0x10), cdb[1] & 0x0F
        start, count = struct.unpack_from(">HH", cdb, 2)
        dvcid = bool(cdb[6] & 0x01)
        alloc = int.from_bytes(cdb[7:10], "big")
        if kind > DRIVE:
            raise CheckCondition(INVALID_FIELD, f"element type code {kind}")
        with self.library.state() as state:
            chosen = sorted((e for e in state.elements.values() if (not kind or e.kind == kind) and e.address >= start),
                            key=lambda e: e.address)[:count]
            if not chosen and count:
                raise CheckCondition(INVALID_ELEMENT, f"no element at or after {start}")
            pages = []
            for page_kind in (TRANSPORT, STORAGE, IMPORT_EXPORT, DRIVE):
                members = [e for e in chosen if e.kind == page_kind]
                if members:
                    pages.append(self._status_page(page_kind, members, voltag, dvcid))
        body = b"".join(pages)
        first = chosen[0].address if chosen else 0
        header = struct.pack(">HH", first, len(chosen)) + bytes([0]) + len(body).to_bytes(3, "big")
        return (header + body)[:alloc]

    def _status_page(self, kind: int, members: list[Element], voltag: bool, dvcid: bool) -> bytes:
        descriptors = [self._descriptor(e, voltag, dvcid) for e in members]
        size = len(descriptors[0])
        flags = 0x80 if voltag else 0
        head = bytes([kind, flags]) + struct.pack(">H", size) + bytes([0]) + (size * len(members)).to_bytes(3, "big")
        return head + b"".join(descriptors)

    def _descriptor(self, element: Element, voltag: bool, dvcid: bool) -> bytes:
        full = element.barcode is not None
        flags = 0x01 if full else 0
        if element.kind == IMPORT_EXPORT:
            flags |= 0x08 | 0x10 | 0x20 | (0x02 if element.by_operator else 0)    # access, ExEnab, InEnab
        elif element.kind in (STORAGE, DRIVE):
            flags |= 0x08
        source = element.source if full and element.source is not None else None
        out = struct.pack(">HBBBBBBBBH", element.address, flags, 0, 0, 0, 0, 0, 0,
                          0x80 if source is not None else 0, source or 0)
        if voltag:
            tag = (element.barcode or "").encode("ascii").ljust(32) if full else bytes(32)
            out += tag + bytes(4)
        if dvcid:
            if element.kind == DRIVE:
                ident = VENDOR + (element.drive or "").encode()[:24].ljust(24)
                out += bytes([0x02, 0x01, 0, len(ident)]) + ident
            else:
                out += bytes(4)
        return out

    # -- moves -----------------------------------------------------------------------------

    def _transport(self, state: State, address: int) -> None:
        if address and state.element(address).kind != TRANSPORT:
            raise CheckCondition(INVALID_ELEMENT, f"{address} is not a transport element")

    def _move_medium(self, cdb: bytes, limit: int) -> bytes:
        transport, source, destination = struct.unpack_from(">HHH", cdb, 2)
        if cdb[10] & 0x01:
            raise CheckCondition(INVALID_FIELD, "this library cannot invert media")
        with self.library.state() as state:
            self._transport(state, transport)
            self.library.move(state, source, destination, self.drive_busy)
        return b""

    def _exchange_medium(self, cdb: bytes, limit: int) -> bytes:
        transport, source, first, second = struct.unpack_from(">HHHH", cdb, 2)
        if cdb[10] & 0x03:
            raise CheckCondition(INVALID_FIELD, "this library cannot invert media")
        with self.library.state() as state:
            self._transport(state, transport)
            self.library.exchange(state, source, first, second, self.drive_busy)
        return b""

    def _init_element_status(self, cdb: bytes, limit: int) -> bytes:
        self.library.sync_drives()       # the inventory is the state on disk: re-read it
        return b""

    def _init_element_status_range(self, cdb: bytes, limit: int) -> bytes:
        if cdb[1] & 0x01:
            start, count = struct.unpack_from(">HxxH", cdb, 2)
            with self.library.state() as state:
                if count and not any(start <= a < start + count for a in state.elements):
                    raise CheckCondition(INVALID_ELEMENT, f"no element in {start}..{start + count - 1}")
        self.library.sync_drives()
        return b""

    def _position(self, cdb: bytes, limit: int) -> bytes:
        transport, destination = struct.unpack_from(">HH", cdb, 2)
        with self.library.state() as state:
            self._transport(state, transport)
            state.element(destination)
        return b""

    def _prevent_allow(self, cdb: bytes, limit: int) -> bytes:
        prevent = cdb[4] & 0x03
        if prevent > 1:
            raise CheckCondition(INVALID_FIELD, "PREVENT field 2 and 3 are for ADC devices")
        with self.library.state() as state:
            state.set_prevent(self.initiator, bool(prevent))
        return b""

