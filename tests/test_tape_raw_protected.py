"""TAPE_OPEN in RAW mode on a write-protected cartridge opens it for reading (Amanda opens
every tape RAW, and archives are protected on purpose); every write is refused with
WRITE_PROTECT_ERR and nothing on the cartridge changes. RDWR stays refused."""

from __future__ import annotations

import subprocess

import pytest

from ndmpd.config import build
from ndmpd.context import ServerContext
from ndmpd.devices import cartridge
from ndmpd.devices.registry import DriveRegistry
from ndmpd.devices.st_tape import LinuxTape
from ndmpd.wire import C

from .fake_st import FakeStKernel
from .helpers import make_config
from .test_tape_service import err, open_session, read_all, write_reference_tape


def protect(path, on: bool = True) -> None:
    with cartridge.Cartridge(path, True) as cart:
        cart.set_write_protected(on)


def refuses_every_write(dma) -> None:
    assert err(dma.call("TAPE_WRITE", data_out=b"x" * 512)) == C.WRITE_PROTECT_ERR
    assert err(dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)) == C.WRITE_PROTECT_ERR
    assert err(dma.call("MOVER_SET_RECORD_SIZE", len=8192)) == C.NO_ERR
    assert err(dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_LOCAL)) == C.WRITE_PROTECT_ERR


@pytest.mark.parametrize("version", [4, 3])
def test_raw_open_reads_a_protected_cartridge_and_refuses_every_write(tmp_path, version):
    config = make_config(tmp_path)
    ctx = ServerContext(config)
    session, dma = open_session(ctx, version)
    write_reference_tape(dma)
    dma.call("TAPE_CLOSE")
    path = config.tapes[0].path
    protect(path)
    before = path.read_bytes()
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)) == C.WRITE_PROTECT_ERR
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RAW_MODE)) == C.NO_ERR
    assert dma.call("TAPE_GET_STATE").body.flags & C.TAPE_STATE_WR_PROT
    assert read_all(dma) == [bytes([k]) * 1000 for k in range(3)]
    refuses_every_write(dma)
    assert err(dma.call("TAPE_CLOSE")) == C.NO_ERR
    assert path.read_bytes() == before                       # no filemark on close, nothing written
    protect(path, False)
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RAW_MODE)) == C.NO_ERR
    assert err(dma.call("TAPE_WRITE", data_out=b"y" * 512)) == C.NO_ERR      # unprotected: RAW writes


def test_raw_open_of_a_protected_tape_in_an_st_drive_reads_and_refuses_writes(tmp_path):
    config = make_config(tmp_path)
    kernel = FakeStKernel()
    drives = DriveRegistry(config.tapes, factory=lambda tape: LinuxTape(tape.name, "/dev/nst0", sys=kernel))
    ctx = ServerContext(config, drives=drives)
    session, dma = open_session(ctx)
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)) == C.NO_ERR
    assert err(dma.call("TAPE_WRITE", data_out=b"z" * 1024)) == C.NO_ERR
    assert err(dma.call("TAPE_CLOSE")) == C.NO_ERR
    kernel.write_protected = True
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)) == C.WRITE_PROTECT_ERR
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RAW_MODE)) == C.NO_ERR
    assert read_all(dma)[0] == b"z" * 1024
    refuses_every_write(dma)


@pytest.fixture
def immutable():
    """Makes files immutable (chattr +i: not even root may write them), undone afterwards."""
    made = []

    def make(path) -> None:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("chattr +i is not supported here")
        made.append(path)
    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_tape_get_state_reports_write_protection_of_a_cartridge_file_that_cannot_be_written(tmp_path, immutable):
    """A cartridge whose file cannot be opened for writing opens RAW read-only, like a
    protected one, and TAPE_GET_STATE says so: a DMA learns it before it tries to write."""
    config = make_config(tmp_path)
    session, dma = open_session(ServerContext(config), 4)
    write_reference_tape(dma)
    dma.call("TAPE_CLOSE")
    immutable(config.tapes[0].path)
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RAW_MODE)) == C.NO_ERR
    assert dma.call("TAPE_GET_STATE").body.flags & C.TAPE_STATE_WR_PROT
    assert read_all(dma) == [bytes([k]) * 1000 for k in range(3)]
    refuses_every_write(dma)
    assert err(dma.call("TAPE_CLOSE")) == C.NO_ERR


def test_a_protected_cartridge_loaded_into_a_drive_open_for_writing_reads_and_refuses_writes(tmp_path):
    """A library loads a protected cartridge into a drive a session has open RDWR (another
    session's MOVE MEDIUM): as with st, the new cartridge reads and spaces, and only writes
    are refused, with WRITE_PROTECT_ERR; on main every operation was refused."""
    vol = tmp_path / "vol"
    vol.mkdir()
    ctx = ServerContext(build({
        "server": {"listen": ["127.0.0.1:10000"], "state_dir": str(tmp_path / "state")},
        "user": [{"name": "ndmp", "password": "secret"}],
        "volume": [{"name": "/export/data", "path": str(vol)}],
        "tape": [{"name": "ltape0"}],
        "changer": [{"name": "vlib0", "path": str(tmp_path / "lib"), "drives": ["ltape0"], "slots": 2}]},
        "<test>", tmp_path))
    library = ctx.changers.libraries["vlib0"]
    library.directory.mkdir(exist_ok=True)
    archive, scratch = library.cartridge_path("ARC001"), library.cartridge_path("SCR001")
    session, dma = open_session(ctx)
    ctx.drives.change_cartridge("ltape0", archive)
    assert err(dma.call("TAPE_OPEN", device="ltape0", mode=C.TAPE_RDWR_MODE)) == C.NO_ERR
    assert err(dma.call("TAPE_WRITE", data_out=b"a" * 1000)) == C.NO_ERR
    assert err(dma.call("TAPE_CLOSE")) == C.NO_ERR
    protect(archive)
    before = archive.read_bytes()
    ctx.drives.change_cartridge("ltape0", scratch)
    assert err(dma.call("TAPE_OPEN", device="ltape0", mode=C.TAPE_RDWR_MODE)) == C.NO_ERR
    ctx.drives.change_cartridge("ltape0", archive)                   # as a MOVE MEDIUM does
    assert err(dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)) == C.NO_ERR
    assert dma.call("TAPE_GET_STATE").body.flags & C.TAPE_STATE_WR_PROT
    assert read_all(dma) == [b"a" * 1000]
    assert err(dma.call("TAPE_WRITE", data_out=b"x" * 512)) == C.WRITE_PROTECT_ERR
    assert err(dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)) == C.WRITE_PROTECT_ERR
    assert err(dma.call("TAPE_CLOSE")) == C.NO_ERR
    assert archive.read_bytes() == before
