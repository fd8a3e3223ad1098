"""Header checksums and the decoded-field cache: the same accept/refuse decisions as GNU tar's
rule (the unsigned byte sum, or the old signed one) on every kind of block, cached or not."""

from __future__ import annotations

import random

import pytest

from ndmpd.engine import pax


def _reference_ok(block: bytes) -> bool:
    """GNU tar's rule, the slow and obvious way."""
    text = block[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        stored = int(text, 8) if text else 0
    except ValueError:
        return False
    rest = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(rest)
    signed = sum(b - 256 if b >= 0x80 else b for b in rest)
    return stored in (unsigned, signed)


def _with_checksum(block: bytearray, value: int) -> bytes:
    block[148:156] = b"%06o\0 " % value
    return bytes(block)


def _headers() -> list[bytes]:
    """Plain, non-ASCII, high-sum (over 65,521) and corrupted blocks, with right and wrong sums."""
    rnd = random.Random(19)
    blocks = []
    for kind in range(400):
        block = bytearray(pax.ustar_block(b"./d/f%d" % kind, 0o644, 0, 0, kind * 7, 1_700_000_000, pax.REGTYPE))
        if kind % 4 == 1:                       # a UTF-8 name: non-ASCII, signed and unsigned sums differ
            block[0:12] = "./é-ü-ß-ñ".encode()
        elif kind % 4 == 2:                     # mostly high bytes: the unsigned sum passes 65,521
            for at in range(512):
                if not 148 <= at < 156:
                    block[at] = rnd.randrange(0x80, 0x100)
        elif kind % 4 == 3:                     # random damage
            for _ in range(rnd.randrange(1, 6)):
                block[rnd.randrange(512)] = rnd.randrange(256)
        rest = bytes(block[:148]) + b" " * 8 + bytes(block[156:])
        unsigned = sum(rest)
        signed = sum(b - 256 if b >= 0x80 else b for b in rest)
        for value in {unsigned, signed, unsigned + 1, unsigned - 65521, unsigned + 65521, signed + 256}:
            if 0 <= value < 8 ** 6:
                blocks.append(_with_checksum(block, value))
        blocks.append(bytes(block))             # as damaged (or as written)
    return blocks


def test_block_sum_is_the_exact_byte_sum():
    rnd = random.Random(7)
    for block in _headers() + [bytes(512), b"\xff" * 512, bytes(rnd.randrange(256) for _ in range(512))]:
        assert pax.block_sum(block) == sum(block)


@pytest.mark.parametrize("cached", [False, True])
def test_check_block_decides_as_gnu_tar(cached):
    seen: dict = {}
    blocks = _headers()
    accepted = refused = 0
    for _ in range(2):                          # the second time with every field in the cache
        for block in blocks:
            try:
                pax.check_block(block, seen if cached else None)
                ok = True
            except pax.HeaderError:
                ok = False
            assert ok == _reference_ok(block), block
            accepted += ok
            refused += not ok
    assert accepted and refused                 # both decisions were exercised


def test_a_header_valid_only_by_its_signed_sum_is_accepted():
    block = bytearray(pax.ustar_block(b"x", 0o644, 0, 0, 0, 0, pax.REGTYPE))
    block[0:4] = b"\xe9\xe9\xe9x"
    rest = bytes(block[:148]) + b" " * 8 + bytes(block[156:])
    signed = sum(b - 256 if b >= 0x80 else b for b in rest)
    assert signed != sum(rest)
    good = _with_checksum(block, signed)
    assert pax.parse_ustar(good, {}).name == b"\xe9\xe9\xe9x"
    with pytest.raises(pax.HeaderError):
        pax.parse_ustar(_with_checksum(block, signed + 1), {})


def test_cached_fields_decode_as_uncached_ones():
    seen: dict = {}
    for size in (0, 1, 511, 8 ** 11 - 1):
        for mtime in (0, 1_700_000_000, 8 ** 11 - 1):
            block = pax.ustar_block(b"./f", 0o600, 7, 8, size, mtime, pax.REGTYPE, uname=b"u", gname=b"g")
            for _ in range(2):
                assert pax.parse_ustar(block, seen) == pax.parse_ustar(block)
                assert pax.parse_ustar(block, seen).size == size
                assert pax.parse_ustar(block, seen).mtime == mtime


def test_the_field_cache_stays_bounded():
    seen: dict = {}
    for n in range(10_000):
        pax.parse_ustar(pax.ustar_block(b"./f", 0o600, n, 0, n, n, pax.REGTYPE), seen)
    assert len(seen) <= 4096
