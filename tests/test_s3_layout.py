"""The S3 cartridge index (no server needed): it round-trips, refuses damage, a cut keeps exactly
the bytes and records before it, and the record map never lets spacing cross a filemark."""

from __future__ import annotations

import zlib

import pytest

from ndmpd.devices.cartridge import OVERHEAD
from ndmpd.devices.s3_layout import (HEADER_SIZE, INDEX_CHECK, INDEX_V1, PREAMBLE, Index, IndexCorrupt, Run,
                                     Segment)


def index() -> Index:
    return Index(b"H" * HEADER_SIZE, 7, [Segment("a", 1000), Segment("b", 500)], [Run(HEADER_SIZE, 100, 3)])


def test_round_trip_and_size():
    packed = index().pack()
    back = Index.unpack(packed, "x")
    assert back == index() and back.size == HEADER_SIZE + 1500


@pytest.mark.parametrize("damage", [lambda b: b[:-1], lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], lambda b: b""])
def test_damage_is_refused(damage):
    with pytest.raises(IndexCorrupt):
        Index.unpack(damage(index().pack()), "x")


def test_a_cut_shortens_the_straddling_segment_and_drops_the_rest():
    i = index()
    i.cut(HEADER_SIZE + 1200, OVERHEAD)
    assert i.segments == [Segment("a", 1000), Segment("b", 200)]
    i.cut(HEADER_SIZE + 1000, OVERHEAD)
    assert i.segments == [Segment("a", 1000)]
    i.cut(HEADER_SIZE, OVERHEAD)
    assert i.segments == [] and i.size == HEADER_SIZE


def test_a_cut_keeps_only_whole_records_before_it():
    i = Index(b"")
    stride = OVERHEAD + 100
    i.note_records(HEADER_SIZE, 100, 10, OVERHEAD)
    i.cut(HEADER_SIZE + 4 * stride, OVERHEAD)
    assert i.runs == [Run(HEADER_SIZE, 100, 4)]
    i.cut(HEADER_SIZE, OVERHEAD)
    assert i.runs == []


def test_adjacent_records_of_one_length_merge_and_a_filemark_between_splits():
    i = Index(b"")
    stride = OVERHEAD + 100
    i.note_records(HEADER_SIZE, 100, 2, OVERHEAD)
    i.note_records(HEADER_SIZE + 2 * stride, 100, 3, OVERHEAD)       # the next batch
    assert i.runs == [Run(HEADER_SIZE, 100, 5)]
    after_mark = HEADER_SIZE + 5 * stride + OVERHEAD                  # a plain filemark: a 0-byte entry
    i.note_records(after_mark, 100, 4, OVERHEAD)
    assert len(i.runs) == 2
    # forward from the start: the 5 records, not the 9 (a filemark lies between)
    assert i.run_at(HEADER_SIZE, OVERHEAD, ending=False) == (5, stride)
    assert i.run_at(HEADER_SIZE + 5 * stride, OVERHEAD, ending=False) == (0, 0)     # on the filemark
    assert i.run_at(HEADER_SIZE + 5 * stride, OVERHEAD, ending=True) == (5, stride)
    assert i.run_at(after_mark, OVERHEAD, ending=True) == (0, 0)                    # behind: the filemark
    assert i.run_at(after_mark + stride, OVERHEAD, ending=False) == (3, stride)
    assert i.run_at(after_mark + 7, OVERHEAD, ending=False) == (0, 0)               # not on a boundary


def test_runs_of_different_lengths_back_to_back():
    i = Index(b"")
    i.note_records(HEADER_SIZE, 100, 2, OVERHEAD)
    boundary = HEADER_SIZE + 2 * (OVERHEAD + 100)
    i.note_records(boundary, 50, 3, OVERHEAD)
    assert i.run_at(boundary, OVERHEAD, ending=True) == (2, OVERHEAD + 100)
    assert i.run_at(boundary, OVERHEAD, ending=False) == (3, OVERHEAD + 50)


