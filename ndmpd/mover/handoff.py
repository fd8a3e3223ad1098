"""The backup direction of a LOCAL data connection, without the socket pair's two copies.

With ADDR_LOCAL the data service and the mover live in the same process. A backup's stream
buffers are handed to the mover, which writes its tape records straight out of them; the
socket pair still exists (restores use it, and it carries the connection's lifetime), but
the bytes of a backup never cross it. Moving 2 GB through a socket pair costs about 0.7 s
of kernel time on each side that tar never pays.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Handoff:
    """One buffer at a time from a writer thread (the dump's sink) to a reader (the mover).

    ``put`` returns only when the reader has released the buffer, so the writer may reuse
    it; ``close`` from either side (abort, halt, failure) wakes both, and a writer that
    finds the reader gone gets BrokenPipeError, as it would from a socket.
    """

    def __init__(self, gone: str = "the mover closed the LOCAL data connection", local: bool = False) -> None:
        self._gone = gone            # what a writer's BrokenPipeError says
        self.local = local           # both ends in one session (LOCAL), not a TLS relay's
        self._cond = threading.Condition()
        self._buffer: memoryview | None = None
        self._ended = False          # the writer sent everything
        self._finished = False       # the reader saw the end and has stored everything
        self._closed = False
        self._cut = ""               # why the connection behind it was cut (a TLS truncation), if it was
        self._wake: Callable[[], None] | None = None
        self._data_halted = False    # (LOCAL) the data service posted NOTIFY_DATA_HALTED
        self._after_data: list[Callable[[], None]] = []   # the mover's notices, held until then
        self._timers: list[threading.Timer] = []          # ... or until these go off

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` on every buffer, end or close (on the thread that made it), for a
        reader that waits on more than this handoff (the TLS relay's selector) and polls."""
        with self._cond:
            self._wake = wake

    def _changed(self) -> None:
        self._cond.notify_all()
        if self._wake is not None:
            self._wake()

    # -- writer --------------------------------------------------------------------------

    def put(self, data: memoryview) -> None:
        self.offer(data)
        self.wait_released()

    def offer(self, data: memoryview) -> None:
        """Hand ``data`` over without waiting for the reader, so the writer can fill its next
        buffer meanwhile (the TLS relay decrypting while the mover writes); ``wait_released``
        before reusing ``data`` or offering another."""
        with self._cond:
            if self._closed:
                raise BrokenPipeError(self._gone)
            self._buffer = data
            self._changed()

    def wait_released(self) -> None:
        """Until the reader has released the buffer offered last (at once when there is none);
        BrokenPipeError when the handoff is closed before."""
        with self._cond:
            while self._buffer is not None and not self._closed:
                self._cond.wait()
            if self._buffer is not None:
                raise BrokenPipeError(self._gone)

    def end(self) -> None:
        """No more data (the socket's half-close)."""
        with self._cond:
            self._ended = True
            self._changed()

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
        """The next buffer (valid until ``release``); None at the end or once closed."""
        with self._cond:
            while self._buffer is None and not self._ended and not self._closed:
                self._cond.wait()
            if self._buffer is not None and not self._closed:
                return self._buffer
            return None

    def poll(self) -> memoryview | None:
        """The waiting buffer (valid until ``release``) without waiting; None when there is none."""
        with self._cond:
            return self._buffer if not self._closed else None

    def finish(self) -> None:
        """The reader has stored every byte up to the end (the last record is on the medium
        too): only now may the writer call its stream delivered."""
        with self._cond:
            if self._ended and not self._closed:
                self._finished = True
                self._cond.notify_all()

    def release(self) -> None:
        """The reader is done with the buffer ``take`` gave it."""
        with self._cond:
            self._buffer = None
            self._cond.notify_all()

    # -- either side ---------------------------------------------------------------------

    def after_data_halted(self, post: Callable[[], None], limit: float) -> None:
        """Run ``post`` (the mover's halt notices) right after the data service at the other
        end posts NOTIFY_DATA_HALTED, or after ``limit`` seconds if it never does; at once
        when it did already."""
        with self._cond:
            if not self._data_halted:
                self._after_data.append(post)
                timer = threading.Timer(limit, self._release_held)
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
                return
        post()

    def data_halted(self) -> None:
        """The data service posted NOTIFY_DATA_HALTED: what waited for it goes out now."""
        with self._cond:
            self._data_halted = True
        self._release_held()

    def _release_held(self) -> None:
        with self._cond:
            held, self._after_data = self._after_data, []
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()               # (a no-op from the timer's own thread, which is ending)
        for post in held:
            post()

    def close(self, cut: str = "") -> None:
        """Close from either side; ``cut``: the connection behind it was cut (a TLS stream that
        ended without close_notify), which the other side's BrokenPipeError and :attr:`cut` say."""
        with self._cond:
            if cut and not self._closed:
                self._cut = self._gone = cut
            self._closed = True
            self._changed()

    @property
    def cut(self) -> str:
        """Why the connection behind the handoff was cut, or empty (an end, an abort, a halt)."""
        return self._cut

    @property
    def ended(self) -> bool:
        """The writer sent everything, and nobody closed the handoff."""
        return self._ended and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def finished(self) -> bool:
        """The reader took everything and saw the writer's end."""
        return self._finished
