"""The mover on encrypted cartridges: direct-access reads and the EOM pause behave exactly as on
plain ones (the same tests, run on sealed drives), and a tampered record halts a restore with
MEDIA_ERROR after the records before it, sending none of its bytes."""

from __future__ import annotations

import pytest

from ndmpd.devices import cartridge
from ndmpd.keystore import Keystore, KeySource
from ndmpd.wire import C
from tests import test_mover_transfer as plain
from tests.server_thread import ServerThread

ALL = (1 << 64) - 1


@pytest.fixture
def sealed_server(request, tmp_path):
    tape = getattr(request, "param", {"capacity": "64MiB"})
    Keystore(KeySource(tmp_path / "state" / "keys")).create("k")
    server = ServerThread(plain.config(tmp_path, encryption_key="k", **tape))
    yield server
    server.stop()


def assert_sealed(server) -> None:
    """Every cartridge the drives wrote is sealed (read without the drive's lock: it may still hold it)."""
    for tape in server.ctx.config.tapes:
        if tape.path.exists():
            data = tape.path.read_bytes()
            sb = cartridge.Superblock.unpack(data, str(tape.path))
            assert len(data) == cartridge.DATA_START or sb.seal is not None


def test_direct_access_reads_are_the_same_on_an_encrypted_cartridge(sealed_server):
    plain.test_direct_access_reads_seek_inside_the_window_and_pause_outside(sealed_server)
    assert_sealed(sealed_server)


@pytest.mark.parametrize("sealed_server", [{"capacity": "1MiB", "early_warning": "128KiB"}], indirect=True)
def test_a_backup_spans_two_encrypted_cartridges_at_eom(sealed_server, monkeypatch):
    """The plain test reads the cartridges' payloads directly; here they are decrypted first."""
    monkeypatch.setattr(plain, "Cartridge", DecryptingCartridge.bind(sealed_server))
    plain.test_backup_spans_two_cartridges_on_eom(sealed_server)
    assert_sealed(sealed_server)


class DecryptingCartridge(cartridge.Cartridge):
    """A Cartridge whose read_payload returns the record as the DMA wrote it."""

    keys = None

    @classmethod
    def bind(cls, server):
        from ndmpd.devices.sealed_records import CartridgeKeys
        tape = server.ctx.config.tapes[0]
        cls.keys = CartridgeKeys("test", Keystore(tape.keys))
        return cls

    def __init__(self, path, writable):
        super().__init__(path, writable)
        self.seal = self.keys.seal_for(self)
        self._index = {}
        index = 0
        for entry in self.entries():
            self._index[entry.offset] = index
            index = 0 if entry.is_filemark else index + 1

    def read_payload(self, entry, limit):
        return self.seal.open_record(self, entry, 0, self._index[entry.offset], limit)


def test_a_tampered_record_halts_the_restore_with_media_error_and_sends_none_of_it(sealed_server, tmp_path):
    record = 4096
    total = 40 * record
    expected = b"".join(bytes(c) for c in plain.stream_chunks(total))
    with sealed_server.client() as dma:
        plain.backup(dma, total, record)
        dma.call("TAPE_CLOSE")
    path = sealed_server.ctx.config.tapes[0].path
    with cartridge.Cartridge(path, False) as cart:
        victim = [e for e in cart.entries() if not e.is_filemark][25]
    with open(path, "r+b") as f:
        f.seek(victim.offset + cartridge.HEADER_SIZE + 1000)
        byte = f.read(1)
        f.seek(victim.offset + cartridge.HEADER_SIZE + 1000)
        f.write(bytes([byte[0] ^ 0x80]))
    with sealed_server.client() as dma:
        dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)
        sock = plain.start_recover(dma, record)
        dma.call("MOVER_READ", offset=0, length=total)
        got = bytearray()
        sock.settimeout(30)
        while chunk := sock.recv(1 << 20):
            got += chunk
        halted = dma.wait_post(C.NOTIFY_MOVER_HALTED)
        assert halted.reason == C.MOVER_HALT_MEDIA_ERROR
        sock.close()
    assert bytes(got) == expected[:25 * record]
