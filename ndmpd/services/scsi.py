"""SCSI interface (v2/v3/v4): a media changer opened by name, CDBs executed on it.

A session holds at most one device, a tape or a changer (DEVICE_OPENED_ERR otherwise). A
changer, like a real one behind ``sg``, can be open in any number of sessions at once (Amanda's
chg-ndmp opens a second connection for the inventory while it holds the first); their CDBs
run one at a time per changer (changer/registry.py), so a move is never interleaved with
another session's command. A tape drive stays with one session (DEVICE_BUSY_ERR). CHECK
CONDITION is not an NDMP error: it comes back as the reply's status with the sense data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..changer.registry import ChangerDevice
from ..changer.sense import CdbResult
from ..errors import NdmpError
from ..logtext import peer_text
from ..wire import C, T, protocol
from . import Blocking, HandlerTable

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger("ndmpd.scsi")
HANDLERS = HandlerTable()
SCSI_SET_TARGET, SCSI_RESET_BUS = 0x203, 0x205          # v2/v3 only
MAX_DATAIN = 1 << 20


class ScsiSlot:
    """The changer a session has open (at most one)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.device: ChangerDevice | None = None
        self.target: tuple[int, int, int] | None = None   # set by SCSI_SET_TARGET

    @property
    def is_open(self) -> bool:
        return self.device is not None

    def release(self, session: "Session") -> None:
        if self.name is not None:
            session.ctx.changers.release(self.name, session)
        self.name, self.device, self.target = None, None, None


def _device(session: "Session") -> ChangerDevice:
    if session.scsi.device is None:
        raise NdmpError(C.DEV_NOT_OPEN_ERR, "no SCSI device open")
    return session.scsi.device


def _reply(session: "Session", name: str, **fields: Any) -> Any:
    """A reply of this session's version for a message v4 lacks."""
    return getattr(protocol(session.version).types, name)(**fields)


@HANDLERS.on(C.SCSI_OPEN)
def scsi_open(session: "Session", req: Any) -> Any:
    if session.scsi.is_open or session.tape.is_open:
        raise NdmpError(C.DEVICE_OPENED_ERR, f"{session.scsi.name or session.tape.name} is already open")
    changers = session.ctx.changers
    if req.device not in changers:
        raise NdmpError(C.NO_DEVICE_ERR, f"no changer {req.device!r} (configured: {', '.join(changers.configs) or 'none'})")

    def run() -> Any:
        try:
            device = changers.acquire(req.device, session)
        except OSError as exc:
            raise NdmpError(C.PERMISSION_ERR if exc.errno in (1, 13) else C.IO_ERR,
                            f"{req.device}: {exc.strerror or exc}") from None
        session.scsi.name, session.scsi.device = req.device, device
        log.info("%s: opened changer %s", session.peer, peer_text(req.device))
        return T.scsi_open_reply(error=C.NO_ERR)
    return Blocking(run)


@HANDLERS.on(C.SCSI_CLOSE)
def scsi_close(session: "Session", req: Any) -> Any:
    _device(session)

    def run() -> Any:           # off the loop: closing may wait for another session's command
        session.scsi.release(session)
        return T.scsi_close_reply(error=C.NO_ERR)
    return Blocking(run)


@HANDLERS.on(C.SCSI_GET_STATE)
def scsi_get_state(session: "Session", req: Any) -> Any:
    device = _device(session)
    controller, target, lun = session.scsi.target or device.address()
    return T.scsi_get_state_reply(error=C.NO_ERR, target_controller=controller, target_id=target, target_lun=lun)


def _reset(session: "Session", bus: bool) -> Blocking:
    device = _device(session)

    def run() -> Any:
        try:
            device.reset(bus)
        except OSError as exc:
            raise NdmpError(C.IO_ERR, f"reset: {exc.strerror or exc}") from None
        if bus:
            return _reply(session, "scsi_reset_bus_reply", error=C.NO_ERR)
        return T.scsi_reset_device_reply(error=C.NO_ERR)
    return Blocking(run)


@HANDLERS.on(C.SCSI_RESET_DEVICE)
def scsi_reset_device(session: "Session", req: Any) -> Any:
    return _reset(session, False)


@HANDLERS.on(SCSI_RESET_BUS)
def scsi_reset_bus(session: "Session", req: Any) -> Any:
    return _reset(session, True)


@HANDLERS.on(SCSI_SET_TARGET)
def scsi_set_target(session: "Session", req: Any) -> Any:
    """v2/v3: address a target behind the device. A virtual library is target 0, LUN 0."""
    device = _device(session)
    if req.device != session.scsi.name:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"{req.device!r} is not the open device")
    wanted = (req.target_controller, req.target_id, req.target_lun)
    if wanted != device.address():
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"{req.device} answers only at {device.address()}")
    session.scsi.target = wanted
    return _reply(session, "scsi_set_target_reply", error=C.NO_ERR)


@HANDLERS.on(C.SCSI_EXECUTE_CDB)
def scsi_execute_cdb(session: "Session", req: Any) -> Any:
    device = _device(session)
    return execute_cdb(device, req, T.scsi_execute_cdb_reply)


def execute_cdb(device: ChangerDevice, req: Any, reply: Any) -> Blocking:
    """EXECUTE_CDB on ``device``, answered with ``reply`` (the interface's reply type)."""
    if not req.cdb:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, "empty CDB")
    data_in, data_out = req.flags & C.SCSI_DATA_IN, req.flags & C.SCSI_DATA_OUT
    if (data_in and data_out) or (req.dataout and not data_out) or req.datain_len > MAX_DATAIN:
        raise NdmpError(C.ILLEGAL_ARGS_ERR, "data direction flags, data out or datain_len do not agree")

    def run() -> Any:
        try:
            result: CdbResult = device.execute(bytes(req.cdb), req.datain_len if data_in else 0,
                                               bytes(req.dataout), req.timeout)
        except OSError as exc:
            raise NdmpError(C.IO_ERR, f"SCSI command failed: {exc.strerror or exc}") from None
        return reply(error=C.NO_ERR, status=result.status, dataout_len=result.data_out_used,
                     datain=result.data_in, ext_sense=result.sense)
    return Blocking(run)
