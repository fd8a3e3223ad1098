"""TAPE interface (v2/v3/v4): open, close, state, MTIO, one-record reads and writes.

Devices have Linux st position semantics (see devices/tape.py); the NDMPv4 rules differ
at filemarks and are applied here: a v4 READ or FSR that meets a filemark leaves the head
in front of it, a v4 BSR stays behind it, and reading at end of data is EOM_ERR in v4
(EOF_ERR in v2/v3).

End of medium, in every version: the write that enters the early-warning zone is refused
once with EOM_ERR (NDMP's "logical end of medium"; the next writes go through), and at the
physical end that write and every later one get IO_ERR, which DMAs take as final (Amanda's
ndmp device: "no space"); see ndmpd/devices/CARTRIDGE-FORMAT.md, "End of medium".
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from ..devices.holders import HANDOVER_PATIENCE
from ..devices.tape import (DeviceBusy, EarlyWarning, EndOfData, FilemarkReached, MediaError, NoMedium,
                            NotWritable, PhysicalEnd, Stop, TapeDevice, TapeError, WriteProtected)
from ..errors import NdmpError
from ..logtext import peer_text
from ..wire import C, T
from . import Blocking, HandlerTable
from .log_post import log_post

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger("ndmpd.tape")
HANDLERS = HandlerTable()

UNKNOWN = 0xFFFFFFFF
MAX_READ = 0x7FFFFFFF
OPEN_MODES = {2: (C.TAPE_READ_MODE, C.TAPE_RDWR_MODE),
              3: (C.TAPE_READ_MODE, C.TAPE_RDWR_MODE, C.TAPE_RAW_MODE),
              4: (C.TAPE_READ_MODE, C.TAPE_RDWR_MODE, C.TAPE_RAW_MODE)}

DEVICE_ERRORS: dict[type, int] = {
    NoMedium: C.NO_TAPE_LOADED_ERR,
    WriteProtected: C.WRITE_PROTECT_ERR,
    NotWritable: C.PERMISSION_ERR,
    DeviceBusy: C.DEVICE_BUSY_ERR,
    EarlyWarning: C.EOM_ERR,        # once per early-warning zone; the next write goes through
    PhysicalEnd: C.IO_ERR,          # final, as ndmjob's tape agent and a drive's VOLUME OVERFLOW
    FilemarkReached: C.EOF_ERR,
    MediaError: C.IO_ERR,
}


def device_error(exc: TapeError) -> NdmpError:
    """The NDMP error for a device failure."""
    for kind, code in DEVICE_ERRORS.items():
        if isinstance(exc, kind):
            return NdmpError(code, str(exc))
    return NdmpError(C.IO_ERR, str(exc))


class TapeSlot:
    """The tape drive a session has open (at most one)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.device: TapeDevice | None = None
        self.mode = C.TAPE_READ_MODE
        self.protected = False                # RAW on a write-protected cartridge: open for reading only
        self.max_block = 0
        self.lock = threading.Lock()          # device calls; the drive's own lock once one is open

    @property
    def is_open(self) -> bool:
        return self.device is not None

    @property
    def writable(self) -> bool:
        return self.mode != C.TAPE_READ_MODE and not self.protected

    def write_refusal(self) -> NdmpError:
        """Why a write (a record, filemarks, a mover backup) is refused when not :attr:`writable`."""
        if self.protected:
            return NdmpError(C.WRITE_PROTECT_ERR, f"{self.name}: the cartridge is write-protected (opened RAW, read-only)")
        return NdmpError(C.PERMISSION_ERR, "tape opened read-only")

    def release(self, session: "Session") -> None:
        """Close the device (connection lost) and hand the drive back."""
        if self.device is None or self.name is None:
            return
        try:
            with self.lock:
                self.device.close()
        except TapeError as exc:
            log.warning("%s: closing %s: %s", session.peer, self.name, exc)
        finally:
            session.ctx.drives.release(self.name, session)
            self.device, self.name = None, None


def _open_device(session: "Session") -> TapeDevice:
    if session.tape.device is None:
        raise NdmpError(C.DEV_NOT_OPEN_ERR, "no tape open")
    return session.tape.device


def _usable_device(session: "Session") -> TapeDevice:
    """The open device, when the mover does not own it right now."""
    device = _open_device(session)
    if session.mover.owns_tape():
        raise NdmpError(C.ILLEGAL_STATE_ERR, "the mover is using the tape")
    return device


