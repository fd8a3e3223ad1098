"""The DMA's SCSI media changer (SMC-3) commands, sent through an Agent's SCSI_EXECUTE_CDB.

CDB builders and reply parsers for what a DMA needs to drive any changer behind NDMP:
TEST UNIT READY, INQUIRY, MODE SENSE (element address assignment page 0x1D), READ
ELEMENT STATUS (volume tags and, where the changer gives them, device identifiers),
MOVE MEDIUM and INITIALIZE ELEMENT STATUS. A CHECK CONDITION becomes :class:`ScsiError`
whose message is one line decoded from the sense data. This is the client side only; it
shares nothing with the server's emulator (``ndmpd/changer``).

Example::

    scsi = ScsiChanger(agent)                    # agent: SCSI_OPEN already done
    info = await scsi.inquiry()
    for e in await scsi.read_element_status():
        print(e.kind_name, e.address, e.barcode)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ..wire import C

TRANSPORT, STORAGE, IMPORT_EXPORT, DRIVE = 1, 2, 3, 4
KIND_NAMES = {TRANSPORT: "transport", STORAGE: "slot", IMPORT_EXPORT: "ie", DRIVE: "drive"}
GOOD, CHECK_CONDITION = 0x00, 0x02
CDB_TIMEOUT_MS = 300_000          # a real robot's move may take minutes
ELEMENT_STATUS_ALLOC = 0x10000    # 64 KiB a reply (about 1,000 elements with tags); bigger libraries: more reads
MAX_STATUS_READS = 256

SENSE_KEYS = ("no sense", "recovered error", "not ready", "medium error", "hardware error", "illegal request",
              "unit attention", "data protect", "blank check", "vendor specific", "copy aborted",
              "aborted command", "equal", "volume overflow", "miscompare", "completed")
ADDITIONAL = {                    # the changer-relevant ASC/ASCQ of SPC-4 / SMC-3
    (0x04, 0x00): "not ready", (0x04, 0x01): "becoming ready", (0x04, 0x03): "manual intervention required",
    (0x20, 0x00): "invalid command operation code", (0x21, 0x01): "invalid element address",
    (0x24, 0x00): "invalid field in CDB", (0x25, 0x00): "logical unit not supported",
    (0x26, 0x00): "invalid field in parameter list", (0x28, 0x00): "medium may have changed",
    (0x29, 0x00): "power on or reset occurred", (0x30, 0x00): "incompatible medium installed",
    (0x39, 0x00): "saving parameters not supported",
    (0x3A, 0x00): "medium not present", (0x3B, 0x0D): "medium destination element full",
    (0x3B, 0x0E): "medium source element empty", (0x3B, 0x11): "medium magazine not accessible",
    (0x3B, 0x12): "medium magazine removed", (0x3F, 0x01): "microcode has been changed",
    (0x44, 0x00): "internal target failure", (0x53, 0x02): "medium removal prevented",
    (0x83, 0x00): "vendor specific",
}


class ScsiError(Exception):
    """A CDB ended in CHECK CONDITION (or another non-GOOD status): one line for the user."""

    def __init__(self, command: str, status: int, sense: bytes) -> None:
        self.command, self.status, self.sense = command, status, sense
        super().__init__(f"{command}: {describe_sense(sense) if sense else f'SCSI status 0x{status:02x}'}")

    @property
    def key_asc_ascq(self) -> tuple[int, int, int] | None:
        return sense_fields(self.sense)


def sense_fields(sense: bytes) -> tuple[int, int, int] | None:
    """(sense key, ASC, ASCQ) of fixed (0x70/0x71) or descriptor (0x72/0x73) sense data."""
    if not sense:
        return None
    code = sense[0] & 0x7F
    if code in (0x72, 0x73) and len(sense) >= 4:
        return sense[1] & 0x0F, sense[2], sense[3]
    if code in (0x70, 0x71) and len(sense) >= 3:
        asc = sense[12] if len(sense) > 12 else 0
        ascq = sense[13] if len(sense) > 13 else 0
        return sense[2] & 0x0F, asc, ascq
    return None


def describe_sense(sense: bytes) -> str:
    """One line: ``illegal request: medium source element empty (asc 0x3b ascq 0x0e)``."""
    fields = sense_fields(sense)
    if fields is None:
        return f"unparsed sense data {sense[:18].hex()}"
    key, asc, ascq = fields
    what = ADDITIONAL.get((asc, ascq)) or ADDITIONAL.get((asc, 0)) or "unknown condition"
    return f"{SENSE_KEYS[key]}: {what} (asc 0x{asc:02x} ascq 0x{ascq:02x})"


# ------------------------------------------------------------------ CDB builders

def test_unit_ready_cdb() -> bytes:
    return bytes(6)


def inquiry_cdb(alloc: int = 96) -> bytes:
    return bytes([0x12, 0, 0]) + struct.pack(">H", alloc) + bytes(1)


def mode_sense_element_address_cdb(alloc: int = 255) -> bytes:
    """MODE SENSE(6), DBD set, page 0x1D (element address assignment), current values."""
    return bytes([0x1A, 0x08, 0x1D, 0, alloc, 0])


def read_element_status_cdb(kind: int = 0, start: int = 0, count: int = 0xFFFF, voltag: bool = True,
                            dvcid: bool = True, alloc: int = ELEMENT_STATUS_ALLOC) -> bytes:
    return (bytes([0xB8, (0x10 if voltag else 0) | (kind & 0x0F)]) + struct.pack(">HH", start, count)
            + bytes([0x01 if dvcid else 0]) + alloc.to_bytes(3, "big") + bytes(2))


def move_medium_cdb(transport: int, source: int, destination: int) -> bytes:
    return bytes([0xA5, 0]) + struct.pack(">HHH", transport, source, destination) + bytes(4)


def initialize_element_status_cdb() -> bytes:
    return bytes([0x07, 0, 0, 0, 0, 0])


# ------------------------------------------------------------------ reply parsers

@dataclass(frozen=True)
class Inquiry:
    device_type: int               # 8: a medium changer
    vendor: str
    product: str
    revision: str


def parse_inquiry(data: bytes) -> Inquiry:
    def text(a: int, b: int) -> str:
        return data[a:b].decode("ascii", "replace").strip()
    return Inquiry(data[0] & 0x1F if data else 0x1F, text(8, 16), text(16, 32), text(32, 36))


@dataclass(frozen=True)
class Geometry:
    """The element address assignment page: first address and count of each kind."""

    transport: tuple[int, int]
    storage: tuple[int, int]
    import_export: tuple[int, int]
    drive: tuple[int, int]


def parse_element_address_page(data: bytes) -> Geometry:
    if len(data) < 4:
        raise ValueError("MODE SENSE reply too short")
    page = data[4 + data[3]:]                       # after the header and any block descriptors
    if len(page) < 18 or page[0] & 0x3F != 0x1D:
        raise ValueError("no element address assignment page in the MODE SENSE reply")
    v = struct.unpack_from(">HHHHHHHH", page, 2)
    return Geometry((v[0], v[1]), (v[2], v[3]), (v[4], v[5]), (v[6], v[7]))


@dataclass(frozen=True)
class Element:
    """One element of READ ELEMENT STATUS."""

    kind: int
    address: int
    full: bool
    barcode: str | None = None       # the primary volume tag, if the changer reads them
    source: int | None = None        # where the cartridge came from (SVALID)
    identifier: str | None = None    # a drive's device identifier (DVCID), if given
    accessible: bool = True
    exception: bool = False

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))


def parse_element_status(data: bytes) -> list[Element]:
    """Every element descriptor of a READ ELEMENT STATUS reply, in reply order."""
    if len(data) < 8:
        return []
    total = int.from_bytes(data[5:8], "big")
    end = min(len(data), 8 + total)
    at, out = 8, []
    while at + 8 <= end:
        kind, flags = data[at], data[at + 1]
        size = struct.unpack_from(">H", data, at + 2)[0]
        page_bytes = int.from_bytes(data[at + 5:at + 8], "big")
        at += 8
        page_end = min(end, at + page_bytes)
        while size and at + size <= page_end:
            out.append(_descriptor(kind & 0x0F, bool(flags & 0x80), bool(flags & 0x40), data[at:at + size]))
            at += size
        at = page_end
    return out


def _descriptor(kind: int, pvoltag: bool, avoltag: bool, d: bytes) -> Element:
    address, flags = struct.unpack_from(">HB", d, 0)
    svalid = len(d) > 9 and bool(d[9] & 0x80)
    source = struct.unpack_from(">H", d, 10)[0] if svalid and len(d) >= 12 else None
    at, barcode, identifier = 12, None, None
    if pvoltag and len(d) >= at + 36:
        tag = d[at:at + 32].rstrip(b" \0").decode("ascii", "replace")
        barcode = tag or None
        at += 36
    if avoltag:
        at += 36
    if len(d) >= at + 4 and d[at + 3]:
        raw = d[at + 4:at + 4 + d[at + 3]]
        identifier = raw.decode("ascii", "replace").strip() if d[at] & 0x0F == 2 else raw.hex()
    return Element(kind, address, bool(flags & 0x01), barcode if flags & 0x01 else None, source, identifier,
                   accessible=bool(flags & 0x08) or kind == TRANSPORT, exception=bool(flags & 0x04))


# ------------------------------------------------------------------ through NDMP

class ScsiChanger:
    """The SMC commands on an Agent whose SCSI device (the changer) is open."""

    def __init__(self, agent: Any, timeout_ms: int = CDB_TIMEOUT_MS) -> None:
        self.agent, self.timeout_ms = agent, timeout_ms

    async def execute(self, command: str, cdb: bytes, datain_len: int = 0) -> bytes:
        """The data-in of one CDB; ScsiError unless the status is GOOD."""
        reply = await self.agent.call("SCSI_EXECUTE_CDB", timeout=self.timeout_ms / 1000 + 30,
                                      body_fields=_cdb_fields(cdb, datain_len, self.timeout_ms))
        if reply.status != GOOD:
            raise ScsiError(command, reply.status, bytes(reply.ext_sense))
        return bytes(reply.datain)

    async def test_unit_ready(self) -> None:
        await self.execute("TEST UNIT READY", test_unit_ready_cdb())

    async def inquiry(self) -> Inquiry:
        return parse_inquiry(await self.execute("INQUIRY", inquiry_cdb(96), 96))

    async def geometry(self) -> Geometry:
        return parse_element_address_page(await self.execute("MODE SENSE", mode_sense_element_address_cdb(), 255))

    async def read_element_status(self) -> list[Element]:
        """Every element with volume tags and device identifiers (without them if the changer
        refuses them), in as many replies of ELEMENT_STATUS_ALLOC bytes as a big library needs."""
        for voltag, dvcid in ((True, True), (True, False), (False, False)):
            try:
                return await self._read_all(voltag, dvcid)
            except ScsiError as exc:
                fields = exc.key_asc_ascq
                if fields is None or fields[0] != 0x5 or (voltag, dvcid) == (False, False):
                    raise
        return []

    async def _read_all(self, voltag: bool, dvcid: bool) -> list[Element]:
        out: dict[int, Element] = {}
        start = 0
        for _ in range(MAX_STATUS_READS):
            data = await self.execute("READ ELEMENT STATUS", read_element_status_cdb(
                start=start, voltag=voltag, dvcid=dvcid), ELEMENT_STATUS_ALLOC)
            got = parse_element_status(data)
            out.update((e.address, e) for e in got)
            truncated = len(data) >= 8 and int.from_bytes(data[5:8], "big") > len(data) - 8
            if not truncated or not got or max(e.address for e in got) + 1 > 0xFFFF:
                break
            start = max(e.address for e in got) + 1
        return list(out.values())

    async def move_medium(self, transport: int, source: int, destination: int) -> None:
        await self.execute("MOVE MEDIUM", move_medium_cdb(transport, source, destination))

    async def initialize_element_status(self) -> None:
        await self.execute("INITIALIZE ELEMENT STATUS", initialize_element_status_cdb())


def _cdb_fields(cdb: bytes, datain_len: int, timeout_ms: int) -> dict[str, Any]:
    return {"flags": C.SCSI_DATA_IN if datain_len else 0, "timeout": timeout_ms, "datain_len": datain_len,
            "cdb": cdb, "dataout": b""}
