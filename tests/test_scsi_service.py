"""The SCSI interface through a sans-IO session, on a virtual library and on SG_IO against a fake."""

from __future__ import annotations

import ctypes
import struct
import threading

import pytest

from ndmpd.changer.sg import SG_DXFER_FROM_DEV, SG_DXFER_NONE, SG_GET_SCSI_ID, SG_IO, SgDevice, SgIoHdr, \
    TransportError
from ndmpd.config import build
from ndmpd.context import ServerContext
from ndmpd.devices import cartridge
from ndmpd.wire import C

from .test_tape_service import err, open_session


@pytest.fixture
def ctx(tmp_path):
    (tmp_path / "vol").mkdir()
    data = {
        "server": {"listen": ["127.0.0.1:10000"], "state_dir": str(tmp_path / "state")},
        "user": [{"name": "ndmp", "password": "secret"}],
        "volume": [{"name": "/export/data", "path": str(tmp_path / "vol")}],
        "tape": [{"name": "vtape0", "path": str(tmp_path / "vtape0.img")}, {"name": "ltape0"}],
        "changer": [{"name": "vlib0", "path": str(tmp_path / "lib"), "drives": ["ltape0"], "slots": 2}],
    }
    return ServerContext(build(data, "<test>", tmp_path))


INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])


def test_open_execute_and_the_one_device_rules(ctx):
    session, dma = open_session(ctx)
    assert err(dma.call("SCSI_OPEN", device="nope")) == C.NO_DEVICE_ERR
    assert err(dma.call("SCSI_EXECUTE_CDB", flags=1, timeout=0, datain_len=96, cdb=INQUIRY, dataout=b"")) \
        == C.DEV_NOT_OPEN_ERR
    assert err(dma.call("SCSI_OPEN", device="vlib0")) == C.NO_ERR
    reply = dma.call("SCSI_EXECUTE_CDB", flags=C.SCSI_DATA_IN, timeout=1000, datain_len=96, cdb=INQUIRY, dataout=b"")
    assert err(reply) == C.NO_ERR and reply.body.status == 0 and reply.body.datain[0] == 0x08
    bad = dma.call("SCSI_EXECUTE_CDB", flags=0, timeout=0, datain_len=0, cdb=bytes([0xEE, 0, 0, 0, 0, 0]),
                   dataout=b"")
    assert err(bad) == C.NO_ERR and bad.body.status == 2 and bad.body.ext_sense[12] == 0x20
    both = dma.call("SCSI_EXECUTE_CDB", flags=3, timeout=0, datain_len=8, cdb=INQUIRY, dataout=b"x")
    assert err(both) == C.ILLEGAL_ARGS_ERR
    assert err(dma.call("SCSI_EXECUTE_CDB", flags=0, timeout=0, datain_len=0, cdb=b"", dataout=b"")) \
        == C.ILLEGAL_ARGS_ERR
    state = dma.call("SCSI_GET_STATE")
    assert err(state) == C.NO_ERR and (state.body.target_id, state.body.target_lun) == (0, 0)
    assert err(dma.call("TAPE_OPEN", device="ltape0", mode=C.TAPE_READ_MODE)) == C.DEVICE_OPENED_ERR
    assert err(dma.call("SCSI_OPEN", device="vlib0")) == C.DEVICE_OPENED_ERR
    assert err(dma.call("SCSI_RESET_DEVICE")) == C.NO_ERR
    assert err(dma.call("SCSI_CLOSE")) == C.NO_ERR
    assert err(dma.call("SCSI_CLOSE")) == C.DEV_NOT_OPEN_ERR
    assert err(dma.call("SCSI_OPEN", device="vlib0")) == C.NO_ERR


def _move(dma, source: int, destination: int):
    cdb = bytes([0xA5, 0]) + struct.pack(">HHH", 0, source, destination) + bytes(4)
    return dma.call("SCSI_EXECUTE_CDB", flags=0, timeout=0, datain_len=0, cdb=cdb, dataout=b"")


