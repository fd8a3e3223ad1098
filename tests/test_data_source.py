"""Direct-access reads of an image over a data connection (ndmpd/data/source.py), against a
mover that serves each NOTIFY_DATA_READ once, as ndmjob's does."""

from __future__ import annotations

import os
import socket
import threading

from ndmpd.data.source import RECORD, DataReadSource


class OneShotMover:
    """Serves requested ranges of ``image`` on a socket and remembers what was asked."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.ours, self.theirs = socket.socketpair()
        self.ours.settimeout(0.25)
        self.asked: list[tuple[int, int]] = []

    def request(self, offset: int, length: int) -> None:
        self.asked.append((offset, length))
        data = self.image[offset:offset + length]
        threading.Thread(target=self.theirs.sendall, args=(data,), daemon=True).start()


def read(source: DataReadSource, offset: int, count: int) -> bytes:
    """``count`` bytes at ``offset``, read as the stream reader does: into a 1 MiB buffer, so
    it takes everything the current read holds, past the entry."""
    source.seek(offset)
    out = bytearray()
    view = memoryview(bytearray(1 << 20))
    while len(out) < count:
        got = source.readinto(view)
        assert got, "the source ended early"
        out += view[:got]
    return bytes(out[:count])


def test_picks_sharing_records_are_served_without_asking_for_a_record_twice():
    image = os.urandom(30 * RECORD)
    mover = OneShotMover(image)
    source = DataReadSource(mover.ours, mover.request, threading.Event(), image_size=len(image), sequential=False)
    forward = [(25 * RECORD + 512, 3000), (26 * RECORD + 1024, 600), (27 * RECORD + 2048, 5000),
               (29 * RECORD + 9000, 1000)]
    for offset, count in forward:
        assert read(source, offset, count) == image[offset:offset + count]
    records = [r for offset, length in mover.asked for r in range(offset // RECORD, (offset + length) // RECORD)]
    assert len(records) == len(set(records)), mover.asked             # each record asked for once
    assert all(offset % RECORD == 0 and length % RECORD == 0 for offset, length in mover.asked)
    assert max(offset + length for offset, length in mover.asked) <= len(image)   # never past the image
    assert read(source, 2 * RECORD, 700) == image[2 * RECORD:2 * RECORD + 700]     # far back: asked anew


def test_reads_are_whole_records_of_the_movers_size_when_the_dma_says_it():
    """NDMPD_RECORD_SIZE=65536: every read starts and ends on the mover's 64 KiB records (ndmjob's
    mover serves nothing else), the last one ending at the image's padded last record."""
    mover_record = 64 << 10
    image = os.urandom(9 * mover_record)                   # the mover padded the image to its records
    mover = OneShotMover(image)
    source = DataReadSource(mover.ours, mover.request, threading.Event(), image_size=8 * mover_record + 700,
                            sequential=False, record=mover_record)
    for offset, count in ((3 * RECORD + 100, 2000), (5 * mover_record + 7, 70_000), (8 * mover_record + 10, 600)):
        assert read(source, offset, count) == image[offset:offset + count]
    assert mover.asked and all(offset % mover_record == 0 and length % mover_record == 0
                               for offset, length in mover.asked), mover.asked
    assert max(offset + length for offset, length in mover.asked) == 9 * mover_record
