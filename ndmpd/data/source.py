"""The image as the restore reads it: bytes from the data connection, asked for with NOTIFY_DATA_READ.

A sequential restore asks once for everything from offset 0. Direct access asks for a
first slice at an entry's offset and further slices as the reader needs them, so only the
part of the image holding the selected entries crosses the data connection. A read is
always consumed to its end before the next is asked for (the mover serves one at a time).

Reads are whole records of the mover's grid: 10 KiB (tar's record, to which the image is
padded) unless the DMA says which record size its mover reads the tape in (``record``, from
env NDMPD_RECORD_SIZE): a mover such as ndmjob's serves only whole records of its own size,
so a read on any other grid would stall it.

Direct access never asks for a record it has already received: small entries share
records, and some movers (ndmjob's) stall when asked again for the record they just sent.
The last TAIL_KEEP bytes received are kept, and a pick that starts inside them is served
from there, the next read starting where the last one ended.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from ..engine.reader import READ_SIZE

ALL_ONES = (1 << 64) - 1
RECORD = 10240                     # reads start and end on these boundaries (the image is padded to them)
FIRST_SLICE = 64 << 10             # an entry's headers and small data; at least one record of
                                   # the usual sizes (ndmjob's mover never serves less than a record)
NEXT_SLICE = 8 << 20
TAIL_KEEP = READ_SIZE + FIRST_SLICE  # direct access: bytes kept to serve a pick inside the last
                                     # read (the stream reader may have read this far past its entry)
DRAIN_CHUNK = 1 << 20
FINISH_PATIENCE = 2.0


class SourceClosed(Exception):
    """The data connection ended before the bytes asked for arrived."""


class DataReadSource:
    """A ByteSource over a data connection that issues NOTIFY_DATA_READ on demand."""

    def __init__(self, sock: socket.socket, request_read: Callable[[int, int], None],
                 cancel: threading.Event, image_size: int | None = None, sequential: bool = True,
                 record: int = RECORD) -> None:
        self.sock = sock
        self.record = record if record > 0 else RECORD
        self._request = request_read
        self._cancel = cancel
        self.image_size = image_size
        self.sequential = sequential
        self.position = 0              # image offset of the next byte the reader gets
        self.left = 0                  # bytes of the current read still to arrive
        self.bytes_received = 0
        self.read_offset = 0           # the last read asked for (DATA_GET_STATE)
        self.read_length = 0
        self._tail = bytearray()       # direct access: the last bytes received, ending at position
        self._replay = memoryview(b"")   # bytes from _tail the reader gets before the socket's

    @property
    def seekable(self) -> bool:
        """Direct access can go back (a restore fetching a hard link's contents); a sequential
        read of the whole image cannot."""
        return not self.sequential

    def _replayable(self, offset: int) -> bool:
        """The bytes from ``offset`` on were received already and are still in the tail, and
        the next read can start where the last one ended (a record boundary)."""
        end = self.position + len(self._replay)
        return (not self.sequential and not self.left and end % self.record == 0
                and end - len(self._tail) <= offset < end)

    def _ask(self, offset: int, length: int) -> None:
        """Ask for whole records around ``offset`` (some movers serve nothing less than a
        record) and skip the head before ``offset``; bytes already received are replayed."""
        record = self.record
        start = offset - offset % record
        end = ALL_ONES if length == ALL_ONES else -(-(offset + length) // record) * record
        if end != ALL_ONES and self.image_size is not None and start < self.image_size:
            end = min(end, -(-self.image_size // record) * record)    # never past the image's last record
        if self._replayable(offset):
            received = self.position + len(self._replay)
            self._replay = memoryview(bytes(self._tail[len(self._tail) - (received - offset):]))
            self.position, start = offset, received
            if end != ALL_ONES and end <= start:
                return                                  # all of it is in the tail
        else:
            self._tail.clear()
            self._replay = memoryview(b"")
            self.position = start
        length = ALL_ONES if end == ALL_ONES else end - start
        self.read_offset, self.read_length = start, length
        self.left = length
        self._request(start, length)
        if offset > self.position:
            self._discard(offset - self.position)

    def seek(self, offset: int) -> None:
        """Continue reading at ``offset``: skip ahead inside the current read, else drain it and ask anew."""
        ahead = len(self._replay) + self.left
        if ahead and self.position <= offset < self.position + ahead:
            self._discard(offset - self.position)
            return
        if self.left and self.left != ALL_ONES:
            self._discard(ahead)
        elif self.left == ALL_ONES and offset >= self.position:
            self._discard(offset - self.position)
            return
        self._ask(offset, ALL_ONES if self.sequential else FIRST_SLICE)

    def finish(self, patience: float = FINISH_PATIENCE) -> None:
        """Take the rest of the current read, so the mover is idle (not mid-write) when we hang up;
        give up once the mover sends nothing for ``patience`` seconds (it stopped at a filemark).
        Never raises: the job is over either way."""
        self._replay = memoryview(b"")
        if not self.left or self.left == ALL_ONES:
            return
        try:
            self._discard(self.left, patience)
        except SourceClosed:
            pass

    def _discard(self, count: int, patience: float | None = None) -> None:
        view = memoryview(bytearray(min(count, DRAIN_CHUNK) or 1))
        while count:
            got = self._recv(view[:min(count, len(view))], patience)
            if not got:
                return
            count -= got

    def readinto(self, view: memoryview) -> int:
        if self._replay:
            return self._recv(view)
        if not self.left:
            if self.image_size and self.position >= self.image_size:
                return 0
            self._ask(self.position, ALL_ONES if self.sequential else NEXT_SLICE)
        want = len(view) if self.left == ALL_ONES else min(len(view), self.left)
        return self._recv(view[:want])

    def _recv(self, view: memoryview, patience: float | None = None) -> int:
        """Some bytes; 0 at the end of a sequential image, or after ``patience`` quiet seconds."""
        if self._replay:
            got = min(len(view), len(self._replay))
            view[:got] = self._replay[:got]
            self._replay = self._replay[got:]
            self.position += got
            return got
        waiting_since = time.monotonic()
        while True:
            if self._cancel.is_set():
                raise SourceClosed("restore aborted")
            try:
                got = self.sock.recv_into(view)
            except socket.timeout:
                if patience is not None and time.monotonic() - waiting_since >= patience:
                    return 0
                continue
            except OSError as exc:
                raise SourceClosed(f"data connection failed: {exc}") from None
            if not got:
                if self.left == ALL_ONES:
                    return 0           # a sequential image ends where the mover stops
                raise SourceClosed("data connection closed before the requested bytes arrived")
            self.position += got
            self.bytes_received += got
            if self.left != ALL_ONES:
                self.left -= got
            if not self.sequential:
                self._keep(view[:got])
            return got

    def _keep(self, data: memoryview) -> None:
        tail = self._tail
        tail += data
        if len(tail) > TAIL_KEEP:
            del tail[:len(tail) - TAIL_KEEP]