def test_a_robot_waits_for_a_tape_call_in_progress_and_the_reader_then_finds_no_tape(ctx):
    library = ctx.changers.libraries["vlib0"]
    cartridge.create(library.cartridge_path("R1"), 1 << 20, None, "R1")
    library.place("R1", None, (2,))
    robot, robot_dma = open_session(ctx)
    assert err(robot_dma.call("SCSI_OPEN", device="vlib0")) == C.NO_ERR
    assert _move(robot_dma, 1024, 128).body.status == 0
    reader, reader_dma = open_session(ctx)
    assert err(reader_dma.call("TAPE_OPEN", device="ltape0", mode=C.TAPE_RDWR_MODE)) == C.NO_ERR
    assert err(reader_dma.call("TAPE_WRITE", data_out=b"r" * 512)) == C.NO_ERR
    drive_lock, drive = ctx.drives.lock("ltape0"), ctx.drives.drive("ltape0")
    assert reader.tape.lock is drive_lock
    replies = []
    with drive_lock:                        # the reader's session is in the middle of a tape call
        robot_thread = threading.Thread(target=lambda: replies.append(_move(robot_dma, 128, 1024)))
        robot_thread.start()
        robot_thread.join(0.3)
        assert robot_thread.is_alive() and drive.loaded and not replies
    robot_thread.join(5)
    assert replies[0].body.status == 0 and not drive.loaded
    assert err(reader_dma.call("TAPE_READ", count=512)) == C.NO_TAPE_LOADED_ERR
    assert err(reader_dma.call("TAPE_CLOSE")) == C.NO_ERR
    assert cartridge.Cartridge(library.cartridge_path("R1"), writable=False).eod > cartridge.DATA_START


def test_v3_set_target_and_v2_reset_bus(ctx):
    for version in (3, 2):
        session, dma = open_session(ctx, version)
        assert err(dma.call("SCSI_OPEN", device="vlib0")) == 0
        assert err(dma.call("SCSI_SET_TARGET", device="vlib0", target_controller=0, target_id=3, target_lun=0)) \
            == C.ILLEGAL_ARGS_ERR
        assert err(dma.call("SCSI_SET_TARGET", device="vlib0", target_controller=0, target_id=0, target_lun=0)) == 0
        if version == 2:
            assert err(dma.call("SCSI_RESET_BUS")) == 0
        session.teardown()


def test_config_lists_the_changer(ctx):
    session, dma = open_session(ctx)
    info = dma.call("CONFIG_GET_SCSI_INFO").body.scsi_info
    assert [c.device for i in info for c in i.caplist] == ["vlib0"]


class FakeSg:
    """Plays a changer behind SG_IO: answers INQUIRY, fails TEST UNIT READY with sense, or the bus."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, int, int, int]] = []
        self.host_status = 0

    def __call__(self, fd: int, request: int, arg: object) -> int:
        if request == SG_GET_SCSI_ID:
            arg.channel, arg.scsi_id, arg.lun = 1, 5, 0
            return 0
        assert request == SG_IO and isinstance(arg, SgIoHdr) and arg.interface_id == ord("S")
        cdb = ctypes.string_at(arg.cmdp, arg.cmd_len)
        self.seen.append((cdb, arg.dxfer_direction, arg.dxfer_len, arg.timeout))
        arg.host_status = self.host_status
        if cdb[0] == 0x12:
            answer = bytes([0x08]) + bytes(7) + b"REALVEND"
            ctypes.memmove(arg.dxferp, answer, len(answer))
            arg.resid = arg.dxfer_len - len(answer)
        else:
            sense = bytes([0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x01, 0, 0, 0, 0])
            ctypes.memmove(arg.sbp, sense, len(sense))
            arg.status, arg.sb_len_wr, arg.driver_status = 2, len(sense), 0x08
        return 0


def test_sg_passthrough_marshals_cdbs_data_and_sense():
    fake = FakeSg()
    device = SgDevice("/dev/sg9", ioctl=fake, opener=lambda path: -1)
    result = device.execute(INQUIRY, 96, timeout_ms=5000)
    assert result.status == 0 and result.data_in == bytes([0x08]) + bytes(7) + b"REALVEND"
    assert fake.seen[-1] == (INQUIRY, SG_DXFER_FROM_DEV, 96, 5000)
    result = device.execute(bytes(6))
    assert result.status == 2 and struct.unpack_from("BB", result.sense, 12) == (0x04, 0x01)
    assert fake.seen[-1][1:3] == (SG_DXFER_NONE, 0) and fake.seen[-1][3] > 0          # a default timeout
    assert device.address() == (1, 5, 0)
    fake.host_status = 0x03                                                               # DID_TIME_OUT
    with pytest.raises(TransportError):
        device.execute(bytes(6))
