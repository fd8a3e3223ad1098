"""The mover's reads of a sealed cartridge return exactly the records there: never one the
cartridge no longer holds (rewritten after the record before it was read, where a read-ahead
would go stale), a tampered record fails when it is read and not before, with none of its bytes
in the buffer, and reads after a move of the head or a TAPE_READ in between are right."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ndmpd.devices import cartridge
from ndmpd.devices.sealed_records import CartridgeKeys
from ndmpd.devices.tape import FilemarkReached, MediaError
from ndmpd.devices.virtual_tape import VirtualTape
from ndmpd.keystore import Keystore, KeySource

SIZE = 8192


def drive(tmp_path: Path, records: int = 0) -> tuple[VirtualTape, list[bytes]]:
    """An encrypting drive, open for writing, its cartridge holding ``records`` random records
    and a filemark, the head rewound."""
    keys = Keystore(KeySource(tmp_path / "keys"))
    if not keys.names():
        keys.create("k")
    tape = VirtualTape("vt", tmp_path / "c.img", 64 << 20, keys=CartridgeKeys("vt", keys, "k"))
    tape.open(write=True)
    written = [os.urandom(SIZE) for _ in range(records)]
    if written:
        write(tape, written)
        tape.rewind()
    return tape, written


def write(tape: VirtualTape, records: list[bytes]) -> None:
    tape.rewind()
    for record in records:
        tape.write_record(record)
    tape.write_filemarks(1)


def read_into(tape: VirtualTape) -> bytes:
    buffer = memoryview(bytearray(SIZE))
    return bytes(buffer[:tape.read_record_into(buffer)])


def test_a_record_read_ahead_is_not_returned_once_the_cartridge_was_rewritten(tmp_path):
    tape, _ = drive(tmp_path)
    old = [os.urandom(SIZE) for _ in range(4)]
    new = [os.urandom(SIZE) for _ in range(4)]
    write(tape, [b"label".ljust(SIZE, b".")] + old)
    tape.rewind()
    assert tape.space_records(1).resid == 0
    assert read_into(tape) == old[0]                      # a read-ahead would hold record 2 (old[1]) now
    assert tape.space_records(-1).resid == 0
    for record in new:                                    # from record 1 on: same places, same sizes
        tape.write_record(record)
    tape.write_filemarks(1)
    tape.rewind()
    assert tape.space_records(2).resid == 0               # to record 2: rewritten since
    assert read_into(tape) == new[1]
    tape.rewind()
    assert tape.space_records(1).resid == 0
    assert [read_into(tape) for _ in range(4)] == new
    with pytest.raises(FilemarkReached):
        read_into(tape)
    tape.close()


def test_reads_after_moving_the_head_return_the_records_there(tmp_path):
    tape, records = drive(tmp_path, 6)
    assert read_into(tape) == records[0]
    assert tape.space_records(2).resid == 0               # skip 1 and 2
    assert read_into(tape) == records[3]
    assert tape.space_records(-3).resid == 0
    assert read_into(tape) == records[1]
    assert tape.read_record(SIZE) == records[2]           # a TAPE_READ in between
    assert read_into(tape) == records[3]
    tape.close()


def test_a_tampered_record_fails_when_it_is_read_with_none_of_its_bytes(tmp_path):
    tape, records = drive(tmp_path, 3)
    tape.close()
    with cartridge.Cartridge(tmp_path / "c.img", False) as cart:
        target = [e for e in cart.entries() if not e.is_filemark][1]
    data = bytearray((tmp_path / "c.img").read_bytes())
    data[target.offset + cartridge.HEADER_SIZE + 100] ^= 1
    (tmp_path / "c.img").write_bytes(bytes(data))
    tape.open(write=False)
    tape.rewind()
    assert read_into(tape) == records[0]                  # record 1's failure is not this read's
    buffer = memoryview(bytearray(b"\xee" * SIZE))
    with pytest.raises(MediaError, match="record 1"):
        tape.read_record_into(buffer)
    assert records[1][:64] not in bytes(buffer) and set(bytes(buffer)) <= {0, 0xEE}
    tape.close()
