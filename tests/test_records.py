"""Record marking: multi-fragment records in, <= 64 KiB fragments out, bounded buffering."""

import struct

from ndmpd.wire.records import LAST_FRAGMENT, OversizedRecord, RecordReader, frame


def fragments(record: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(record), size):
        chunk = record[i:i + size]
        out += struct.pack(">I", (LAST_FRAGMENT if i + size >= len(record) else 0) | len(chunk)) + chunk
    return out


def test_record_split_in_xdrrec_sized_fragments_and_single_bytes_reassembles():
    record = bytes(range(256)) * 80                  # 20 KiB, like a TAPE_WRITE from ndmjob
    wire = fragments(record, 3996)
    reader = RecordReader(1 << 20)
    got = []
    for i in range(len(wire)):                       # worst case: one byte per read
        got += reader.feed(wire[i:i + 1])
    assert got == [record]


def test_zero_length_fragments_and_two_records_in_one_read():
    a, b = b"A" * 30, b"B" * 40
    wire = struct.pack(">I", 0) + fragments(a, 7) + fragments(b, 100)
    assert RecordReader(1 << 20).feed(wire) == [a, b]


def test_oversized_record_is_skipped_keeping_only_its_head():
    reader = RecordReader(1000)
    big = bytes(range(24)) + b"x" * 5000
    out = reader.feed(fragments(big, 512) + fragments(b"ok" * 20, 100))
    assert isinstance(out[0], OversizedRecord) and out[0].head == bytes(range(24)) and out[0].length == 5024
    assert out[1] == b"ok" * 20
    assert reader.pending == 0


def test_hostile_fragment_length_does_not_buffer_beyond_the_limit():
    reader = RecordReader(64 * 1024)
    reader.feed(struct.pack(">I", 0x7FFFFFFF))
    for _ in range(100):
        reader.feed(b"z" * 65536)
    assert reader.pending <= 64 * 1024 + 24


def test_frame_cuts_large_records_into_64k_fragments():
    record = b"r" * (200 * 1024)
    wire = frame(record)
    marks = []
    pos = 0
    while pos < len(wire):
        mark = struct.unpack_from(">I", wire, pos)[0]
        marks.append(mark)
        pos += 4 + (mark & 0x7FFFFFFF)
    assert all((m & 0x7FFFFFFF) <= 65536 for m in marks)
    assert [bool(m & LAST_FRAGMENT) for m in marks] == [False] * (len(marks) - 1) + [True]
    assert RecordReader(1 << 20).feed(wire) == [record]
