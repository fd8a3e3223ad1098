"""An in-memory stand-in for the Linux st driver, answering the same system calls.

It follows st's documented behaviour: reading a filemark returns 0 bytes and leaves the
head after it; spacing records stops after crossing a filemark (EIO, mt_resid set);
spacing backward over a filemark leaves the head before it with mt_blkno -1; past the
early-warning mark st refuses every other write with ENOSPC (writing nothing) and lets the
next through, and at the physical end the write it tries fails with ENOSPC as well
(st.rst "EOM Behaviour When Writing", st.c st_write); closing after a write adds a filemark.
"""

from __future__ import annotations

import errno
import os

from ndmpd.devices import st_ioctl as io

FM = None


class FakeStKernel:
    def __init__(self, capacity: int = 1 << 20, early_warning: int = 64 << 10, loaded: bool = True,
                 write_protected: bool = False) -> None:
        self.items: list[bytes | None] = []
        self.capacity, self.early_warning = capacity, early_warning
        self.loaded, self.write_protected = loaded, write_protected
        self.block_size = 0
        self.calls: list[tuple] = []
        self._reset_position()
        self.fd_open = False

    def _reset_position(self) -> None:
        self.pos, self.fileno, self.blkno = 0, 0, 0
        self.resid, self.last_write, self.eom_pending, self.eof_hit = 0, False, False, False
        self.writes_tried = 0            # write(2) calls that reached the drive

    def _used(self) -> int:
        return sum(len(i) for i in self.items[:self.pos] if i is not None)

    # ------------------------------------------------------------ StIo

    def open(self, path: str, flags: int) -> int:
        if self.fd_open:
            raise OSError(errno.EBUSY, "Device or resource busy")
        self.fd_open = True
        self.writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        return 7

    def close(self, fd: int) -> None:
        if self.last_write:
            self._write_fm(1)
        self.fd_open = False

    def read(self, fd: int, size: int) -> bytes:
        self.last_write = False
        if self.pos >= len(self.items):
            raise OSError(errno.EIO, "Input/output error")
        item = self.items[self.pos]
        self.pos += 1
        if item is FM:
            self.fileno, self.blkno = self.fileno + 1, 0
            return b""
        if len(item) > size:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        self.blkno = self.blkno + 1 if self.blkno >= 0 else -1
        return item

    def write(self, fd: int, data) -> int:
        if not self.writable:
            raise OSError(errno.EBADF, "Bad file descriptor")
        del self.items[self.pos:]
        if self.eom_pending:                     # st's ST_EOM_OK: refuse this one, try the next
            self.eom_pending = False
            raise OSError(errno.ENOSPC, "No space left on device")
        self.writes_tried += 1
        after = self._used() + len(data)
        if after > self.capacity:                # VOLUME OVERFLOW: nothing written
            self.eom_pending = True
            raise OSError(errno.ENOSPC, "No space left on device")
        self.items.append(bytes(data))
        self.pos += 1
        self.blkno = self.blkno + 1 if self.blkno >= 0 else -1
        self.last_write = True
        self.eom_pending = after > self.capacity - self.early_warning
        return len(data)

    def _write_fm(self, count: int) -> None:
        del self.items[self.pos:]
        self.items += [FM] * count
        self.pos += count
        self.fileno, self.blkno = self.fileno + count, 0
        self.last_write = False

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        if request == io.MTIOCGET:
            return io.MTGET.build(dict(type=0x72, resid=self.resid, dsreg=self.block_size, gstat=self._gstat(),
                                       erreg=0, fileno=self.fileno, blkno=self.blkno))
        if request == io.MTIOCPOS:
            return io.MTPOS.build(dict(blkno=self.pos))
        assert request == io.MTIOCTOP, hex(request)
        op = io.MTOP.parse(arg)
        self.calls.append((op.op, op.count))
        self.resid = 0
        self.last_write = False
        self.eom_pending = False
        handler = {io.MTFSR: self._fsr, io.MTBSR: self._bsr, io.MTFSF: self._fsf, io.MTBSF: self._bsf}.get(op.op)
        if handler:
            handler(op.count)
        elif op.op == io.MTWEOF:
            self._write_fm(op.count)
        elif op.op == io.MTREW:
            self._reset_position()
        elif op.op == io.MTOFFL:
            self._reset_position()
            self.loaded = False
        elif op.op == io.MTSETBLK:
            self.block_size = op.count
        elif op.op != io.MTNOP:
            raise OSError(errno.EINVAL, "Invalid argument")
        return arg

    def _fail(self, left: int) -> None:
        self.resid = left
        raise OSError(errno.EIO, "Input/output error")

    def _fsr(self, count: int) -> None:
        for done in range(count):
            if self.pos >= len(self.items):
                self._fail(count - done)
            item = self.items[self.pos]
            self.pos += 1
            if item is FM:
                self.fileno, self.blkno = self.fileno + 1, 0
                self._fail(count - done)
            self.blkno = self.blkno + 1 if self.blkno >= 0 else -1

    def _bsr(self, count: int) -> None:
        for done in range(count):
            if self.pos == 0:
                self.blkno = 0
                self._fail(count - done)
            self.pos -= 1
            if self.items[self.pos] is FM:
                self.fileno, self.blkno = self.fileno - 1, -1
                self._fail(count - done)
            self.blkno = self.blkno - 1 if self.blkno > 0 else -1

    def _fsf(self, count: int) -> None:
        crossed = 0
        while crossed < count:
            if self.pos >= len(self.items):
                self._fail(count - crossed)
            item = self.items[self.pos]
            self.pos += 1
            if item is FM:
                crossed += 1
                self.fileno, self.blkno = self.fileno + 1, 0

    def _bsf(self, count: int) -> None:
        crossed = 0
        while crossed < count:
            if self.pos == 0:
                self.blkno = 0
                self._fail(count - crossed)
            self.pos -= 1
            if self.items[self.pos] is FM:
                crossed += 1
                self.fileno, self.blkno = self.fileno - 1, -1 if self.pos else 0

    def _gstat(self) -> int:
        bits = 0
        if not self.loaded:
            return io.GMT_DR_OPEN
        bits |= io.GMT_ONLINE
        if self.pos == 0:
            bits |= io.GMT_BOT
        if self.pos >= len(self.items):
            bits |= io.GMT_EOD
        if self.write_protected:
            bits |= io.GMT_WR_PROT
        return bits
