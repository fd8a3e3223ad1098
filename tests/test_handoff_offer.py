"""Handoff.offer: the writer hands a buffer over and fills its next one while the reader
works (the TLS relay decrypting while the mover writes), and never reuses a buffer the reader
has not released; a close frees a writer waiting for that."""

from __future__ import annotations

import threading

import pytest

from ndmpd.mover.handoff import Handoff


def test_offer_returns_at_once_and_wait_released_waits_for_the_reader():
    handoff = Handoff()
    first = memoryview(bytearray(b"first"))
    handoff.offer(first)                          # no reader yet: it must not wait
    released = threading.Event()

    def writer() -> None:
        handoff.wait_released()
        released.set()
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert not released.wait(0.2)                 # the reader holds it: the writer may not reuse it
    assert bytes(handoff.take()) == b"first"
    assert not released.wait(0.2)                 # taken is not released
    handoff.release()
    assert released.wait(5)
    thread.join(5)


def test_the_reader_gets_every_offered_buffer_then_the_end():
    handoff = Handoff()
    got: list[bytes] = []

    def reader() -> None:
        while (data := handoff.take()) is not None:
            got.append(bytes(data))
            handoff.release()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    buffers = [memoryview(bytearray([i]) * 10) for i in range(2)]
    for i in range(20):
        handoff.wait_released()                   # the one before: now free again
        handoff.offer(buffers[i % 2])
    handoff.end()                                 # with the last still offered: it arrives first
    thread.join(5)
    assert got == [bytes([i % 2]) * 10 for i in range(20)]


def test_a_close_frees_a_writer_waiting_for_its_buffer_with_a_broken_pipe():
    handoff = Handoff("the mover stopped")
    handoff.offer(memoryview(bytearray(4)))
    threading.Timer(0.1, handoff.close).start()
    with pytest.raises(BrokenPipeError, match="the mover stopped"):
        handoff.wait_released()
    with pytest.raises(BrokenPipeError):
        handoff.offer(memoryview(bytearray(4)))