def many(count: int) -> Index:
    i = Index(b"H" * HEADER_SIZE, 1)
    at = HEADER_SIZE
    for n in range(count):
        i.segments.append(Segment(f"seg-{n}", 200))
        i.note_records(at, 100, 1, OVERHEAD)
        at += 200
    return i


def test_an_index_with_a_base_round_trips_through_its_two_objects():
    i = many(1000)
    stored = {"base-1": i.pack_base()}
    i.rebase("base-1")
    i.segments.append(Segment("seg-new", 50))
    i.note_records(i.size - 50, 10, 1, OVERHEAD)
    packed = i.pack()
    assert len(packed) < HEADER_SIZE + 200                      # the filemark's PUT carries the tail only
    back = Index.unpack(packed, "x", stored.__getitem__)
    assert back.segments == i.segments and back.runs == i.runs and back.size == i.size
    assert back.objects() == {s.key for s in i.segments} | {"base-1"}


def test_a_base_that_does_not_match_or_is_damaged_is_refused():
    i = many(10)
    base = i.pack_base()
    i.rebase("b")
    i.base_segments += 1                                        # claims one more than the base holds
    with pytest.raises(IndexCorrupt, match="does not match"):
        Index.unpack(i.pack(), "x", lambda key: base)
    i.base_segments -= 1
    with pytest.raises(IndexCorrupt, match="base index b is corrupt"):
        Index.unpack(i.pack(), "x", lambda key: base[:-1])


def test_a_cut_into_the_base_drops_it_and_a_cut_after_it_keeps_it():
    i = many(10)
    i.rebase("b")
    i.segments.append(Segment("t", 200))
    i.cut(i.size - 100, OVERHEAD)                               # inside the tail
    assert i.base == "b" and i.segments[-1] == Segment("t", 100)
    i.cut(HEADER_SIZE + 500, OVERHEAD)                          # inside the base
    assert i.base == "" and i.tail == len(i.segments) + len(i.runs)
    assert Index.unpack(i.pack(), "x").segments == i.segments   # whole again, no base needed


def test_records_after_a_base_never_merge_into_its_frozen_run():
    i = Index(b"")
    i.note_records(HEADER_SIZE, 100, 2, OVERHEAD)
    i.segments.append(Segment("a", 2 * (OVERHEAD + 100)))
    i.rebase("b")
    i.note_records(HEADER_SIZE + 2 * (OVERHEAD + 100), 100, 3, OVERHEAD)
    assert [r.count for r in i.runs] == [2, 3] and i.tail == 1
    assert i.run_at(HEADER_SIZE, OVERHEAD, ending=False) == (2, OVERHEAD + 100)


def test_a_version_1_index_still_reads():
    body = PREAMBLE.build(dict(version=1)) + INDEX_V1.build(dict(
        generation=3, header=b"H" * HEADER_SIZE, segments=[dict(length=10, key="k")],
        runs=[dict(offset=HEADER_SIZE, length=1, count=1)]))
    back = Index.unpack(body + INDEX_CHECK.build(dict(check=zlib.crc32(body))), "x")
    assert back.segments == [Segment("k", 10)] and back.generation == 3 and back.base == ""


@pytest.mark.parametrize("base", [b"NDMPDS3B\0\0", b"not a base at all", b"NDMPDS3B" + b"\xff" * 12],
                         ids=["truncated", "foreign", "huge-count"])
def test_a_base_object_with_a_right_checksum_and_a_wrong_body_is_refused(base):
    """The base's checksum only proves it was written whole: a body that is no base (another
    object's bytes under its key, a newer layout) is IndexCorrupt, never a parser's exception."""
    i = index()
    i.rebase("base-1")
    body = base + INDEX_CHECK.build(dict(check=zlib.crc32(base)))
    with pytest.raises(IndexCorrupt, match="base index base-1 is truncated or malformed"):
        Index.unpack(i.pack(), "x", lambda key: body)
