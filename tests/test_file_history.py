"""File history never stalls the dump when the DMA stops reading, and loses nothing."""

from __future__ import annotations

import os
import threading
import time

from ndmpd.data.history import BATCH, MAX_QUEUED, FileHistory
from ndmpd.wire import C, REQUEST, protocol

V4 = protocol(4)


class SlowDma:
    """A control connection whose reader is stopped until ``resume``."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.unacked: list = []
        self.lock = threading.Lock()
        self.reading = False

    def send(self, code: int, body: bytes, on_sent) -> None:
        with self.lock:
            self.sent.append((code, body))
            if self.reading:
                on_sent()
            else:
                self.unacked.append(on_sent)

    def resume(self) -> None:
        with self.lock:
            self.reading = True
            waiting, self.unacked = self.unacked, []
        for on_sent in waiting:
            on_sent()

    def names(self) -> list[str]:
        out = []
        for code, body in self.sent:
            assert code == C.FH_ADD_FILE
            post = V4.decode_body(code, REQUEST, body, 0)
            out += [f.names[0].unix_name for f in post.files]
        return out


def _add(history: FileHistory, count: int) -> None:
    s = os.stat(".")
    for i in range(count):
        history.add_stat(f"f{i}".encode(), s, 1, i * 512)


def test_history_spills_instead_of_stalling_and_sends_everything_in_order() -> None:
    dma = SlowDma()
    cancel = threading.Event()
    history = FileHistory(4, "f", dma.send, cancel)
    count = BATCH * (MAX_QUEUED * 4) + 7
    started = time.monotonic()
    _add(history, count)                       # the DMA reads nothing meanwhile
    history.flush()
    assert time.monotonic() - started < 30     # it returned: the dump was never held up
    assert len(dma.sent) == MAX_QUEUED         # only the window is in memory on the connection
    assert history.spilled_bytes > 0
    finisher = threading.Thread(target=history.finish)
    finisher.start()
    time.sleep(0.3)
    assert finisher.is_alive()                 # the end of the job waits for the DMA...
    dma.resume()
    finisher.join(10)
    assert not finisher.is_alive()             # ...and not a moment longer
    assert dma.names() == [f"/f{i}" for i in range(count)]


def test_a_cancelled_job_stops_waiting_for_a_dma_that_never_reads() -> None:
    dma = SlowDma()
    cancel = threading.Event()
    history = FileHistory(4, "f", dma.send, cancel)
    _add(history, BATCH * (MAX_QUEUED + 3))
    finisher = threading.Thread(target=history.finish)
    finisher.start()
    cancel.set()
    finisher.join(5)
    assert not finisher.is_alive()
