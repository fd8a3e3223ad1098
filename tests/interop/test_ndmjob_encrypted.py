"""An encrypted virtual drive under ndmjob: test-tape and test-mover pass, a backup leaves no
plaintext on the cartridge, whole and DAR restores are identical, and missing and rotated
keys behave as documented (CARTRIDGE-FORMAT.md, "Encryption")."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from ndmpd.devices import cartridge
from ndmpd.keystore import Keystore, KeySource
from tests.engine_helpers import build_every_case
from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, run
from tests.interop.test_ndmjob_tape_mover import MOVER_PHASES, TAPE_PHASES, run_series
from tests.trees import describe, differences

pytestmark = pytest.mark.interop
PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB
# write_config ends with vtape0's [[tape]] table: this line lands in it
SEALED_DRIVE = 'encryption_key = "site"\n'
WINDOW = 32


def keystore(tmp_path: Path) -> Keystore:
    return Keystore(KeySource(tmp_path / "state" / "keys"))


@pytest.fixture
def sealed_factory(server_factory, tmp_path):
    """Servers whose vtape0 seals with key "site" (created first)."""
    keystore(tmp_path).create("site")
    return lambda: server_factory(extra=SEALED_DRIVE)


def run_ndmjob(*args: str, timeout: int = 180) -> str:
    done = run([PROGRAM, "-v", *args], timeout=timeout)
    return done.stdout + done.stderr


def sealed_key_id(path: Path) -> str:
    with cartridge.Cartridge(path, False) as cart:
        assert cart.superblock.seal is not None, "the cartridge was written plain"
        return cart.superblock.seal.key_id.hex()


@pytest.mark.parametrize("version", ["4", "3"])
def test_test_tape_passes_on_an_encrypted_drive(ndmjob_suite, sealed_factory, tmp_path, version):
    out = run_series(ndmjob_suite, sealed_factory, "test-tape", version, TAPE_PHASES)
    assert re.search(r"FINAL test-tape Passed -- pass=\d+ warn=0 fail=0", out), out[-2000:]
    assert sealed_key_id(tmp_path / "state" / "vtape0.img") == keystore(tmp_path).current("site").id_hex


def test_test_mover_passes_on_an_encrypted_drive(ndmjob_suite, sealed_factory, tmp_path):
    out = run_series(ndmjob_suite, sealed_factory, "test-mover", "4", MOVER_PHASES)
    assert "FINAL test-mover Passed -- pass=100 warn=0 fail=0" in out
    with cartridge.Cartridge(tmp_path / "state" / "vtape0.img", False) as cart:
        assert cart.superblock.seal is not None or cart.used == 0     # never a plain record


def pattern() -> bytes:
    """1 MiB in which every 32-byte window is distinct (and far from anything else on disk)."""
    return os.urandom(1 << 20)


def windows_found(image: bytes, known: bytes) -> int:
    """How many of ``known``'s 32-byte windows occur anywhere in ``image``: every window of the
    image is looked up in the set of the pattern's windows (one pass, no quadratic search)."""
    wanted = {known[i:i + WINDOW] for i in range(len(known) - WINDOW + 1)}
    view = memoryview(image)
    return sum(1 for i in range(len(image) - WINDOW + 1) if bytes(view[i:i + WINDOW]) in wanted)


def test_a_backup_leaves_no_plaintext_and_restores_whole_and_by_dar(ndmjob, sealed_factory, tmp_path):
    server = sealed_factory()
    vol = tmp_path / "vol"
    src = build_every_case(vol / "src")
    known = pattern()
    (src / "pattern.bin").write_bytes(known)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    agent = server.agent("4")
    index = tmp_path / "backup.idx"
    out = run_ndmjob("-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", "/export/data", "-I", str(index))
    assert "Operation ended OKAY" in out, out
    image = (tmp_path / "state" / "vtape0.img").read_bytes()
    sealed_key_id(tmp_path / "state" / "vtape0.img")
    assert windows_found(image, known) == 0
    assert windows_found(known + b"x", known) > 0          # the scan does find a window that is there

    whole = run_ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", str(vol / "restored"), "-J", str(index))
    assert "Operation ended OKAY" in whole, whole
    assert differences(describe(vol / "src"), describe(vol / "restored" / "src")) == []

    picked = vol / "picked"
    dar = run_ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", str(picked), "-J", str(index),
                 "/src/pattern.bin", "/src/dir/file")
    assert "Operation ended OKAY" in dar, dar
    assert dar.count('DLF "OK') == 2, dar
    assert (picked / "src" / "pattern.bin").read_bytes() == known
    assert (picked / "src" / "dir" / "file").read_bytes() == (src / "dir" / "file").read_bytes()

    # rotation: the next backup from BOT is sealed under version 2; the key of version 1 is
    # still kept, so a cartridge copy written before the rotation still restores
    old_copy = tmp_path / "state" / "before-rotation.img"
    shutil.copyfile(tmp_path / "state" / "vtape0.img", old_copy)
    new = keystore(tmp_path).rotate("site")
    again = run_ndmjob("-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", "/export/data", "-I", str(tmp_path / "b2.idx"))
    assert "Operation ended OKAY" in again, again
    assert sealed_key_id(tmp_path / "state" / "vtape0.img") == new.id_hex
    os.replace(old_copy, tmp_path / "state" / "vtape0.img")
    back = run_ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", str(vol / "old"), "-J", str(index),
                  "/src/pattern.bin")
    assert "Operation ended OKAY" in back, back
    assert (vol / "old" / "src" / "pattern.bin").read_bytes() == known

    # missing key: the restore fails at TAPE_OPEN and the server says which key it needs
    old_id = sealed_key_id(tmp_path / "state" / "vtape0.img")
    shutil.rmtree(tmp_path / "state" / "keys" / "site")
    missing = run_ndmjob("-x", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", str(vol / "none"), "-J", str(index),
                     "/src/pattern.bin")
    assert "Operation ended OKAY" not in missing, missing
    assert not (vol / "none" / "src" / "pattern.bin").exists()
    log = (tmp_path / "ndmpd.log").read_text()
    assert re.search(rf"encrypted with key site \(id {old_id}\).*missing key", log), log[-3000:]
