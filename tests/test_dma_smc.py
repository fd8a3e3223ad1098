"""The DMA's SMC parsing: sense data in one line, element status with and without tags."""

from __future__ import annotations

import struct

from ndmpd.dma.smc import (DRIVE, STORAGE, describe_sense, move_medium_cdb, parse_element_address_page,
                           parse_element_status, read_element_status_cdb)


def test_fixed_and_descriptor_sense_read_as_one_line():
    fixed = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x3B, 0x0E]) + bytes(4)
    assert describe_sense(fixed) == "illegal request: medium source element empty (asc 0x3b ascq 0x0e)"
    descriptor = bytes([0x72, 0x02, 0x04, 0x03, 0, 0, 0, 0])
    assert describe_sense(descriptor) == "not ready: manual intervention required (asc 0x04 ascq 0x03)"
    assert describe_sense(bytes([0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x99, 0x01])).startswith(
        "unit attention: unknown condition")


def test_cdbs_have_the_smc_layout():
    assert move_medium_cdb(16, 1024, 128) == bytes([0xA5, 0, 0, 16, 0x04, 0, 0, 128, 0, 0, 0, 0])
    cdb = read_element_status_cdb(voltag=True, dvcid=True, alloc=0x10000)
    assert len(cdb) == 12 and cdb[1] == 0x10 and cdb[6] == 0x01 and cdb[7:10] == b"\x01\x00\x00"


def _page(kind: int, voltag: bool, descriptors: list[bytes]) -> bytes:
    size = len(descriptors[0])
    body = b"".join(descriptors)
    return bytes([kind, 0x80 if voltag else 0]) + struct.pack(">H", size) + b"\0" + len(body).to_bytes(3, "big") + body


def test_element_status_with_tags_sources_and_identifiers():
    slot = struct.pack(">HBBBBBBBBH", 1025, 0x09, 0, 0, 0, 0, 0, 0, 0x80, 128) + b"TAPE07".ljust(32) + bytes(4) \
        + bytes(4)
    ident = b"ACME    LTO drive nst0".ljust(32)
    drive = struct.pack(">HBBBBBBBBH", 128, 0x08, 0, 0, 0, 0, 0, 0, 0, 0) + bytes(36) \
        + bytes([0x02, 0x01, 0, len(ident)]) + ident
    pages = _page(STORAGE, True, [slot.ljust(len(drive), b"\0")]) + _page(DRIVE, True, [drive])
    data = struct.pack(">HH", 128, 2) + b"\0" + len(pages).to_bytes(3, "big") + pages
    s, d = parse_element_status(data)
    assert (s.kind, s.address, s.full, s.barcode, s.source) == (STORAGE, 1025, True, "TAPE07", 128)
    assert (d.kind, d.full, d.barcode, d.identifier) == (DRIVE, False, None, "ACME    LTO drive nst0")


def test_element_address_page_after_a_block_descriptor():
    page = bytes([0x1D, 0x12]) + struct.pack(">HHHHHHHH", 16, 1, 1024, 8, 0, 1, 128, 2) + bytes(2)
    data = bytes([len(page) + 11, 0, 0, 8]) + bytes(8) + page
    g = parse_element_address_page(data)
    assert (g.transport, g.storage, g.import_export, g.drive) == ((16, 1), (1024, 8), (0, 1), (128, 2))
