"""The tape device contract, run against both backends: a virtual cartridge and the Linux
st driver (behind a fake kernel), plus the cartridge format's crash and corruption cases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ndmpd.devices import cartridge
from ndmpd.devices.st_tape import LinuxTape
from ndmpd.devices.tape import (EarlyWarning, EndOfData, EndOfMedium, FilemarkReached, MediaError, NoMedium,
                                NotWritable, PhysicalEnd, Stop, WriteProtected)
from ndmpd.devices.virtual_tape import VirtualTape

from .fake_st import FakeStKernel
from .waiting import wait_for

CAPACITY = 1 << 20
EARLY = 64 << 10


@pytest.fixture(params=["virtual", "st"])
def drive(request, tmp_path):
    if request.param == "virtual":
        return VirtualTape("vt", tmp_path / "cart.img", CAPACITY, EARLY)
    return LinuxTape("st", "/dev/nst0", sys=FakeStKernel(CAPACITY, EARLY))


def position(drive):
    s = drive.status()
    return s.file_num, s.blockno


def write_files(drive, files):
    """files: list of record counts; record k of file f is bytes([f, k]) * 100."""
    for f, n in enumerate(files):
        for k in range(n):
            drive.write_record(bytes([f, k]) * 100)
        drive.write_filemarks(1)


def test_write_read_back_with_filemarks(drive):
    drive.open(write=True)
    write_files(drive, [3, 2])
    assert position(drive) == (2, 0)
    drive.rewind()
    assert position(drive) == (0, 0)
    assert drive.read_record(4096) == bytes([0, 0]) * 100
    assert drive.read_record(10) == bytes([0, 1]) * 5          # short read: rest of record skipped
    assert position(drive) == (0, 2)
    drive.read_record(4096)
    with pytest.raises(FilemarkReached):
        drive.read_record(4096)
    assert position(drive) == (1, 0)                           # st: after the filemark
    assert drive.read_record(4096) == bytes([1, 0]) * 100
    drive.read_record(4096)
    with pytest.raises(FilemarkReached):
        drive.read_record(4096)
    with pytest.raises(EndOfData):
        drive.read_record(4096)
    drive.close()


def test_space_records_stops_at_filemarks_bot_and_eod(drive):
    drive.open(write=True)
    write_files(drive, [3, 2])
    drive.rewind()
    assert drive.space_records(-5).resid == 5 and drive.space_records(-5).stop is Stop.BOT
    r = drive.space_records(10)
    assert (r.resid, r.stop) == (7, Stop.FILEMARK) and position(drive) == (1, 0)
    r = drive.space_records(-10)                 # crosses back over the filemark
    assert (r.resid, r.stop) == (10, Stop.FILEMARK)
    assert position(drive) == (0, None)
    r = drive.space_records(-10)
    assert (r.resid, r.stop) == (7, Stop.BOT) and position(drive) == (0, 0)
    drive.space_filemarks(1)
    assert drive.space_records(1).resid == 0 and position(drive) == (1, 1)
    drive.space_filemarks(1)
    r = drive.space_records(4)
    assert (r.resid, r.stop) == (4, Stop.EOD)
    drive.close()


def test_space_filemarks(drive):
    drive.open(write=True)
    write_files(drive, [1, 1, 1])
    drive.rewind()
    assert drive.space_filemarks(2).resid == 0 and position(drive) == (2, 0)
    r = drive.space_filemarks(5)
    assert (r.resid, r.stop) == (4, Stop.EOD) and position(drive)[0] == 3
    r = drive.space_filemarks(-1)
    assert r.resid == 0 and position(drive) == (2, None)
    r = drive.space_filemarks(-9)
    assert (r.resid, r.stop) == (7, Stop.BOT) and position(drive) == (0, 0)
    drive.close()


def test_write_in_the_middle_discards_the_rest(drive):
    drive.open(write=True)
    write_files(drive, [4])
    drive.rewind()
    drive.space_records(2)
    drive.write_record(b"new")
    drive.rewind()
    got = [drive.read_record(4096) for _ in range(3)]
    assert got[2] == b"new"
    with pytest.raises(EndOfData):
        drive.read_record(4096)
    drive.close()


def test_early_warning_then_trailer_then_physical_end(drive):
    drive.open(write=True)
    record = bytes(32 << 10)
    written = 0
    with pytest.raises(EndOfMedium) as eom:
        while True:
            drive.write_record(record)
            written += 1
    assert eom.value.early
    assert written * len(record) >= CAPACITY - EARLY - 2 * len(record)
    drive.write_record(record)                   # the next write goes through (a trailer)
    drive.write_filemarks(1)                     # filemarks never hit early warning
    with pytest.raises(EndOfMedium):
        for _ in range(100):
            drive.write_record(record)
    drive.close()


def test_early_warning_comes_once_and_the_physical_end_is_final(drive):
    """EarlyWarning once (st refuses every other write in the zone: the backend hides that),
    then writes go through up to the physical end, where that write and every later one,
    smaller ones too, raise PhysicalEnd and write nothing; a filemark still closes the file,
    and moving back makes room again."""
    drive.open(write=True)
    record = 32 << 10
    outcomes = []
    for k in range(40):                                       # 40 x 32 KiB: more than 1 MiB
        try:
            drive.write_record(bytes([k]) * record)
            outcomes.append(k)
        except EndOfMedium as exc:
            outcomes.append(type(exc))
    assert outcomes.count(EarlyWarning) == 1
    first_end = outcomes.index(PhysicalEnd)
    assert outcomes.index(EarlyWarning) < first_end
    assert set(outcomes[first_end:]) == {PhysicalEnd}
    written = [k for k in outcomes if isinstance(k, int)]
    with pytest.raises(PhysicalEnd):
        drive.write_record(b"tiny")
    with pytest.raises(PhysicalEnd):
        drive.write_records(memoryview(bytes(1024)), 512)
    drive.write_filemarks(1)
    drive.rewind()
    assert [drive.read_record(1 << 20) for _ in written] == [bytes([k]) * record for k in written]
    with pytest.raises(FilemarkReached):
        drive.read_record(record)
    with pytest.raises(EndOfData):
        drive.read_record(record)
    drive.space_filemarks(-1)
    drive.space_records(-1)                                   # back over the filemark and a record
    try:
        drive.write_record(b"again")                          # room again: tape semantics
    except EarlyWarning:                                      # (in the zone: warned anew)
        drive.write_record(b"again")
    drive.rewind()
    assert drive.space_records(len(written) - 1).resid == 0
    assert drive.read_record(record) == b"again"
    drive.close()


def test_batched_writes_stop_at_early_warning_and_read_back_as_single_records(drive):
    """write_records (the mover's batch path) gives the same tape as one write_record per record."""
    drive.open(write=True)
    size = 10240
    batch = memoryview(b"".join(bytes([k]) * size for k in range(40)))
    expected: list[int] = []
    with pytest.raises(EndOfMedium) as eom:
        while True:
            written = drive.write_records(batch, size)
            assert 0 < written <= 40
            expected += range(written)
    expected += range(eom.value.written)                      # the batch's records before it
    total = len(expected)
    assert eom.value.early                                    # reported once, not skipped by a batch
    assert CAPACITY - EARLY - 2 * size <= total * size < CAPACITY
    assert position(drive) == (0, total)
    drive.write_filemarks(1)
    drive.rewind()
    for k in expected:
        assert drive.read_record(1 << 20) == bytes([k]) * size
    with pytest.raises(FilemarkReached):
        drive.read_record(size)
    drive.close()


def test_read_only_open_refuses_writes(drive):
    drive.open(write=True)
    drive.write_record(b"x")
    drive.close()
    drive.open(write=False)
    with pytest.raises(NotWritable):
        drive.write_record(b"y")
    with pytest.raises(NotWritable):
        drive.write_filemarks(1)
    drive.close()


def test_close_after_write_adds_a_filemark(drive):
    drive.open(write=True)
    drive.write_record(b"data")
    drive.close()
    drive.open(write=False)
    drive.rewind()
    drive.read_record(100)
    with pytest.raises(FilemarkReached):
        drive.read_record(100)
    drive.close()


def test_unload_empties_the_drive(drive):
    drive.open(write=True)
    drive.unload()
    drive.close()
    with pytest.raises(NoMedium):
        drive.open(write=False)


def test_write_protected_medium(tmp_path):
    path = tmp_path / "wp.img"
    cartridge.create(path, CAPACITY, write_protected=True)
    with pytest.raises(WriteProtected):
        VirtualTape("vt", path, CAPACITY).open(write=True)
    st = LinuxTape("st", "/dev/nst0", sys=FakeStKernel(write_protected=True))
    with pytest.raises(WriteProtected):
        st.open(write=True)


def test_st_fixed_block_mode_sets_block_size():
    kernel = FakeStKernel()
    drive = LinuxTape("st", "/dev/nst0", block_size=512, sys=kernel)
    drive.open(write=True)
    assert (20, 512) in kernel.calls                      # MTSETBLK 512
    assert drive.status().block_size == 512


def test_st_ioctl_failures_are_media_errors_and_open_leaves_nothing_open():
    import errno

    class Failing(FakeStKernel):
        def ioctl(self, fd, request, arg):
            from ndmpd.devices import st_ioctl
            if request == st_ioctl.MTIOCTOP and st_ioctl.MTOP.parse(arg).op in (st_ioctl.MTOFFL, st_ioctl.MTSETBLK):
                raise OSError(errno.EIO, "Input/output error")
            return super().ioctl(fd, request, arg)
    kernel = Failing()
    drive = LinuxTape("st", "/dev/nst0", sys=kernel)
    drive.open(write=True)
    with pytest.raises(MediaError):
        drive.unload()
    drive.close()
    with pytest.raises(MediaError):
        LinuxTape("st", "/dev/nst0", block_size=512, sys=kernel).open(write=True)
    assert not kernel.fd_open


# ---------------------------------------------------------------- cartridge format

def test_position_survives_close_and_reopen_of_a_new_drive_object(tmp_path):
    path = tmp_path / "c.img"
    d = VirtualTape("vt", path, CAPACITY)
    d.open(write=True)
    write_files(d, [2, 2])
    d.close()
    d2 = VirtualTape("vt", path, CAPACITY)
    d2.open(write=False)
    d2.space_filemarks(1)
    assert d2.read_record(4096) == bytes([1, 0]) * 100
    d2.close()


def test_truncated_tail_is_recovered_and_nothing_before_it_lost(tmp_path):
    path = tmp_path / "c.img"
    d = VirtualTape("vt", path, CAPACITY)
    d.open(write=True)
    write_files(d, [5])
    d.write_record(b"z" * 1000)
    d._last_was_write = False
    d.close()
    size = path.stat().st_size
    os.truncate(path, size - 500)                # torn last record
    d = VirtualTape("vt", path, CAPACITY)
    d.open(write=True)
    assert [d.read_record(4096)[:2] for _ in range(5)] == [bytes([0, k]) for k in range(5)]
    with pytest.raises(FilemarkReached):
        d.read_record(4096)
    with pytest.raises(EndOfData):
        d.read_record(4096)
    d.write_record(b"after")                     # writing continues from the recovered end
    d.rewind()
    d.space_filemarks(1)
    assert d.read_record(100) == b"after"
    d.close()


def test_corrupt_entry_is_a_media_error_and_earlier_records_read(tmp_path):
    path = tmp_path / "c.img"
    d = VirtualTape("vt", path, CAPACITY)
    d.open(write=True)
    write_files(d, [3])
    d.close()
    cart = cartridge.Cartridge(path, False)
    entries = list(cart.entries())
    cart.close()
    with open(path, "r+b") as f:
        f.seek(entries[1].offset + 4)
        f.write(b"\xff\xff")                     # length field of record 2
    d.open(write=False)
    d.rewind()
    assert d.read_record(4096)[:2] == bytes([0, 0])
    with pytest.raises(MediaError):
        d.read_record(4096)
    d.close()
    assert path.stat().st_size == entries[-1].end   # nothing rewritten


@pytest.mark.parametrize("damage", ["garbage", "short", "checksum"])
def test_corrupt_superblock_refuses_to_open_and_keeps_the_file(tmp_path, damage):
    path = tmp_path / "c.img"
    if damage == "garbage":
        path.write_bytes(b"not a tape at all" * 400)
    elif damage == "short":
        path.write_bytes(b"NDMPDVT1")
    else:
        cartridge.create(path, CAPACITY)
        data = bytearray(path.read_bytes())
        data[20] ^= 1
        path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(MediaError):
        VirtualTape("vt", path, CAPACITY).open(write=True)
    assert path.read_bytes() == before


def test_a_second_process_cannot_open_the_same_cartridge(tmp_path):
    from ndmpd.devices.tape import DeviceBusy
    path = tmp_path / "c.img"
    a = VirtualTape("a", path, CAPACITY)
    a.open(write=True)
    with pytest.raises(DeviceBusy):
        VirtualTape("b", path, CAPACITY).open(write=False)
    a.close()


def test_kill_9_after_a_filemark_loses_nothing(tmp_path):
    """A writer killed mid-stream: everything up to its last filemark reads back."""
    path = tmp_path / "c.img"
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from ndmpd.devices.virtual_tape import VirtualTape
        d = VirtualTape("vt", Path({str(path)!r}), 1 << 30)
        d.open(write=True)
        for k in range(50):
            d.write_record(bytes([k]) * 4000)
        d.write_filemarks(1)
        Path({str(ready)!r}).write_text("x")
        k = 0
        while True:
            d.write_record(bytes([k % 256]) * 70000)
            k += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert wait_for(lambda: (ready.exists() and path.stat().st_size > 2 << 20) or proc.poll() is not None, 120)
        assert proc.poll() is None, "the writer ended before it could be killed mid-record"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    d = VirtualTape("vt", path, 1 << 30)
    d.open(write=False)
    assert [d.read_record(8192) for _ in range(50)] == [bytes([k]) * 4000 for k in range(50)]
    with pytest.raises(FilemarkReached):
        d.read_record(8192)
    n = 0
    while True:
        try:
            assert d.read_record(1 << 17) == bytes([n % 256]) * 70000
        except EndOfData:
            break
        n += 1
    assert n > 10
    d.close()


def test_layouts_are_the_declared_sizes():
    from ndmpd.devices import st_ioctl
    assert cartridge.HEADER_SIZE == 16 and cartridge.TRAILER_SIZE == 8
    assert (st_ioctl.MTOP.sizeof(), st_ioctl.MTGET.sizeof(), st_ioctl.MTPOS.sizeof()) == (8, 48, 8)
    assert (st_ioctl.MTIOCTOP, st_ioctl.MTIOCGET, st_ioctl.MTIOCPOS) == (0x40086D01, 0x80306D02, 0x80086D03)


def test_st_at_the_physical_end_refuses_without_touching_the_drive_again():
    """st answers ENOSPC both at the early warning and at the physical end; two in a row mean
    a write was really tried and did not fit. From then on nothing reaches the drive."""
    kernel = FakeStKernel(CAPACITY, EARLY)
    st = LinuxTape("st", "/dev/nst0", sys=kernel)
    st.open(write=True)
    with pytest.raises(PhysicalEnd):
        for _ in range(100):
            try:
                st.write_record(bytes(32 << 10))
            except EarlyWarning:
                pass
    tried = kernel.writes_tried
    for size in (32 << 10, 10):
        with pytest.raises(PhysicalEnd):
            st.write_record(bytes(size))
    assert kernel.writes_tried == tried
    st.close()


def test_a_cartridge_too_full_for_its_closing_filemark_still_closes_and_unloads(tmp_path):
    """Closing (or a library unloading) after a write adds a filemark; when not even that fits
    the drive still lets go of the cartridge, and every record on it reads back."""
    drive = VirtualTape("vt", tmp_path / "cart.img", CAPACITY, EARLY)
    drive.open(write=True)
    record = CAPACITY // 4 - cartridge.OVERHEAD
    for _ in range(5):
        try:
            drive.write_record(bytes(record))
        except EarlyWarning:
            pass
    drive.unload()
    drive.load(tmp_path / "cart.img")
    drive.open(write=False)
    assert [len(drive.read_record(record)) for _ in range(4)] == [record] * 4
    with pytest.raises(EndOfData):
        drive.read_record(record)
    drive.close()
