"""Linux ``st`` tape drives (``/dev/nstN``) through MTIOCTOP / MTIOCGET / MTIOCPOS.

All system calls go through a :class:`StIo` object so tests can put a fake kernel behind
the same code; the ioctl numbers and struct layouts live in :mod:`.st_ioctl`.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from . import st_ioctl as io
from .tape import (DeviceBusy, EarlyWarning, EndOfData, FilemarkReached, MediaError, NoMedium, NotWritable,
                   PhysicalEnd, SpaceResult, Stop, TapeDevice, TapeStatus, WriteProtected)


class StIo:
    """The real system calls."""

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        buf = bytearray(arg)
        fcntl.ioctl(fd, request, buf, True)
        return bytes(buf)


@dataclass(frozen=True)
class DriveState:
    """Decoded MTIOCGET."""

    resid: int
    block_size: int
    gstat: int
    fileno: int
    blkno: int

    def has(self, bit: int) -> bool:
        return bool(self.gstat & bit)


class LinuxTape(TapeDevice):
    """A Linux SCSI tape drive in variable (block_size 0) or fixed block mode.

    End of medium (Documentation/scsi/st.rst, "EOM Behaviour When Writing"; drivers/scsi/st.c
    st_write): past the early-warning mark st refuses every other write with ENOSPC, writing
    nothing, and lets the next one through; at the physical end (VOLUME OVERFLOW) the write
    that is tried fails with ENOSPC too. So an ENOSPC is the early warning the first time;
    after that a refused write is tried once more, and a second ENOSPC in a row means a real
    attempt failed: the physical end, final until the head moves.
    """

    def __init__(self, name: str, path: str, block_size: int = 0, max_block: int = 1 << 24,
                 sys: StIo | None = None) -> None:
        self.name = name
        self.path = path
        self.block_size = block_size
        self.max_block = max_block
        self.sys = sys or StIo()
        self.fd = -1
        self.writable = False
        self._moved()

    def _moved(self) -> None:
        """The head is somewhere new: end-of-medium state starts over."""
        self._warned = False
        self._full = False

    # ---------------------------------------------------------------- plumbing

    def _op(self, op: int, count: int) -> None:
        self.sys.ioctl(self.fd, io.MTIOCTOP, io.MTOP.build(dict(op=op, count=count)))

    def drive_state(self) -> DriveState:
        raw = io.MTGET.parse(self.sys.ioctl(self.fd, io.MTIOCGET, bytes(io.MTGET.sizeof())))
        return DriveState(raw.resid, raw.dsreg & io.MT_ST_BLKSIZE_MASK, raw.gstat & 0xFFFFFFFF,
                          raw.fileno, raw.blkno)

    def _need_open(self) -> None:
        if self.fd < 0:
            raise NoMedium(f"{self.name}: not open")

    # ---------------------------------------------------------------- medium

    @property
    def loaded(self) -> bool:
        if self.fd < 0:
            return True             # unknown until opened; open says NoMedium
        return self.drive_state().has(io.GMT_ONLINE)

    def open(self, write: bool) -> None:
        flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NONBLOCK
        try:
            self.fd = self.sys.open(self.path, flags)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise DeviceBusy(f"{self.name}: {self.path} is busy") from None
            if exc.errno in (errno.EACCES, errno.EROFS) and write:
                raise WriteProtected(f"{self.name}: {self.path}: {exc.strerror}") from None
            if exc.errno == errno.ENOMEDIUM:
                raise NoMedium(f"{self.name}: no tape") from None
            raise MediaError(f"{self.name}: {self.path}: {exc.strerror}") from None
        self.writable = write
        self._moved()
        state = self.drive_state()
        if state.has(io.GMT_DR_OPEN) or not state.has(io.GMT_ONLINE):
            self.close()
            raise NoMedium(f"{self.name}: no tape loaded")
        if write and state.has(io.GMT_WR_PROT):
            self.close()
            raise WriteProtected(f"{self.name}: tape is write-protected")
        if self.block_size != state.block_size:
            try:
                self._checked_op(io.MTSETBLK, self.block_size)
            except MediaError:
                self.close()
                raise

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.sys.close(fd)      # st writes a filemark itself after a write

    def unload(self) -> None:
        self._need_open()
        self._moved()
        self._checked_op(io.MTOFFL, 1)

    # ---------------------------------------------------------------- data

    def read_record(self, limit: int) -> bytes:
        self._need_open()
        try:
            data = self.sys.read(self.fd, self.block_size or self.max_block)
        except OSError as exc:
            if exc.errno == errno.EIO and self.drive_state().has(io.GMT_EOD):
                raise EndOfData(f"{self.name}: end of data") from None
            raise MediaError(f"{self.name}: read: {exc.strerror}") from None
        if not data:                # st: a 0-byte read is a filemark (end of data is EIO)
            raise FilemarkReached(f"{self.name}: filemark")
        return data[:limit]

    def write_record(self, data: bytes | memoryview) -> None:
        self._need_open()
        if not self.writable:
            raise NotWritable(f"{self.name}: opened read-only")
        if self._full:
            raise PhysicalEnd(f"{self.name}: physical end of medium")
        if self._write(data):
            return
        if not self._warned:
            self._warned = True
            raise EarlyWarning(f"{self.name}: early warning: logical end of medium")
        if not self._write(data):                     # st let this one through: it did not fit
            self._full = True
            raise PhysicalEnd(f"{self.name}: physical end of medium")

    def _write(self, data: bytes | memoryview) -> bool:
        """One write(2) of the whole record; False when st answered ENOSPC (nothing written)."""
        try:
            written = self.sys.write(self.fd, data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return False
            raise MediaError(f"{self.name}: write: {exc.strerror}") from None
        if written != len(data):
            self._full = True
            raise PhysicalEnd(f"{self.name}: physical end of medium ({written} of {len(data)} bytes written)")
        return True

    def write_filemarks(self, count: int) -> None:
        self._need_open()
        if not self.writable:
            raise NotWritable(f"{self.name}: opened read-only")
        self._checked_op(io.MTWEOF, count)

    def _checked_op(self, op: int, count: int) -> None:
        try:
            self._op(op, count)
        except OSError as exc:
            raise MediaError(f"{self.name}: {exc.strerror}") from None

    # ---------------------------------------------------------------- positioning

    def _space(self, forward_op: int, backward_op: int, count: int) -> SpaceResult:
        self._need_open()
        if count == 0:
            return SpaceResult(0)
        self._moved()
        try:
            self._op(forward_op if count > 0 else backward_op, abs(count))
            return SpaceResult(0)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise MediaError(f"{self.name}: {exc.strerror}") from None
        state = self.drive_state()
        if count < 0:
            stop = Stop.BOT if state.has(io.GMT_BOT) else Stop.FILEMARK
        else:
            stop = Stop.EOD if state.has(io.GMT_EOD) else Stop.FILEMARK
        return SpaceResult(state.resid, stop)

    def space_records(self, count: int) -> SpaceResult:
        return self._space(io.MTFSR, io.MTBSR, count)

    def space_filemarks(self, count: int) -> SpaceResult:
        return self._space(io.MTFSF, io.MTBSF, count)

    def rewind(self) -> None:
        self._need_open()
        self._moved()
        self._checked_op(io.MTREW, 1)

    def status(self) -> TapeStatus:
        if self.fd < 0:
            return TapeStatus(None, None, self.block_size, None, None, False)
        state = self.drive_state()
        return TapeStatus(state.fileno if state.fileno >= 0 else None,
                          state.blkno if state.blkno >= 0 else None,
                          state.block_size, None, None, state.has(io.GMT_WR_PROT), None,
                          loaded=state.has(io.GMT_ONLINE))
