"""``ndmpd tape extract`` and ``info`` at the edges: empty tape files, filemark-only and blank
cartridges, end of data right after a filemark; and the failures, each one clear line that
leaves nothing under the output's name: a key file others can read, a wrong or missing key, a
tampered record (no byte of it written), a cartridge cut inside a record or before a filemark,
a corrupt entry header."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ndmpd.devices import cartridge
from ndmpd.devices.sealed_records import CartridgeKeys
from ndmpd.devices.virtual_tape import VirtualTape
from ndmpd.keystore import Keystore, KeySource
from tests.test_key_cli import config

FM = None                     # a filemark in a layout


def ndmpd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndmpd", "tape", *map(str, args)], capture_output=True, timeout=60)


def keystore(tmp_path: Path) -> Keystore:
    """The keystore of the server config() writes (``<state>/keys``), with key "site"."""
    store = Keystore(KeySource(tmp_path / "state" / "keys"))
    if not store.names():
        store.create("site")
    return store


def key_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "keys" / "site" / "v1.key"


def write(tmp_path: Path, sealed: bool, layout: list, name: str = "c.img") -> Path:
    """A cartridge holding ``layout``: records (bytes) and filemarks (FM), closed without the
    filemark a drive adds after a last record (so a layout can end unclosed)."""
    keys = CartridgeKeys("vt", keystore(tmp_path), "site") if sealed else None
    path = tmp_path / name
    drive = VirtualTape("vt", path, 64 << 20, keys=keys)
    drive.open(write=True)
    for item in layout:
        if item is FM:
            drive.write_filemarks(1)
        else:
            drive.write_record(item)
    drive._last_was_write = False            # what a crash before the closing filemark leaves
    drive.close()
    return path


def extract(tmp_path: Path, image: Path, number: int, *extra) -> tuple[subprocess.CompletedProcess, Path]:
    """Extract with the key file into ``out.bin``; returns the run and that path."""
    out = tmp_path / "out.bin"
    return ndmpd("extract", "--key-file", key_file(tmp_path), *extra, image, number, "-o", out), out


def no_output_left(tmp_path: Path) -> bool:
    return not (tmp_path / "out.bin").exists() and not list(tmp_path.glob(".out.bin.*"))


def key_id_of(image: Path) -> str:
    with cartridge.Cartridge(image, False) as cart:
        return cart.superblock.seal.key_id.hex()


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ndmpd tape: "), lines
    return lines[0]


RECS = [bytes([i]) * 1000 + os.urandom(3000) for i in range(4)]
both = pytest.mark.parametrize("sealed", [False, True], ids=["plain", "encrypted"])


@both
def test_empty_tape_files_extract_as_empty_and_the_files_around_them_whole(tmp_path, sealed):
    image = write(tmp_path, sealed, [RECS[0], RECS[1], FM, FM, RECS[2], FM, FM])
    expected = [RECS[0] + RECS[1], b"", RECS[2], b""]
    for number, data in enumerate(expected):
        result, out = extract(tmp_path, image, number)
        assert result.returncode == 0 and result.stderr == b"", result.stderr
        assert out.read_bytes() == data
        piped = ndmpd("extract", "--key-file", key_file(tmp_path), image, number)
        assert piped.returncode == 0 and piped.stdout == data
    out.unlink()
    result, _ = extract(tmp_path, image, 4)           # end of data right after the last filemark
    assert result.returncode == 1 and "no file 4" in one_line(result) and no_output_left(tmp_path)
    info = ndmpd("info", image).stdout.decode().splitlines()
    assert [line.split()[:4] for line in info if line.startswith("file ")] == [
        ["file", "0", "2", "records"], ["file", "1", "0", "records"], ["file", "2", "1", "records"],
        ["file", "3", "0", "records"]]


@both
def test_a_filemark_only_cartridge_has_one_empty_file_and_a_blank_one_none(tmp_path, sealed):
    image = write(tmp_path, sealed, [FM])
    result, out = extract(tmp_path, image, 0)
    assert result.returncode == 0 and out.read_bytes() == b""
    out.unlink()
    assert extract(tmp_path, image, 1)[0].returncode == 1 and no_output_left(tmp_path)
    assert "file 0              0 records               0 bytes" in ndmpd("info", image).stdout.decode()
    blank = tmp_path / "blank.img"
    assert ndmpd("create", blank, "--capacity", "1MiB").returncode == 0
    result, _ = extract(tmp_path, blank, 0)
    assert result.returncode == 1 and "no file 0" in one_line(result) and no_output_left(tmp_path)
    assert "file " not in ndmpd("info", blank).stdout.decode()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused_naming_it_and_nothing_is_extracted(tmp_path, mode):
    image = write(tmp_path, True, [RECS[0], FM])
    key = key_file(tmp_path)
    key.chmod(mode)
    out = tmp_path / "out.bin"
    for target in (["-o", out], []):
        result = ndmpd("extract", "--key-file", key, image, 0, *target)
        line = one_line(result)
        assert result.returncode == 1 and str(key) in line and f"mode {mode:o}" in line and "chmod 600" in line
        assert result.stdout == b"" and no_output_left(tmp_path)
    key.chmod(0o600)
    assert extract(tmp_path, image, 0)[0].returncode == 0


def test_a_key_in_the_keystore_others_can_read_is_named_with_the_missing_key(tmp_path):
    image = write(tmp_path, True, [RECS[0], FM])
    key_file(tmp_path).chmod(0o644)
    result = ndmpd("extract", "--config", config(tmp_path), image, 0, "-o", tmp_path / "out.bin")
    line = one_line(result)
    needed = key_id_of(image)
    assert result.returncode == 1 and needed in line and "mode 644" in line and str(key_file(tmp_path)) in line
    assert no_output_left(tmp_path)


def test_wrong_and_missing_keys_are_named_by_id_and_nothing_is_extracted(tmp_path):
    image = write(tmp_path, True, [RECS[0], FM])
    needed = key_id_of(image)
    other = tmp_path / "other.key"
    other.write_bytes(b"\1" * 32)
    other.chmod(0o600)
    out = tmp_path / "out.bin"
    wrong = ndmpd("extract", "--key-file", other, image, 0, "-o", out)
    line = one_line(wrong)
    assert wrong.returncode == 1 and needed in line and "wrong key" in line and str(other) in line
    assert no_output_left(tmp_path)
    key_file(tmp_path).unlink()                            # the server's keystore lost it
    missing = ndmpd("extract", "--config", config(tmp_path), image, 0)
    line = one_line(missing)
    assert missing.returncode == 1 and needed in line and "missing key" in line and missing.stdout == b""
    keystore(tmp_path)                                     # "site" again: another key, same name
    renewed = ndmpd("extract", "--config", config(tmp_path), image, 0, "-o", out)
    line = one_line(renewed)
    assert renewed.returncode == 1 and needed in line and "wrong key" in line and no_output_left(tmp_path)
    info = ndmpd("info", image)                            # info needs no key: it names the one needed
    assert info.returncode == 0 and f"key site (id {needed})" in info.stdout.decode()


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_tampered_record_stops_extract_at_it_with_no_byte_of_it_written(tmp_path):
    image = write(tmp_path, True, [RECS[0], FM, RECS[0], RECS[1], RECS[2], RECS[3], FM])
    with cartridge.Cartridge(image, False) as cart:
        target = [e for e in cart.entries() if not e.is_filemark][3]       # file 1, record 2
    flip(image, target.offset + cartridge.HEADER_SIZE + target.length // 2)
    result, _ = extract(tmp_path, image, 1)
    line = one_line(result)
    assert result.returncode == 1 and "tape file 1 record 2" in line and "fails authentication" in line
    assert no_output_left(tmp_path)
    piped = ndmpd("extract", "--key-file", key_file(tmp_path), image, 1)
    assert piped.returncode == 1 and piped.stdout == RECS[0] + RECS[1]     # the authentic records before it only
    assert extract(tmp_path, image, 0)[0].returncode == 0                  # the other file is intact
    assert ndmpd("info", image).returncode == 0                            # headers intact: info lists the files


@both
def test_a_cartridge_cut_inside_a_record_fails_the_file_it_cuts(tmp_path, sealed):
    image = write(tmp_path, sealed, [RECS[0], FM, RECS[1], RECS[2], RECS[3]])
    size = image.stat().st_size
    os.truncate(image, size - 1000)                        # inside record 2 of file 1
    result, _ = extract(tmp_path, image, 1)
    line = one_line(result)
    assert result.returncode == 1 and "tape file 1 ends after record 1" in line and "inside an entry" in line
    assert no_output_left(tmp_path)
    info = ndmpd("info", image).stdout.decode()
    assert "torn " in info and "(no closing filemark)" in info
    assert "file 1              2 records" in info
    result, out = extract(tmp_path, image, 0)              # the file before the cut is whole
    assert result.returncode == 0 and out.read_bytes() == RECS[0]


@both
def test_a_file_cut_before_its_filemark_fails_when_encrypted_and_warns_when_plain(tmp_path, sealed):
    image = write(tmp_path, sealed, [RECS[0], RECS[1], FM, RECS[2], RECS[3], FM])
    with cartridge.Cartridge(image, False) as cart:
        last_fm = [e for e in cart.entries() if e.is_filemark][-1]
    os.truncate(image, last_fm.offset)                     # at an entry boundary: nothing torn
    result, out = extract(tmp_path, image, 1)
    line = one_line(result)
    assert "tape file 1 ends after record 1 without a closing filemark" in line
    if sealed:
        assert result.returncode == 1 and "authenticated end" in line and no_output_left(tmp_path)
    else:
        assert result.returncode == 0 and "warning" in line and out.read_bytes() == RECS[2] + RECS[3]
    info = ndmpd("info", image).stdout.decode()
    assert "torn " not in info and info.rstrip().endswith("(no closing filemark)")


@both
def test_a_corrupt_entry_header_is_named_by_tape_file_and_record(tmp_path, sealed):
    image = write(tmp_path, sealed, [RECS[0], FM, RECS[1], RECS[2], RECS[3], FM])
    with cartridge.Cartridge(image, False) as cart:
        target = [e for e in cart.entries() if not e.is_filemark][2]       # file 1, record 1
    flip(image, target.offset + 5)                          # its length field
    result, _ = extract(tmp_path, image, 1)
    line = one_line(result)
    assert result.returncode == 1 and "tape file 1 record 1" in line and "corrupt entry" in line
    assert no_output_left(tmp_path)
    info = ndmpd("info", image)
    assert info.returncode == 1 and "tape file 1 record 1" in one_line(info)
    assert "file 0              1 records" in info.stdout.decode()        # the files before it are listed
    assert extract(tmp_path, image, 0)[0].returncode == 0
