"""Encrypted virtual cartridges: no plaintext at rest, and every kind of tampering (a flipped
byte, swapped or transplanted chunks, truncation) ends in a media error at the right record,
never in wrong data; wrong, missing and rotated keys."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ndmpd.devices import cartridge
from ndmpd.devices.sealed_records import CartridgeKeys, KeyUnavailable
from ndmpd.devices.tape import EndOfData, FilemarkReached, MediaError
from ndmpd.devices.virtual_tape import VirtualTape
from ndmpd.keystore import Keystore, KeySource, KeystoreError

CAPACITY = 64 << 20


def store(tmp_path: Path) -> Keystore:
    return Keystore(KeySource(tmp_path / "keys"))


def drive(tmp_path: Path, keys: Keystore | None, key: str | None, name: str = "c.img") -> VirtualTape:
    return VirtualTape("vt0", tmp_path / name, CAPACITY, keys=CartridgeKeys("vt0", keys, key))


def records(seed: int, count: int = 6, size: int = 4096) -> list[bytes]:
    return [bytes([seed + i]) * 16 + os.urandom(size - 16) for i in range(count)]


def write_files(tape: VirtualTape, files: list[list[bytes]]) -> None:
    tape.open(write=True)
    tape.rewind()
    for recs in files:
        for rec in recs:
            tape.write_record(rec)
        tape.write_filemarks(1)
    tape.close()


def read_file(tape: VirtualTape, limit: int = 1 << 20) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(tape.read_record(limit))
        except FilemarkReached:
            return out


def record_entries(path: Path) -> list[cartridge.Entry]:
    with cartridge.Cartridge(path, False) as cart:
        return [e for e in cart.entries() if not e.is_filemark]


@pytest.fixture
def sealed(tmp_path):
    keys = store(tmp_path)
    keys.create("site")
    tape = drive(tmp_path, keys, "site")
    files = [records(1), records(100)]
    write_files(tape, files)
    return tape, files, keys


def test_round_trip_holds_no_plaintext_and_keeps_positions(sealed, tmp_path):
    tape, files, _ = sealed
    image = (tmp_path / "c.img").read_bytes()
    for recs in files:
        for rec in recs:
            assert rec[16:48] not in image and rec[-32:] not in image
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == files[0]
    assert read_file(tape) == files[1]
    with pytest.raises(EndOfData):
        tape.read_record(100)
    # spacing behaves as on a plain cartridge: back over the last filemark, then two records
    tape.space_filemarks(-1)
    assert tape.status().file_num == 1 and tape.status().blockno is None
    assert tape.space_records(-2).resid == 0
    assert tape.read_record(1 << 20) == files[1][4]
    buffer = memoryview(bytearray(8192))
    assert tape.read_record_into(buffer) == 4096 and bytes(buffer[:4096]) == files[1][5]
    tape.close()


def test_plain_and_sealed_drives_report_the_same_positions_and_lengths(tmp_path):
    keys = store(tmp_path)
    keys.create("site")
    states = []
    for name, key in (("plain.img", None), ("sealed.img", "site")):
        tape = drive(tmp_path, keys, key, name)
        write_files(tape, [records(1, 5), records(50, 3)])
        tape.open(write=False)
        tape.rewind()
        seen = [tape.space_filemarks(1), tape.status().file_num, tape.space_records(2), tape.status().blockno,
                len(tape.read_record(100)), tape.space_records(-3), tape.status().blockno,
                tape.space_filemarks(-1), tape.status(), tape.space_records(-1)]
        seen.append(len(tape.read_record(1 << 20)))
        tape.close()
        states.append(seen)
    plain, sealed_ = states
    assert [s for s in plain if not hasattr(s, "space_remain")] == [s for s in sealed_ if not hasattr(s, "space_remain")]


def test_a_short_read_authenticates_the_whole_record_and_returns_its_start(sealed):
    tape, files, _ = sealed
    tape.open(write=False)
    tape.rewind()
    assert tape.read_record(100) == files[0][0][:100]
    buffer = memoryview(bytearray(10))
    assert tape.read_record_into(buffer) == 10 and bytes(buffer) == files[0][1][:10]
    tape.close()


def expect_error_at(tape: VirtualTape, good: list[bytes], bad_index: int) -> None:
    """Records before ``bad_index`` read back intact; that one is a media error, with no data."""
    tape.open(write=False)
    tape.rewind()
    for i in range(bad_index):
        assert tape.read_record(1 << 20) == good[i]
    buffer = memoryview(bytearray(b"\xAA" * 8192))
    with pytest.raises(MediaError):
        tape.read_record_into(buffer)
    assert set(bytes(buffer)) <= {0, 0xAA}        # no unauthenticated plaintext left in the buffer
    tape.close()


def test_a_flipped_byte_mid_chunk_is_a_media_error_at_that_record(sealed, tmp_path):
    tape, files, _ = sealed
    entry = record_entries(tmp_path / "c.img")[3]
    with open(tmp_path / "c.img", "r+b") as f:
        at = entry.offset + cartridge.HEADER_SIZE + entry.length // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    expect_error_at(tape, files[0], 3)


def test_two_swapped_chunks_are_a_media_error_at_the_first(sealed, tmp_path):
    tape, files, _ = sealed
    entries = record_entries(tmp_path / "c.img")
    one, two = entries[1], entries[2]
    with open(tmp_path / "c.img", "r+b") as f:
        f.seek(one.offset + cartridge.HEADER_SIZE)
        a = f.read(one.length)
        f.seek(two.offset + cartridge.HEADER_SIZE)
        b = f.read(two.length)
        f.seek(one.offset + cartridge.HEADER_SIZE)
        f.write(b)
        f.seek(two.offset + cartridge.HEADER_SIZE)
        f.write(a)
    expect_error_at(tape, files[0], 1)


def test_a_chunk_copied_from_another_cartridge_with_the_same_key_is_refused(sealed, tmp_path):
    tape, files, keys = sealed
    other = drive(tmp_path, keys, "site", "other.img")
    write_files(other, [records(1), records(100)])        # same key, same positions, same sizes
    source = record_entries(tmp_path / "other.img")[2]
    target = record_entries(tmp_path / "c.img")[2]
    with open(tmp_path / "other.img", "rb") as f:
        f.seek(source.offset + cartridge.HEADER_SIZE)
        chunk = f.read(source.length)
    with open(tmp_path / "c.img", "r+b") as f:
        f.seek(target.offset + cartridge.HEADER_SIZE)
        f.write(chunk)
    expect_error_at(tape, files[0], 2)


def test_truncation_at_an_entry_boundary_is_a_media_error_after_the_last_record(sealed, tmp_path):
    tape, files, _ = sealed
    entries = record_entries(tmp_path / "c.img")
    os.truncate(tmp_path / "c.img", entries[4].end)      # file 0 loses record 5 and its filemark
    expect_error_at(tape, files[0], 5)


def test_truncation_mid_entry_is_a_media_error_after_the_last_whole_record(sealed, tmp_path):
    tape, files, _ = sealed
    entries = record_entries(tmp_path / "c.img")
    os.truncate(tmp_path / "c.img", entries[2].offset + 100)
    expect_error_at(tape, files[0], 2)


def test_a_filemark_moved_earlier_fails_its_end_marker(sealed, tmp_path):
    """Records cut out of a file (here: the file's end moved two records back, by copying its
    filemark there) do not pass for a shorter file."""
    tape, files, _ = sealed
    path = tmp_path / "c.img"
    with cartridge.Cartridge(path, False) as cart:
        entries = list(cart.entries())
    mark = entries[6]
    assert mark.is_filemark
    data = path.read_bytes()
    payload = data[mark.offset + cartridge.HEADER_SIZE:mark.end - cartridge.TRAILER_SIZE]
    at = entries[4].offset                      # where record 4 began
    with cartridge.Cartridge(path, True) as cart:
        cart.write_entry(at, cartridge.KIND_FILEMARK, payload)
    tape.open(write=False)
    tape.rewind()
    assert [tape.read_record(1 << 20) for _ in range(4)] == files[0][:4]
    with pytest.raises(MediaError, match="end of 4 records"):
        tape.read_record(1 << 20)
    tape.close()


def test_missing_key_fails_open_naming_the_key_id(sealed, tmp_path):
    tape, _, keys = sealed
    key_id = keys.current("site").id_hex
    shutil.rmtree(tmp_path / "keys")
    reader = drive(tmp_path, store(tmp_path), None)
    with pytest.raises(KeyUnavailable, match=f"key site \\(id {key_id}\\).*missing key"):
        reader.open(write=False)


def test_a_different_key_under_the_same_name_is_named_a_wrong_key(sealed, tmp_path):
    _, _, keys = sealed
    old_id = keys.current("site").id_hex
    shutil.rmtree(tmp_path / "keys" / "site")
    new_id = keys.create("site").id_hex
    with pytest.raises(KeyUnavailable, match=f"id {old_id}\\), but key site here is id {new_id} \\(wrong key"):
        drive(tmp_path, keys, "site").open(write=False)


def test_wrong_key_under_the_same_id_fails_the_key_check(sealed, tmp_path):
    """A cartridge's header whose check value does not match the key of its id (a key file
    replaced under a forged id, or a damaged header) is refused at open."""
    _, _, keys = sealed
    path = tmp_path / "c.img"
    with cartridge.Cartridge(path, True) as cart:
        sb = cart.superblock
        forged = cartridge.Superblock(sb.capacity, sb.early_warning, False, sb.barcode, sb.created,
                                      cartridge.SealInfo(sb.seal.cartridge_id, sb.seal.key_id, bytes(16), "site"))
        os.pwrite(cart.medium.fd, forged.pack(), 0)
    with pytest.raises(KeyUnavailable, match="wrong key"):
        drive(tmp_path, keys, None).open(write=False)


def test_a_drive_whose_key_does_not_exist_fails_open_for_writing(tmp_path):
    tape = drive(tmp_path, store(tmp_path), "nosuch")
    with pytest.raises(KeyUnavailable, match="nosuch: no such key"):
        tape.open(write=True)
    tape.open(write=False)            # reading a plain or blank cartridge needs no key
    tape.close()


def test_rotation_seals_new_cartridges_with_the_new_version_and_old_ones_stay_readable(sealed, tmp_path):
    tape, files, keys = sealed
    old_id = keys.current("site").id
    new = keys.rotate("site")
    assert new.version == 2 and new.id != old_id
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == files[0]
    tape.close()
    fresh = drive(tmp_path, keys, "site", "new.img")
    write_files(fresh, [records(7, 2)])
    with cartridge.Cartridge(tmp_path / "new.img", False) as cart:
        assert cart.superblock.seal.key_id == new.id
    # rewriting the old cartridge from the beginning of tape moves it to the new key, with a new id
    before = cartridge.Cartridge(tmp_path / "c.img", False)
    old_cartridge_id = before.superblock.seal.cartridge_id
    before.close()
    write_files(tape, [records(9, 2)])
    with cartridge.Cartridge(tmp_path / "c.img", False) as cart:
        assert cart.superblock.seal.key_id == new.id and cart.superblock.seal.cartridge_id != old_cartridge_id


def test_plain_cartridges_open_unchanged_and_an_encrypting_drive_does_not_append_plaintext(tmp_path):
    keys = store(tmp_path)
    keys.create("site")
    plain = drive(tmp_path, keys, None)
    write_files(plain, [records(1, 2)])
    expected = read_file_plain(tmp_path / "c.img")
    encrypting = drive(tmp_path, keys, "site")
    encrypting.open(write=True)
    encrypting.rewind()
    assert read_file(encrypting) == expected
    with pytest.raises(MediaError, match="not encrypted"):
        encrypting.write_record(b"x" * 100)
    encrypting.rewind()
    encrypting.write_record(b"secret" * 100)          # from BOT: the cartridge becomes sealed
    encrypting.close()
    with cartridge.Cartridge(tmp_path / "c.img", False) as cart:
        assert cart.superblock.seal is not None
    assert b"secret" not in (tmp_path / "c.img").read_bytes()


def read_file_plain(path: Path) -> list[bytes]:
    with cartridge.Cartridge(path, False) as cart:
        out = []
        for e in cart.entries():
            if e.is_filemark:
                return out
            out.append(cart.read_payload(e, e.length))
    return out


def test_rewriting_a_position_never_reuses_a_nonce(sealed, tmp_path):
    """Record 1 of file 0 written again by two sessions: each time under a new session (its
    envelope prefix, which names the derived key and the counter, differs), record 0 untouched."""
    tape, _, _ = sealed
    path = tmp_path / "c.img"

    def prefixes() -> list[bytes]:
        data = path.read_bytes()
        return [data[e.offset + cartridge.HEADER_SIZE:][:24] for e in record_entries(path)]

    seen = [prefixes()[1]]
    first = prefixes()[0]
    for _ in range(2):
        tape.open(write=True)
        tape.rewind()
        tape.space_records(1)
        tape.write_record(b"y" * 4096)
        tape.close()
        now = prefixes()
        assert now[0] == first and len(now) == 2
        seen.append(now[1])
    assert len(set(seen)) == 3


def test_keystore_files_are_private_and_names_checked(tmp_path):
    keys = store(tmp_path)
    key = keys.create("a-b.c_1")
    assert (key.path.stat().st_mode & 0o777) == 0o600 and len(key.path.read_bytes()) == 32
    with pytest.raises(KeystoreError, match="exists already"):
        keys.create("a-b.c_1")
    with pytest.raises(KeystoreError, match="key name"):
        keys.create("../evil")
    os.chmod(key.path, 0o644)
    with pytest.raises(KeystoreError, match="readable by others"):
        keys.current("a-b.c_1")


def test_backing_over_a_filemark_learns_the_record_count_from_its_end_marker(sealed, tmp_path, monkeypatch):
    """NDMPv4 keeps the head in front of a filemark (a read that meets it spaces back): that
    must not count the whole file backwards at every read, and the count is authenticated."""
    tape, files, _ = sealed
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == files[0]
    steps = []
    original = cartridge.Cartridge.entry_before
    monkeypatch.setattr(cartridge.Cartridge, "entry_before", lambda self, at: steps.append(at) or original(self, at))
    for _ in range(3):
        assert tape.space_filemarks(-1).resid == 0            # in front of file 0's filemark
        with pytest.raises(FilemarkReached):
            tape.read_record(100)                              # crosses it again: end marker checked
    assert len(steps) == 3                                     # one step back each time, no counting
    assert tape.space_filemarks(-1).resid == 0
    assert tape.space_records(-1).resid == 0
    assert tape.read_record(1 << 20) == files[0][-1]
    tape.close()


def test_a_forged_record_count_in_an_end_marker_is_a_media_error(sealed, tmp_path):
    """Crossing the filemark either way: forward it must close exactly the records read,
    backward its count must authenticate."""
    tape, _, _ = sealed
    path = tmp_path / "c.img"
    tape.open(write=False)
    tape.rewind()
    tape.space_filemarks(1)
    tape.close()                                               # the drive keeps its position
    with cartridge.Cartridge(path, False) as cart:
        mark = next(e for e in cart.entries() if e.is_filemark)
    data = bytearray(path.read_bytes())
    data[mark.offset + cartridge.HEADER_SIZE + 7] ^= 1         # the count, in clear: 6 -> 7
    path.write_bytes(bytes(data))
    tape.open(write=False)
    with pytest.raises(MediaError, match="filemark closing tape file 0 fails authentication"):
        tape.space_filemarks(-1)
    tape.rewind()
    with pytest.raises(MediaError, match="filemark closing tape file 0"):
        tape.space_filemarks(1)
    tape.close()
