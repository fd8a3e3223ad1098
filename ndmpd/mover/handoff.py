"""The backup direction of a LOCAL data connection, without the socket pair's two copies.

With ADDR_LOCAL the data service and the mover live in the same process. A backup's stream
buffers are handed to the mover, which writes its tape records straight out of them; the
socket pair still exists (restores use it, and it carries the connection's lifetime), but
the bytes of a backup never cross it. Moving 2 GB through a socket pair costs about 0.7 s
of kernel time on each side that tar never pays.

The writer does not wait for the mover to write each buffer: ``put`` copies it into one of
a few slots (one memory copy, against the socket pair's two system calls and two copies)
and returns. Waiting for the write took a round trip of two thread wake-ups per buffer,
each needing the GIL from a dump that holds it; the dump then waited for its spare buffer
while the mover sat idle.
"""

from __future__ import annotations

import threading
from collections import deque

SLOTS = 4                    # buffers copied and not yet written (4 x the dump's 1 MiB)


class Handoff:
    """Buffers from a writer thread (the dump's sink) to a reader (the mover), in order.

    ``put`` copies the buffer into a free slot, waiting only while all SLOTS are full, so
    the writer may reuse its buffer at once; ``close`` from either side (abort, halt,
    failure) wakes both, and a writer that finds the reader gone gets BrokenPipeError, as
    it would from a socket.
    """

    def __init__(self, slots: int = SLOTS) -> None:
        self._cond = threading.Condition()
        self._slots = slots
        self._ready: deque[memoryview] = deque()     # copies not yet released, oldest first
        self._free: list[bytearray] = []             # slots the reader has released
        self._ended = False          # the writer sent everything
        self._finished = False       # the reader saw the end and has stored everything
        self._closed = False

    # -- writer --------------------------------------------------------------------------

    def put(self, data: memoryview) -> None:
        with self._cond:
            while len(self._ready) >= self._slots and not self._closed:
                self._cond.wait()
            if self._closed or self._ended:
                raise BrokenPipeError("the mover closed the LOCAL data connection")
            slot = self._free.pop() if self._free else None
        size = len(data)
        if slot is None or len(slot) < size:
            slot = bytearray(size)
        slot[:size] = data                           # outside the lock: the reader goes on meanwhile
        with self._cond:
            self._ready.append(memoryview(slot)[:size])
            self._cond.notify_all()

    def end(self) -> None:
        """No more data (the socket's half-close)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_finished(self, cancel: threading.Event, poll: float = 0.25) -> bool:
        """After ``end``: True once the reader has taken every byte and seen the end."""
        with self._cond:
            while not self._finished:
                if self._closed or cancel.is_set():
                    return False
                self._cond.wait(poll)
            return True

    # -- reader --------------------------------------------------------------------------

    def take(self) -> memoryview | None:
        """The oldest buffer (valid until ``release``); None at the end or once closed."""
        with self._cond:
            while not self._ready and not self._ended and not self._closed:
                self._cond.wait()
            if self._ready and not self._closed:
                return self._ready[0]
            return None

    def finish(self) -> None:
        """The reader has stored every byte up to the end (the last record is on the medium
        too): only now may the writer call its stream delivered."""
        with self._cond:
            if self._ended and not self._closed and not self._ready:
                self._finished = True
                self._cond.notify_all()

    def release(self) -> None:
        """The reader is done with the buffer ``take`` gave it."""
        with self._cond:
            if self._ready:
                self._free.append(self._ready.popleft().obj)      # type: ignore[arg-type]
            self._cond.notify_all()

    # -- either side ---------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """The reader took everything and saw the writer's end."""
        return self._finished
