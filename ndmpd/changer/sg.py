"""Pass-through to a real changer: EXECUTE_CDB through Linux's SG_IO ioctl on /dev/sgN.

``sg_io_hdr`` (include/scsi/sg.h) lives here and only here. The ioctl is injectable so the
marshalling is tested against a fake device.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Callable

from .sense import CdbResult

SG_IO = 0x2285
SG_GET_SCSI_ID = 0x2276
SG_SCSI_RESET = 0x2284
SG_SCSI_RESET_DEVICE, SG_SCSI_RESET_BUS = 1, 2
SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV = -1, -2, -3
SENSE_MAX = 64
DEFAULT_TIMEOUT_MS = 300_000       # changers take minutes to inventory
DRIVER_SENSE = 0x08


class SgIoHdr(ctypes.Structure):
    _fields_ = [("interface_id", ctypes.c_int), ("dxfer_direction", ctypes.c_int),
                ("cmd_len", ctypes.c_ubyte), ("mx_sb_len", ctypes.c_ubyte), ("iovec_count", ctypes.c_ushort),
                ("dxfer_len", ctypes.c_uint), ("dxferp", ctypes.c_void_p), ("cmdp", ctypes.c_void_p),
                ("sbp", ctypes.c_void_p), ("timeout", ctypes.c_uint), ("flags", ctypes.c_uint),
                ("pack_id", ctypes.c_int), ("usr_ptr", ctypes.c_void_p), ("status", ctypes.c_ubyte),
                ("masked_status", ctypes.c_ubyte), ("msg_status", ctypes.c_ubyte), ("sb_len_wr", ctypes.c_ubyte),
                ("host_status", ctypes.c_ushort), ("driver_status", ctypes.c_ushort), ("resid", ctypes.c_int),
                ("duration", ctypes.c_uint), ("info", ctypes.c_uint)]


class SgScsiId(ctypes.Structure):
    _fields_ = [("host_no", ctypes.c_int), ("channel", ctypes.c_int), ("scsi_id", ctypes.c_int),
                ("lun", ctypes.c_int), ("scsi_type", ctypes.c_int), ("h_cmd_per_lun", ctypes.c_short),
                ("d_queue_depth", ctypes.c_short), ("unused", ctypes.c_int * 2)]


class TransportError(OSError):
    """The host adapter or driver failed the command (no SCSI status to report)."""


class SgDevice:
    """One /dev/sgN, opened for the session that holds the changer."""

    def __init__(self, path: str, ioctl: Callable[[int, int, object], object] = fcntl.ioctl,
                 opener: Callable[[str], int] = lambda p: os.open(p, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)) -> None:
        self.path = path
        self._ioctl = ioctl
        self._fd = opener(path)

    def execute(self, cdb: bytes, datain_len: int = 0, data_out: bytes = b"",
                timeout_ms: int = 0) -> CdbResult:
        if data_out and datain_len:
            raise ValueError("a command moves data one way")
        buffer = ctypes.create_string_buffer(max(datain_len, len(data_out), 1))
        if data_out:
            ctypes.memmove(buffer, data_out, len(data_out))
        command = ctypes.create_string_buffer(bytes(cdb), len(cdb))
        sense = ctypes.create_string_buffer(SENSE_MAX)
        hdr = SgIoHdr(interface_id=ord("S"), cmd_len=len(cdb), mx_sb_len=SENSE_MAX,
                      dxfer_direction=SG_DXFER_FROM_DEV if datain_len else SG_DXFER_TO_DEV if data_out else SG_DXFER_NONE,
                      dxfer_len=datain_len or len(data_out), dxferp=ctypes.addressof(buffer),
                      cmdp=ctypes.addressof(command), sbp=ctypes.addressof(sense),
                      timeout=timeout_ms or DEFAULT_TIMEOUT_MS)
        self._ioctl(self._fd, SG_IO, hdr)
        if hdr.host_status or (hdr.driver_status & ~DRIVER_SENSE):
            raise TransportError(f"{self.path}: host status {hdr.host_status}, driver status {hdr.driver_status}")
        moved = max(0, (datain_len or len(data_out)) - hdr.resid)
        return CdbResult(hdr.status, buffer.raw[:moved] if datain_len else b"", sense.raw[:hdr.sb_len_wr],
                         moved if data_out else 0)

    def reset(self, bus: bool = False) -> None:
        self._ioctl(self._fd, SG_SCSI_RESET, ctypes.c_int(SG_SCSI_RESET_BUS if bus else SG_SCSI_RESET_DEVICE))

    def address(self) -> tuple[int, int, int]:
        """(controller, target id, lun) as the kernel knows the device."""
        ident = SgScsiId()
        self._ioctl(self._fd, SG_GET_SCSI_ID, ident)
        return ident.channel, ident.scsi_id, ident.lun

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