def _device_call(session: "Session", work: Callable[[TapeDevice], Any], reply: Callable[[Any], Any]) -> Blocking:
    """Run ``work(device)`` off the loop and answer ``reply(result)``; device errors become NDMP errors."""
    device = _usable_device(session)
    slot = session.tape

    def run() -> Any:
        with slot.lock:
            try:
                result = work(device)
            except TapeError as exc:
                raise device_error(exc) from None
        return reply(result)
    return Blocking(run)


def _say_why(session: "Session", text: str) -> None:
    """An error LOG post (LOG_LOG on v2) ahead of a reply whose code alone says too little
    (IO_ERR: wrong S3 credentials, a store unreachable, a damaged cartridge; DEVICE_BUSY: who
    holds the drive), so the DMA's user reads the device's own words; queued from the worker
    before its reply."""
    session.post_soon(*log_post(session.version, text, "error"))


@HANDLERS.on(C.TAPE_OPEN)
def tape_open(session: "Session", req: Any) -> Any:
    slot = session.tape
    if slot.is_open or session.scsi.is_open:
        raise NdmpError(C.DEVICE_OPENED_ERR, f"{slot.name or session.scsi.name} is already open")
    if req.mode not in OPEN_MODES[session.version]:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"open mode {req.mode}")
    drives = session.ctx.drives
    if req.device not in drives:
        raise NdmpError(C.NO_DEVICE_ERR, f"no tape drive {req.device!r}")
    config = drives.configs[req.device]

    def run() -> Any:
        try:            # on the worker thread: it may wait for a closed session's teardown
            device = drives.acquire(req.device, session, HANDOVER_PATIENCE)
        except DeviceBusy as exc:
            _say_why(session, f"TAPE_OPEN {req.device}: {exc}")      # who holds it, which the code cannot say
            raise NdmpError(C.DEVICE_BUSY_ERR, str(exc)) from None
        slot.lock = drives.lock(req.device)       # shared with the mover and with a library's moves
        protected = False
        try:
            with slot.lock:
                try:
                    device.open(write=req.mode != C.TAPE_READ_MODE)
                except WriteProtected:
                    if req.mode != C.TAPE_RAW_MODE:
                        raise
                    device.open(write=False)      # RAW reads a protected cartridge; writes get WRITE_PROTECT_ERR
                    protected = True
        except NoMedium:
            if req.mode != C.TAPE_RAW_MODE:
                drives.release(req.device, session)
                raise NdmpError(C.NO_TAPE_LOADED_ERR, f"{req.device}: no tape loaded") from None
        except TapeError as exc:
            drives.release(req.device, session)
            error = device_error(exc)
            if error.code == C.IO_ERR:
                _say_why(session, f"TAPE_OPEN {req.device}: {exc}")
            raise error from None
        slot.name, slot.device, slot.mode, slot.protected = req.device, device, req.mode, protected
        slot.max_block = config.max_block_size
        log.info("%s: opened %s (%s)", session.peer, peer_text(req.device),
                 "READ" if req.mode == 0 else "RAW, read-only: write-protected" if protected else "RDWR/RAW")
        return T.tape_open_reply(error=C.NO_ERR)
    return Blocking(run)


@HANDLERS.on(C.TAPE_CLOSE)
def tape_close(session: "Session", req: Any) -> Any:
    _usable_device(session)

    def run() -> Any:
        session.tape.release(session)
        return T.tape_close_reply(error=C.NO_ERR)
    return Blocking(run)


@HANDLERS.on(C.TAPE_GET_STATE)
def tape_get_state(session: "Session", req: Any) -> Any:
    device = _open_device(session)
    with session.tape.lock:
        status = device.status()
    unsupported = 0
    if status.file_num is None:
        unsupported |= C.TAPE_STATE_FILE_NUM_UNS
    if status.blockno is None:
        unsupported |= C.TAPE_STATE_BLOCKNO_UNS
    if status.soft_errors is None:
        unsupported |= C.TAPE_STATE_SOFT_ERRORS_UNS
    if status.total_space is None:
        unsupported |= C.TAPE_STATE_TOTAL_SPACE_UNS
    if status.space_remain is None:
        unsupported |= C.TAPE_STATE_SPACE_REMAIN_UNS
    if session.version == 3:
        unsupported |= 0x40                   # v3 PARTITION_INVALID: no partitions here
    # write-protected: the cartridge says so, or this open could only read it (RAW on a
    # cartridge whose file refuses writing), so a DMA knows before it tries to write
    protected = status.write_protected or session.tape.protected
    flags = C.TAPE_STATE_NOREWIND | (C.TAPE_STATE_WR_PROT if protected else 0)
    return T.tape_get_state_reply(
        unsupported=unsupported, error=C.NO_ERR, flags=flags,
        file_num=UNKNOWN if status.file_num is None else status.file_num,
        soft_errors=status.soft_errors or 0, block_size=status.block_size,
        blockno=UNKNOWN if status.blockno is None else status.blockno,
        total_space=status.total_space or 0, space_remain=status.space_remain or 0)


