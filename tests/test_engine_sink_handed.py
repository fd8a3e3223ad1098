"""A sink handing its buffers to a consumer in this process (the LOCAL mover's Handoff):
the dump runs ahead of a consumer that holds a buffer, by HANDED_SPARES whole buffers, and
the consumer still gets every byte in order, and a closed handoff stops the dump."""

from __future__ import annotations

import gc
import threading

import pytest

from ndmpd.engine.sink import HANDED_BUFFER_SIZE, HANDED_SPARES, FdSink
from ndmpd.mover.handoff import Handoff


def _pattern(n: int) -> bytes:
    return bytes((i * 7 + i // 4096) & 0xFF for i in range(n))


def test_the_dump_fills_spare_buffers_while_the_mover_holds_one_and_no_more():
    handoff = Handoff()
    sink = FdSink(handoff.put)
    size = HANDED_BUFFER_SIZE
    assert size >= 4 << 20 and HANDED_SPARES >= 3      # a 1 MiB buffer and one spare made the dump
    filled = [0]                                        # wait at every buffer for the mover
    ahead, past = threading.Event(), threading.Event()

    def dump() -> None:
        chunk = bytes(size // 16)
        for n in range((HANDED_SPARES + 2) * 16 + 1):
            sink.write(chunk)
            filled[0] = (n + 1) * len(chunk)
            if filled[0] == (HANDED_SPARES + 1) * size:
                ahead.set()
        past.set()
    thread = threading.Thread(target=dump, daemon=True)
    thread.start()
    held = handoff.take()                       # the mover takes the first buffer and holds it
    assert held is not None and len(held) == size
    assert ahead.wait(10), f"the dump waited for the mover after {filled[0]} bytes, spare buffers free"
    assert not past.wait(0.3), "the dump filled more buffers than it has: memory is not bounded"
    handoff.release()
    got = size
    finisher = threading.Thread(target=lambda: (past.wait(10), sink.drain(), handoff.end()), daemon=True)
    finisher.start()
    while (data := handoff.take()) is not None:
        got += len(data)
        handoff.release()
    finisher.join(10)
    sink.close()
    thread.join(10)
    assert got == filled[0] == sink.offset


def test_every_byte_reaches_the_mover_in_order():
    handoff = Handoff()
    sink = FdSink(handoff.put)
    data = _pattern(3 * HANDED_BUFFER_SIZE + 12345)
    received = bytearray()

    def mover() -> None:
        while (view := handoff.take()) is not None:
            received.extend(view)
            handoff.release()
    thread = threading.Thread(target=mover, daemon=True)
    thread.start()
    step = 100_003
    for at in range(0, len(data), step):
        sink.write(data[at:at + step])
    sink.close()
    handoff.end()
    thread.join(10)
    assert sink.offset == len(data)
    assert bytes(received) == data


def test_a_closed_handoff_stops_the_dump_with_a_broken_pipe():
    handoff = Handoff()
    sink = FdSink(handoff.put)
    handoff.close()
    with pytest.raises(BrokenPipeError):
        for _ in range(HANDED_SPARES + 4):
            sink.write(bytes(HANDED_BUFFER_SIZE))
        sink.drain()
    sink.close(drain=False)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_a_closed_sink_gives_its_buffers_back_though_a_cycle_still_holds_it():
    """A job's objects form cycles that only a collection frees; a server running backup after
    backup must not keep every finished one's buffers (HANDED_SPARES + 1 of them) till then."""
    gc.disable()
    try:
        before = _rss_kib()
        held = []
        for _ in range(12):
            sink = FdSink(lambda data: None)
            sink.write(bytes(HANDED_BUFFER_SIZE * (HANDED_SPARES + 1)))   # every buffer touched
            sink.close()
            cycle: dict = {"sink": sink}
            cycle["self"] = cycle
            held.append(cycle)
        grown = _rss_kib() - before
    finally:
        gc.enable()
    per_sink = HANDED_BUFFER_SIZE * (HANDED_SPARES + 1) >> 10
    assert grown < 3 * per_sink, f"RSS grew {grown} KiB over 12 closed sinks of {per_sink} KiB each"
