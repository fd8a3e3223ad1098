"""The S3 cartridge index (no server needed): it round-trips, refuses damage, a cut keeps exactly
the bytes and records before it, and the record map never lets spacing cross a filemark."""

from __future__ import annotations

import pytest

from ndmpd.devices.cartridge import OVERHEAD
from ndmpd.devices.s3_layout import HEADER_SIZE, Index, IndexCorrupt, Run, Segment


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
