"""The TAPE and MOVER services through a sans-IO session: bad input gets the documented NDMP
error and never costs data already on the cartridge."""

from __future__ import annotations

import pytest

from ndmpd.config import build
from ndmpd.context import ServerContext
from ndmpd.devices import cartridge
from ndmpd.session import Session
from ndmpd.wire import C, T

from .helpers import FakeDma, make_config


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


def open_session(ctx, version=4):
    session = Session(ctx, "test")
    session.greet()
    dma = FakeDma(session, version)
    dma.pump()
    if version != 4:
        dma.call("CONNECT_OPEN", protocol_version=version)
    auth = T.auth_data(C.AUTH_TEXT, auth_text=T.auth_text("ndmp", "secret"))
    assert dma.call("CONNECT_CLIENT_AUTH", auth_data=auth).body.error == 0
    return session, dma


def err(reply) -> int:
    assert reply.header.error_code == 0, reply.header
    return reply.body.error


@pytest.fixture
def ctx(config):
    return ServerContext(config)


def write_reference_tape(dma):
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)) == 0
    for k in range(3):
        assert err(dma.call("TAPE_WRITE", data_out=bytes([k]) * 1000)) == 0
    assert err(dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)) == 0
    assert err(dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)) == 0


def read_all(dma):
    dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
    out = []
    while (reply := dma.call("TAPE_READ", count=65536)).body.error == 0:
        out.append(reply.body.data_in)
    return out


def test_oversized_write_huge_read_and_unknown_mtio_are_refused(ctx, config):
    session, dma = open_session(ctx)
    write_reference_tape(dma)
    limit = config.tapes[0].max_block_size
    assert err(dma.call("TAPE_WRITE", data_out=bytes(limit + 1))) == C.ILLEGAL_ARGS_ERR
    assert err(dma.call("TAPE_READ", count=1 << 31)) == C.ILLEGAL_ARGS_ERR
    assert err(dma.call("TAPE_READ", count=0xFFFFFFFF)) == C.ILLEGAL_ARGS_ERR
    reply = dma.call("TAPE_MTIO", tape_op=99, count=1)
    assert err(reply) == C.ILLEGAL_ARGS_ERR
    assert err(dma.call("TAPE_MTIO", tape_op=C.MTIO_TUR, count=1)) == 0
    assert read_all(dma) == [bytes([k]) * 1000 for k in range(3)]


def test_v3_has_no_tur_and_reads_end_of_data_as_eof(ctx):
    session, dma = open_session(ctx, version=3)
    write_reference_tape(dma)
    assert err(dma.call("TAPE_MTIO", tape_op=7, count=1)) == C.ILLEGAL_ARGS_ERR
    dma.call("TAPE_MTIO", tape_op=C.MTIO_FSF, count=1)
    assert err(dma.call("TAPE_READ", count=100)) == C.EOF_ERR


def test_second_session_gets_device_busy_until_the_first_lets_go(ctx):
    first, dma1 = open_session(ctx)
    write_reference_tape(dma1)
    second, dma2 = open_session(ctx)
    assert err(dma2.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)) == C.DEVICE_BUSY_ERR
    assert err(dma2.call("TAPE_OPEN", device="nosuch", mode=C.TAPE_READ_MODE)) == C.NO_DEVICE_ERR
    first.teardown()                               # connection lost: the drive is released
    assert err(dma2.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)) == 0
    assert read_all(dma2) == [bytes([k]) * 1000 for k in range(3)]


def test_write_on_read_only_open_and_write_protected_cartridge(ctx, config):
    session, dma = open_session(ctx)
    write_reference_tape(dma)
    dma.call("TAPE_CLOSE")
    dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)
    assert err(dma.call("TAPE_WRITE", data_out=b"x")) == C.PERMISSION_ERR
    assert err(dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)) == C.PERMISSION_ERR
    dma.call("TAPE_CLOSE")
    with cartridge.Cartridge(config.tapes[0].path, True) as cart:
        cart.set_write_protected(True)
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)) == C.WRITE_PROTECT_ERR
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)) == 0
    state = dma.call("TAPE_GET_STATE").body
    assert state.flags & C.TAPE_STATE_WR_PROT
    assert read_all(dma) == [bytes([k]) * 1000 for k in range(3)]


def test_corrupt_cartridge_gives_io_error_and_stays_untouched(ctx, config):
    session, dma = open_session(ctx)
    write_reference_tape(dma)
    dma.call("TAPE_CLOSE")
    path = config.tapes[0].path
    data = bytearray(path.read_bytes())
    data[cartridge.DATA_START + 1024 + 2] ^= 0xFF             # second record's header
    path.write_bytes(bytes(data))
    dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
    dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
    assert dma.call("TAPE_READ", count=4096).body.data_in == bytes(1000)
    assert err(dma.call("TAPE_READ", count=4096)) == C.IO_ERR
    dma.call("TAPE_CLOSE")
    assert path.read_bytes() == bytes(data)
    data[0] ^= 0xFF                                           # and now the superblock
    path.write_bytes(bytes(data))
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)) == C.IO_ERR
    assert path.read_bytes() == bytes(data)


