"""Sparse files: finding holes (SEEK_DATA/SEEK_HOLE) and the GNU sparse 1.0 map.

In the stream a sparse member carries a decimal map (count, then offset/length pairs, one
number per line, padded to a block) followed by the data extents only; pax records
``GNU.sparse.*`` give the real name and size. GNU tar and bsdtar restore the holes.
"""

from __future__ import annotations

import os
from array import array

from .pax import BLOCK, round_up

Extent = tuple[int, int]      # (offset, length)


def looks_sparse(blocks: int, size: int) -> bool:
    """Worth mapping: fewer allocated bytes than the size says."""
    return size > BLOCK and blocks * 512 < size


def data_extents(fd: int, size: int) -> list[Extent]:
    """The data extents of an open file up to ``size``; a hole at the end is an empty last extent."""
    extents: list[Extent] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:           # ENXIO: only a hole remains
            break
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end - start))
        pos = end
    if not extents or extents[-1][0] + extents[-1][1] < size:
        extents.append((size, 0))
    return extents


def is_dense(extents: list[Extent], size: int) -> bool:
    return len(extents) == 1 and extents[0] == (0, size)


def encode_map(extents: list[Extent]) -> bytes:
    """The block-padded map that precedes the data of a sparse 1.0 member."""
    text = b"%d\n" % len(extents) + b"".join(b"%d\n%d\n" % extent for extent in extents)
    return text + bytes(round_up(len(text)) - len(text))


MAX_EXTENTS = 1 << 20


def check_extents(extents: list[Extent], realsize: int) -> None:
    """Raise ValueError unless every extent lies inside a file of ``realsize`` bytes, in order
    (so no offset from an image can seek a write beyond the file the image describes)."""
    end = 0
    for offset, length in extents:
        if offset < end or length < 0 or offset + length > realsize:
            raise ValueError(f"extent ({offset}, {length}) is outside the file or out of order")
        end = offset + length


class ExtentList:
    """Extents as one flat int64 array: 16 bytes each instead of ~100 as tuples, so a map of a
    million extents (MAX_EXTENTS) costs 16 MiB, not 100."""

    def __init__(self, flat: array) -> None:
        self._flat = flat

    def __len__(self) -> int:
        return len(self._flat) // 2

    def __iter__(self):
        numbers = iter(self._flat)
        return zip(numbers, numbers)


def decode_map(read_block) -> tuple[ExtentList, int]:
    """Parse a sparse 1.0 map with ``read_block()`` giving the next 512 bytes.

    Returns the extents and the number of map bytes consumed; raises ValueError when the
    map is malformed or absurdly long.
    """
    numbers = array("q")
    pending = b""
    consumed = 0
    wanted = None
    while wanted is None or len(numbers) < wanted:
        block = read_block()
        consumed += len(block)
        lines = (pending + block).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not (line.isdigit() and line.isascii()) or len(line) > 19 or int(line) >= 1 << 63:
                raise ValueError(f"not a number in the map: {line[:40]!r}")
            numbers.append(int(line))
            if wanted is None:
                if not 0 <= numbers[0] <= MAX_EXTENTS:
                    raise ValueError("sparse map too long")
                wanted = 1 + 2 * numbers[0]
            if len(numbers) == wanted:
                break
        if (wanted is None or len(numbers) < wanted) and len(pending) > 40:
            raise ValueError("sparse map line too long")
    return ExtentList(numbers[1:]), consumed
