"""Sealed batches are written by a background thread while the mover seals the next: writes stay
in order, at most WRITE_DEPTH are in flight, everything that reads the cartridge sees them, and
a write that fails (a full filesystem, for real: a small tmpfs) is a media error for the next
call and halts a backup with MEDIA_ERROR, never a silent success; what did reach the cartridge
reads back authentic, then IO_ERR where the file's end is missing."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ndmpd.devices import cartridge
from ndmpd.devices.background_writer import BackgroundWriter
from ndmpd.devices.sealed_records import CartridgeKeys
from ndmpd.devices.tape import FilemarkReached, MediaError
from ndmpd.devices.virtual_tape import VirtualTape
from ndmpd.keystore import Keystore, KeySource
from ndmpd.wire import C
from tests import test_mover_transfer as plain
from tests.server_thread import ServerThread

RECORD = 64 << 10


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_jobs_run_in_order_and_submit_waits_while_depth_are_in_flight():
    writer = BackgroundWriter("test", depth=2)
    gate, done = threading.Event(), []
    writer.submit(lambda: (gate.wait(5), done.append(0)))
    writer.submit(lambda: done.append(1))
    third = threading.Thread(target=writer.submit, args=(lambda: done.append(2),))
    third.start()
    time.sleep(0.2)
    assert third.is_alive() and done == []          # two in flight: the third waits
    gate.set()
    third.join(5)
    writer.drain()
    assert done == [0, 1, 2]
    assert writer.close() is None


def test_a_failed_job_is_raised_by_the_next_call_and_the_jobs_after_it_are_dropped():
    writer = BackgroundWriter("test", depth=3)
    gate, done = threading.Event(), []

    def fails():
        gate.wait(5)
        raise OSError(28, "No space left on device")
    writer.submit(fails)
    writer.submit(lambda: done.append("after"))     # queued behind the failure: never runs
    gate.set()
    with pytest.raises(OSError):
        writer.drain()
    with pytest.raises(OSError):                    # kept: raised again, nothing more is queued
        writer.submit(lambda: done.append("later"))
    assert isinstance(writer.close(), OSError) and done == []


def sealed_drive(directory: Path, capacity: int = 1 << 30) -> VirtualTape:
    keys = Keystore(KeySource(directory / "keys"))
    if not keys.names():
        keys.create("k")
    return VirtualTape("vt", directory / "c.img", capacity, keys=CartridgeKeys("vt", keys, "k"))


def batch(n: int, records: int = 16) -> bytes:
    return b"".join(bytes([n, i]) * (RECORD // 2) for i in range(records))


def write_all(tape: VirtualTape, chunk: bytes) -> None:
    """As the mover does: write_records may take fewer records than it is given."""
    view = memoryview(chunk)
    while view:
        view = view[tape.write_records(view, RECORD) * RECORD:]


def test_reads_and_positioning_see_the_batches_still_being_written(tmp_path):
    tape = sealed_drive(tmp_path)
    tape.open(write=True)
    tape.write_record(b"label")
    data = [batch(n) for n in range(2 * cartridge.WRITE_DEPTH)]
    for chunk in data:
        write_all(tape, chunk)
    assert tape.space_records(-16).resid == 0         # back over the last batch, written or not yet
    assert tape.read_record(RECORD) == data[-1][:RECORD]
    tape.flush()
    assert (tmp_path / "c.img").stat().st_size == tape.cart.eod
    assert tape.space_records(15).resid == 0
    tape.write_filemarks(1)                            # at the end: a filemark elsewhere would cut the file
    tape.close()
    tape.open(write=False)
    tape.rewind()
    assert tape.read_record(100) == b"label"
    assert b"".join(tape.read_record(RECORD) for _ in range(16 * len(data))) == b"".join(data)
    with pytest.raises(FilemarkReached):
        tape.read_record(RECORD)
    tape.close()


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs: writes past it fail with ENOSPC, as a full disk does."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                      capture_output=True, timeout=30).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_full_filesystem_fails_a_later_call_and_the_records_written_read_back(small_fs):
    tape = sealed_drive(small_fs)
    tape.open(write=True)
    written, failure = [], None
    for n in range(40):                           # 40 MiB into 4 MiB
        chunk = batch(n)
        try:
            write_all(tape, chunk)
            written.append(chunk)
        except MediaError as exc:
            failure = exc
            break
    if failure is None:
        with pytest.raises(MediaError) as caught:
            tape.flush()
        failure = caught.value
    assert "writing the cartridge failed" in str(failure) and "No space left" in str(failure)
    with pytest.raises(MediaError):                 # every call until the cartridge is closed
        tape.write_filemarks(1)
    with pytest.raises(MediaError):
        tape.read_record(RECORD)
    tape.close()
    tape.open(write=False)                          # reopened: the end of what reached the file
    tape.rewind()
    stream = b"".join(written)
    got = bytearray()
    with pytest.raises(MediaError, match="without its authenticated end"):
        while True:
            got += tape.read_record(RECORD)
    assert len(got) > 0 and stream.startswith(bytes(got))      # authentic records, in order, then IO_ERR
    tape.close()


@pytest.mark.parametrize("total", [16 << 20, 4 << 20], ids=["far-past", "just-past"])
def test_a_backup_onto_a_full_filesystem_halts_media_error(small_fs, total):
    """Just past the end, the failed write may still be in flight when the stream ends: the
    mover waits for its writes before it reports the end of the backup."""
    Keystore(KeySource(small_fs / "state" / "keys")).create("k")
    server = ServerThread(plain.config(small_fs, encryption_key="k", capacity="1GiB"))
    try:
        with server.client() as dma:
            dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
            dma.call("MOVER_SET_RECORD_SIZE", len=RECORD)
            dma.call("MOVER_SET_WINDOW", offset=0, length=plain.ALL)
            reply = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
            sender = threading.Thread(target=lambda: _send_ignoring_reset(plain.endpoint(reply.connect_addr), total),
                                      daemon=True)
            sender.start()
            halted = dma.wait_post(C.NOTIFY_MOVER_HALTED, timeout=120)
            assert halted.reason == C.MOVER_HALT_MEDIA_ERROR
            sender.join(30)
    finally:
        server.stop()


def _send_ignoring_reset(addr, total: int) -> None:
    try:
        plain.send_stream(addr, total)
    except OSError:
        pass                                        # the mover halted and closed the connection
