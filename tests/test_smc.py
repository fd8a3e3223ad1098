"""The emulated SMC-3 changer: answers, sense data for bad input, state untouched by failures."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ndmpd.changer.library import LibraryError, VirtualLibrary
from ndmpd.changer.sense import CHECK_CONDITION, GOOD
from ndmpd.changer.smc import SmcEmulator
from ndmpd.devices import cartridge

MB = 1 << 20


@pytest.fixture
def changer(tmp_path):
    """Two drives (128, 129), four slots (1024-1027), one port (0); A1 and A2 in the first slots."""
    loads: list[tuple[str, Path | None]] = []
    library = VirtualLibrary("vlib0", tmp_path / "lib", ("d0", "d1"), 4, 1, lambda d, p: loads.append((d, p)))
    library.directory.mkdir()
    for barcode in ("A1", "A2"):
        cartridge.create(library.cartridge_path(barcode), MB, None, barcode)
        library.place(barcode, None, (2,))
    return SmcEmulator(library), loads


def move(src: int, dst: int) -> bytes:
    return bytes([0xA5, 0]) + struct.pack(">HHH", 0, src, dst) + bytes(4)


def res(kind: int = 0, start: int = 0, count: int = 0xFFFF, alloc: int = 8192, voltag: bool = True,
        dvcid: bool = False) -> bytes:
    return bytes([0xB8, (0x10 if voltag else 0) | kind]) + struct.pack(">HH", start, count) + \
        bytes([1 if dvcid else 0]) + alloc.to_bytes(3, "big") + bytes(2)


def sense_of(result) -> tuple[int, int, int]:
    assert result.status == CHECK_CONDITION and result.sense[0] == 0x70
    return result.sense[2] & 0x0F, result.sense[12], result.sense[13]


def elements(data: bytes) -> dict[int, tuple[int, str]]:
    """address -> (flags, volume tag) from READ ELEMENT STATUS data."""
    out, at = {}, 8
    while at < len(data):
        flags, size = data[at + 1], struct.unpack_from(">H", data, at + 2)[0]
        total = int.from_bytes(data[at + 5:at + 8], "big")
        at += 8
        for d in range(at, at + total, size):
            tag = data[d + 12:d + 44].decode().strip() if flags & 0x80 else ""
            out[struct.unpack_from(">H", data, d)[0]] = (data[d + 2], tag)
        at += total
    return out


def state_file(emulator: SmcEmulator) -> str:
    return (emulator.library.directory / "library.json").read_text()


def test_inquiry_identifies_a_media_changer_with_a_serial_number(changer):
    emulator, _ = changer
    std = emulator.execute(bytes([0x12, 0, 0, 0, 128, 0]), 128)
    assert std.status == GOOD and std.data_in[0] == 0x08 and std.data_in[8:36] == b"NDMPD   VIRTUAL LIBRARY 0100"
    serial = emulator.execute(bytes([0x12, 1, 0x80, 0, 64, 0]), 64).data_in
    assert serial[1] == 0x80 and serial[4:4 + serial[3]].decode() == emulator.library.serial
    assert emulator.execute(bytes([0x12, 0, 0, 0, 5, 0]), 128).data_in == std.data_in[:5]   # allocation length


def test_mode_sense_pages_describe_the_geometry(changer):
    emulator, _ = changer
    six = emulator.execute(bytes([0x1A, 0x08, 0x1D, 0, 255, 0]), 255).data_in
    assert six[0] == len(six) - 1 and six[4:6] == bytes([0x1D, 0x12])
    assert struct.unpack_from(">8H", six, 6) == (16, 1, 1024, 4, 0, 1, 128, 2)
    ten = emulator.execute(bytes([0x5A, 0x08, 0x3F, 0, 0, 0, 0, 1, 0, 0]), 256).data_in
    assert [ten[8], ten[28], ten[32]] == [0x1D, 0x1E, 0x1F]


def test_read_element_status_reports_tags_device_ids_and_honours_the_allocation_length(changer):
    emulator, _ = changer
    data = emulator.execute(res(dvcid=True), 8192).data_in
    seen = elements(data)
    assert seen[1024] == (0x09, "A1") and seen[1025] == (0x09, "A2") and seen[1026][0] & 1 == 0
    assert set(seen) == {0, 16, 128, 129, 1024, 1025, 1026, 1027}
    assert b"NDMPD   d0" in data
    full = len(data)
    assert int.from_bytes(data[5:8], "big") == full - 8
    short = emulator.execute(res(alloc=20, dvcid=True), 8192)
    assert short.status == GOOD and short.data_in == data[:20]                      # header still says it all
    assert emulator.execute(res(alloc=0), 8192).data_in == b""
    assert emulator.execute(res(alloc=0xFFFFFF, dvcid=True), 1 << 20).data_in == data
    drives = elements(emulator.execute(res(kind=4), 8192).data_in)
    assert set(drives) == {128, 129}


def test_moves_load_drives_and_report_their_source(changer):
    emulator, loads = changer
    assert emulator.execute(move(1025, 129)).status == GOOD
    assert loads[-1] == ("d1", emulator.library.cartridge_path("A2"))
    data = emulator.execute(res(kind=4, voltag=False), 8192).data_in
    descriptor = data[16 + 12:16 + 24]                                           # element 129
    assert struct.unpack_from(">H", descriptor)[0] == 129 and descriptor[9] & 0x80
    assert struct.unpack_from(">H", descriptor, 10)[0] == 1025
    exchange = bytes([0xA6, 0]) + struct.pack(">HHHH", 0, 1024, 129, 1025) + bytes(2)
    assert emulator.execute(exchange).status == GOOD
    seen = elements(emulator.execute(res(), 8192).data_in)
    assert seen[129][1] == "A1" and seen[1025][1] == "A2" and seen[1024][0] & 1 == 0
    assert emulator.execute(move(129, 1024)).status == GOOD and loads[-1] == ("d1", None)


@pytest.mark.parametrize("cdb,expected", [
    (move(1026, 1027), (5, 0x3B, 0x0E)),                   # source empty
    (move(1024, 1025), (5, 0x3B, 0x0D)),                   # destination full
    (move(1024, 999), (5, 0x21, 0x01)),                    # no such element
    (move(1024, 16), (5, 0x21, 0x01)),                     # the picker is not a place to keep media
    (bytes([0xA5, 0]) + struct.pack(">HHH", 1024, 1024, 1026) + bytes(4), (5, 0x21, 0x01)),   # bad transport
    (move(1024, 1026)[:11], (5, 0x24, 0x00)),              # CDB too short
    (move(1024, 1026) + b"\0", (5, 0x24, 0x00)),           # CDB too long
    (bytes([0x12, 0, 0, 0, 64]), (5, 0x24, 0x00)),         # 5-byte INQUIRY
    (bytes([0xEE]) + bytes(11), (5, 0x20, 0x00)),          # unknown opcode
    (bytes([0x12, 0, 0x80, 0, 64, 0]), (5, 0x24, 0x00)),   # page code without EVPD
    (bytes([0x1A, 0, 0x05, 0, 255, 0]), (5, 0x24, 0x00)),  # a mode page a changer does not have
    (res(kind=7), (5, 0x24, 0x00)),                        # element type code
    (res(start=5000), (5, 0x21, 0x01)),                    # nothing at or after the start
])
def test_bad_commands_get_sense_data_and_change_nothing(changer, cdb, expected):
    emulator, loads = changer
    before = state_file(emulator)
    result = emulator.execute(cdb, 8192)
    assert sense_of(result) == expected
    assert state_file(emulator) == before and loads == []
    sense = emulator.execute(bytes([0x03, 0, 0, 0, 18, 0]), 18).data_in          # REQUEST SENSE replays it
    assert (sense[2], sense[12], sense[13]) == expected
    assert emulator.execute(bytes([0x03, 0, 0, 0, 18, 0]), 18).data_in[2] == 0    # then it is cleared


def test_prevent_medium_removal_locks_the_ports_for_the_operator(changer):
    emulator, _ = changer
    library = emulator.library
    assert emulator.execute(move(1024, 0)).status == GOOD
    assert emulator.execute(bytes([0x1E, 0, 0, 0, 1, 0])).status == GOOD
    with pytest.raises(LibraryError, match="removal prevented"):
        library.remove("A1")
    emulator.reset()                                                            # RESET DEVICE releases it
    assert library.remove("A1") == "A1"
    assert json.loads(state_file(emulator))["prevent"] is False


def test_a_drive_the_mover_is_using_cannot_be_unloaded(tmp_path):
    library = VirtualLibrary("vlib0", tmp_path / "lib", ("d0",), 2, 0)
    library.directory.mkdir()
    cartridge.create(library.cartridge_path("B1"), MB, None, "B1")
    library.place("B1", None, (2,))
    emulator = SmcEmulator(library, drive_busy=lambda name: name == "d0")
    assert emulator.execute(move(1024, 128)).status == GOOD
    assert sense_of(emulator.execute(move(128, 1025))) == (5, 0x53, 0x02)


def test_state_survives_a_new_library_object_and_removed_cartridge_files(changer, tmp_path):
    emulator, _ = changer
    emulator.execute(move(1024, 128))
    again = VirtualLibrary("vlib0", tmp_path / "lib", ("d0", "d1"), 4, 1)
    with again.state() as state:
        assert state.elements[128].barcode == "A1" and state.elements[128].source == 1024
    again.cartridge_path("A2").unlink()
    with again.state() as state:
        assert state.elements[1025].barcode is None
