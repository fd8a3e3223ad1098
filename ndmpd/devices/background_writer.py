"""One worker thread that runs a caller's writes in order, a bounded number in flight.

Why: sealing a record (AES-GCM in OpenSSL) and writing it (``pwritev``, the write-behind's
``sync_file_range`` waits) both release the GIL. Done one after the other in the mover's
thread their times add up; with the writes here, the mover seals (and receives) the next
batch while this thread writes the last one, so an encrypted backup costs about the larger
of the two, not their sum.

A failed write is kept: it is raised by the next :meth:`submit` or :meth:`drain`, and the
jobs queued after it are dropped (nothing is written after a hole). Knows nothing of
cartridges: a job is a callable.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class BackgroundWriter:
    """Runs submitted jobs in order in one daemon thread, at most ``depth`` queued or running."""

    def __init__(self, name: str, depth: int) -> None:
        self.name = name
        self.depth = depth
        self._jobs: deque[Callable[[], None]] = deque()
        self._running = 0                    # 1 while the thread runs a job it took off the queue
        self._failed: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; waits while ``depth`` jobs are in flight, so that when this returns
        every job submitted ``depth`` submits ago has finished (its buffers may be reused).
        Raises the error of a job that failed before (and queues nothing)."""
        with self._changed:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            while len(self._jobs) + self._running >= self.depth and self._failed is None:
                self._changed.wait()
            self._raise_failure()
            self._jobs.append(job)
            self._changed.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def drain(self) -> None:
        """Wait until every job has run; raises the first failure (kept: it is raised again
        until :meth:`close`, since what was queued after it was not written)."""
        with self._changed:
            while (self._jobs or self._running) and self._failed is None:
                self._changed.wait()
            self._raise_failure()

    def close(self) -> BaseException | None:
        """Finish the queued jobs (unless one failed), stop the thread; returns the failure."""
        with self._changed:
            while (self._jobs or self._running) and self._failed is None:
                self._changed.wait()
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        return self._failed

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._closed:
                    self._changed.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._running = 1
            try:
                job()
            except BaseException as exc:       # kept for the submitter: this thread has no one to tell
                with self._changed:
                    self._failed = exc
                    self._jobs.clear()
            finally:
                with self._changed:
                    self._running = 0
                    self._changed.notify_all()
