"""The LOCAL backup handoff: the writer never waits for a write, only for a free slot; the
reader gets every buffer in order; either side's close ends both."""

from __future__ import annotations

import threading

import pytest

from ndmpd.mover.handoff import Handoff


def test_put_copies_and_returns_before_the_reader_takes_anything() -> None:
    handoff = Handoff(slots=2)
    buffer = bytearray(b"first")
    handoff.put(memoryview(buffer))
    buffer[:] = b"reuse"                     # the writer's buffer is its own again at once
    handoff.put(memoryview(buffer))
    handoff.end()
    seen = []
    while (data := handoff.take()) is not None:
        seen.append(bytes(data))
        handoff.release()
    handoff.finish()
    assert seen == [b"first", b"reuse"]
    assert handoff.finished and handoff.wait_finished(threading.Event())


def test_a_full_handoff_waits_for_the_reader_and_a_close_wakes_the_writer() -> None:
    handoff = Handoff(slots=1)
    handoff.put(memoryview(b"a"))
    failed: list[BaseException] = []

    def writer() -> None:
        try:
            handoff.put(memoryview(b"b"))
        except BrokenPipeError as exc:
            failed.append(exc)
    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(0.2)
    assert thread.is_alive()                 # no free slot: it waits
    handoff.close()
    thread.join(5)
    assert not thread.is_alive() and failed
    assert handoff.take() is None
    assert not handoff.wait_finished(threading.Event())


def test_slots_are_reused_and_grow_for_a_larger_buffer() -> None:
    handoff = Handoff(slots=1)
    for size in (10, 4, 30):
        handoff.put(memoryview(bytes([size]) * size))
        data = handoff.take()
        assert data is not None and bytes(data) == bytes([size]) * size
        handoff.release()


def test_a_put_after_the_end_is_a_broken_pipe() -> None:
    handoff = Handoff()
    handoff.end()
    with pytest.raises(BrokenPipeError):
        handoff.put(memoryview(b"late"))