def test_truncated_cartridge_keeps_what_was_complete(ctx, config):
    session, dma = open_session(ctx)
    write_reference_tape(dma)
    dma.call("TAPE_CLOSE")
    path = config.tapes[0].path
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 24 - 300)                           # the filemark and part of record 3
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)) == 0
    assert read_all(dma) == [bytes([k]) * 1000 for k in range(2)]
    state = dma.call("TAPE_GET_STATE").body
    assert state.unsupported & C.TAPE_STATE_BLOCKNO_UNS == 0


def test_mover_state_rules(ctx):
    session, dma = open_session(ctx)
    assert err(dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)) == C.DEV_NOT_OPEN_ERR
    assert err(dma.call("MOVER_CONTINUE")) == C.ILLEGAL_STATE_ERR
    assert err(dma.call("MOVER_READ", offset=0, length=10)) == C.ILLEGAL_STATE_ERR
    assert err(dma.call("MOVER_SET_RECORD_SIZE", len=0)) == C.ILLEGAL_ARGS_ERR
    assert err(dma.call("MOVER_SET_RECORD_SIZE", len=8192)) == 0
    assert err(dma.call("MOVER_SET_WINDOW", offset=100, length=8192)) == C.ILLEGAL_ARGS_ERR
    dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)
    assert err(dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_LOCAL)) == C.PERMISSION_ERR
    assert err(dma.call("MOVER_LISTEN", mode=5, addr_type=C.ADDR_LOCAL)) == C.ILLEGAL_ARGS_ERR
    assert err(dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_WRITE, addr_type=C.ADDR_LOCAL)) == 0
    assert err(dma.call("TAPE_READ", count=10)) == C.ILLEGAL_STATE_ERR      # the mover owns the tape
    assert err(dma.call("TAPE_CLOSE")) == C.ILLEGAL_STATE_ERR
    assert err(dma.call("MOVER_READ", offset=0, length=0)) == C.ILLEGAL_ARGS_ERR
    assert err(dma.call("MOVER_ABORT")) == 0
    posts = [m for m in dma.received if m.header.message_code == C.NOTIFY_MOVER_HALTED]
    assert posts and posts[-1].body.reason == C.MOVER_HALT_ABORTED
    state = dma.call("MOVER_GET_STATE").body
    assert (state.state, state.halt_reason) == (C.MOVER_STATE_HALTED, C.MOVER_HALT_ABORTED)
    assert err(dma.call("MOVER_STOP")) == 0
    assert dma.call("MOVER_GET_STATE").body.state == C.MOVER_STATE_IDLE
    assert err(dma.call("TAPE_CLOSE")) == 0


@pytest.mark.parametrize("version", [2, 3, 4])
def test_the_physical_end_is_final_and_keeps_everything_before_it(tmp_path, version):
    """TAPE_WRITE into the early-warning zone: EOM_ERR once, then the writes go through; at the
    physical end IO_ERR for that write and every later one, smaller ones too, with nothing of
    them on tape (a DMA that retries EOM_ERR, as Amanda does, would otherwise never stop).
    Filemarks that fit still close the file, and everything before reads back."""
    data = {"server": {"listen": ["127.0.0.1:10000"], "state_dir": str(tmp_path / "state")},
            "user": [{"name": "ndmp", "password": "secret"}],
            "volume": [{"name": "/export/data", "path": str(tmp_path)}],
            "tape": [{"name": "small", "path": str(tmp_path / "small.img"), "capacity": "1MiB",
                      "early_warning": "256KiB"}]}
    session, dma = open_session(ServerContext(build(data, "<test>", tmp_path)), version)
    assert err(dma.call("TAPE_OPEN", device="small", mode=C.TAPE_RDWR_MODE)) == 0
    record = 32 << 10
    errors, written = [], []
    for k in range(40):                        # 40 records of 32 KiB: more than 1 MiB
        payload = bytes([k]) * record
        code = err(dma.call("TAPE_WRITE", data_out=payload))
        errors.append(code)
        if code == 0:
            written.append(payload)
    assert errors.count(C.EOM_ERR) == 1
    first_io = errors.index(C.IO_ERR)
    assert errors.index(C.EOM_ERR) < first_io
    assert set(errors[first_io:]) == {C.IO_ERR}                 # final: no retry gets through
    assert 20 < len(written) < 32
    assert err(dma.call("TAPE_WRITE", data_out=b"tiny")) == C.IO_ERR
    assert dma.call("TAPE_GET_STATE").body.space_remain == 0        # full, though a few bytes are left
    assert err(dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)) == 0
    assert read_all(dma) == written
    assert err(dma.call("TAPE_CLOSE")) == 0
    with cartridge.Cartridge(tmp_path / "small.img", False) as cart:
        kinds = [e.is_filemark for e in cart.entries()]
    assert kinds == [False] * len(written) + [True]