def _mtio(session: "Session", op: int, count: int) -> Callable[[TapeDevice], int]:
    """The device work for one MTIO op; returns the resid count."""
    v4 = session.version >= 4

    def fsr(d: TapeDevice) -> int:
        r = d.space_records(count)
        if v4 and r.stop is Stop.FILEMARK:
            d.space_filemarks(-1)             # v4: stop in front of the filemark
        return r.resid

    def bsr(d: TapeDevice) -> int:
        r = d.space_records(-count)
        if v4 and r.stop is Stop.FILEMARK:
            d.space_filemarks(1)              # v4: stay behind the filemark
        return r.resid

    def write_eof(d: TapeDevice) -> int:
        d.write_filemarks(count)
        return 0

    def rewind(d: TapeDevice) -> int:
        d.rewind()
        return 0

    def unload(d: TapeDevice) -> int:
        d.unload()
        return 0

    def ready(d: TapeDevice) -> int:
        if not d.loaded:
            raise NoMedium("no tape loaded")
        return 0

    ops: dict[int, Callable[[TapeDevice], int]] = {
        C.MTIO_FSF: lambda d: d.space_filemarks(count).resid,
        C.MTIO_BSF: lambda d: d.space_filemarks(-count).resid,
        C.MTIO_FSR: fsr, C.MTIO_BSR: bsr, C.MTIO_REW: rewind, C.MTIO_EOF: write_eof, C.MTIO_OFF: unload,
    }
    if v4:
        ops[C.MTIO_TUR] = ready
    if op not in ops:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"unknown MTIO op {op}")
    return ops[op]


@HANDLERS.on(C.TAPE_MTIO)
def tape_mtio(session: "Session", req: Any) -> Any:
    work = _mtio(session, req.tape_op, req.count)
    if req.tape_op == C.MTIO_EOF and not session.tape.writable:
        _usable_device(session)
        raise session.tape.write_refusal()

    def counted(d: TapeDevice) -> tuple[int, int]:
        """(error, resid): a failed op reports every repetition as not performed."""
        try:
            return C.NO_ERR, work(d)
        except TapeError as exc:
            log.info("%s: MTIO op %d: %s", session.peer, req.tape_op, exc)
            return device_error(exc).code, req.count
    return _device_call(session, counted, lambda r: T.tape_mtio_reply(error=r[0], resid_count=r[1]))


@HANDLERS.on(C.TAPE_WRITE)
def tape_write(session: "Session", req: Any) -> Any:
    _usable_device(session)
    slot = session.tape
    if not slot.writable:
        raise slot.write_refusal()
    data = req.data_out
    if not data:
        return T.tape_write_reply(error=C.NO_ERR, count=0)
    if len(data) > slot.max_block:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"record of {len(data)} bytes exceeds max_block_size {slot.max_block}")
    return _device_call(session, lambda d: d.write_record(data),
                        lambda _: T.tape_write_reply(error=C.NO_ERR, count=len(data)))


@HANDLERS.on(C.TAPE_READ)
def tape_read(session: "Session", req: Any) -> Any:
    _usable_device(session)
    if req.count > MAX_READ:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"read count {req.count}")
    if req.count == 0:
        return T.tape_read_reply(error=C.NO_ERR, data_in=b"")
    limit = min(req.count, session.tape.max_block)
    v4 = session.version >= 4

    def read(d: TapeDevice) -> bytes:
        try:
            return d.read_record(limit)
        except FilemarkReached:
            if v4:
                d.space_filemarks(-1)         # v4: the head stays in front of the filemark
            raise
        except EndOfData:
            raise NdmpError(C.EOM_ERR if v4 else C.EOF_ERR, "end of data") from None
    return _device_call(session, read, lambda data: T.tape_read_reply(error=C.NO_ERR, data_in=data))


@HANDLERS.on(C.TAPE_EXECUTE_CDB)
def tape_execute_cdb(session: "Session", req: Any) -> Any:
    _usable_device(session)
    raise NdmpError(C.NOT_SUPPORTED_ERR, f"{session.tape.name}: SCSI pass-through is not available for this drive")
