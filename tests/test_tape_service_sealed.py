"""The TAPE service on an encrypted drive: a DMA sees the records it wrote, the same errors at
filemarks and end of data, IO_ERR with the key named when the key is missing, and IO_ERR at a
tampered record."""

from __future__ import annotations

import shutil

from ndmpd.config import build
from ndmpd.context import ServerContext
from ndmpd.devices import cartridge
from ndmpd.keystore import Keystore, KeySource
from ndmpd.wire import C

from .test_tape_service import err, open_session, write_reference_tape


def context(tmp_path, key: str | None) -> ServerContext:
    (tmp_path / "vol").mkdir(parents=True, exist_ok=True)
    tape = {"name": "vtape0", "path": str(tmp_path / "vtape0.img")}
    if key:
        Keystore(KeySource(tmp_path / "state" / "keys")).create(key)
        tape["encryption_key"] = key
    return ServerContext(build({
        "server": {"listen": ["127.0.0.1:10000"], "state_dir": str(tmp_path / "state")},
        "user": [{"name": "ndmp", "password": "secret"}],
        "tape": [tape],
    }, "<test>", tmp_path))


def sealed_context(tmp_path) -> ServerContext:
    return context(tmp_path, "site")


def dialogue(ctx, version: int) -> list:
    """What a DMA sees for writes, reads across filemarks and end of data, spacing and state."""
    session, dma = open_session(ctx, version)
    write_reference_tape(dma)                         # three records and a filemark, rewound
    dma.call("TAPE_MTIO", tape_op=C.MTIO_FSF, count=1)
    dma.call("TAPE_WRITE", data_out=b"second file")
    dma.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)
    dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
    seen = []
    for _ in range(7):
        reply = dma.call("TAPE_READ", count=600)
        seen.append((err(reply), bytes(reply.body.data_in)))
    for op, count in [(C.MTIO_BSF, 1), (C.MTIO_BSR, 2), (C.MTIO_FSR, 1), (C.MTIO_FSF, 1), (C.MTIO_BSF, 2)]:
        reply = dma.call("TAPE_MTIO", tape_op=op, count=count).body
        state = dma.call("TAPE_GET_STATE").body
        seen.append((op, reply.error, reply.resid_count, state.file_num, state.blockno))
        reply = dma.call("TAPE_READ", count=5)
        seen.append((err(reply), bytes(reply.body.data_in)))
    session.teardown()
    return seen


def test_a_dma_sees_the_same_dialogue_on_plain_and_encrypted_drives(tmp_path):
    for version in (4, 3):
        plain = dialogue(context(tmp_path / f"plain{version}", None), version)
        sealed = dialogue(context(tmp_path / f"sealed{version}", "site"), version)
        assert plain == sealed
        assert any(data for _, data in plain[:7]) and any(e == C.EOF_ERR for e, _ in plain[:7])
    assert b"\x01" * 64 not in (tmp_path / "sealed4" / "vtape0.img").read_bytes()


def test_missing_key_is_an_io_error_at_open_and_a_tampered_record_at_read(tmp_path, caplog):
    ctx = sealed_context(tmp_path)
    session, dma = open_session(ctx)
    write_reference_tape(dma)
    dma.call("TAPE_CLOSE")
    path = tmp_path / "vtape0.img"
    with cartridge.Cartridge(path, False) as cart:
        second = [e for e in cart.entries() if not e.is_filemark][1]
        key_id = cart.superblock.seal.key_id.hex()
    data = bytearray(path.read_bytes())
    data[second.offset + cartridge.HEADER_SIZE + 500] ^= 1
    path.write_bytes(bytes(data))
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)) == 0
    assert err(dma.call("TAPE_READ", count=65536)) == 0
    reply = dma.call("TAPE_READ", count=65536)
    assert err(reply) == C.IO_ERR and reply.body.data_in == b""
    dma.call("TAPE_CLOSE")
    shutil.rmtree(tmp_path / "state" / "keys")
    assert err(dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)) == C.IO_ERR
    assert f"encrypted with key site (id {key_id})" in caplog.text
    session.teardown()
