"""Virtual cartridges on S3 (a real SeaweedFS): the same tape behaviour as a local file, the
record map that lets spacing skip GETs, and what a user sees when the store fails."""

from __future__ import annotations

import logging
import os
import time
import uuid

import pytest

from ndmpd.devices import cartridge
from ndmpd.devices.s3_medium import S3Store
from ndmpd.devices.sealed_records import CartridgeKeys
from ndmpd.devices.tape import DeviceBusy, EarlyWarning, EndOfData, MediaError, PhysicalEnd, Stop, WriteProtected
from ndmpd.devices.virtual_tape import VirtualTape
from ndmpd.keystore import Keystore, KeySource
from ndmpd.store_config import StoreConfig
from tests.interop.test_ndmjob_encrypted import windows_found
from tests.test_cartridge_sealing import read_file
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedS3, start_or_skip

CAPACITY = 256 << 20


def store_for(server: SeaweedS3, bucket: str, tmp_path, secret: str = SECRET_KEY, **kw) -> S3Store:
    creds = tmp_path / f"creds-{uuid.uuid4().hex[:6]}"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n")
    creds.chmod(0o600)
    return S3Store(StoreConfig(bucket, server.endpoint, "lib/", credentials_file=creds, timeout=2.0, **kw))


@pytest.fixture
def bucket(s3_server):
    return s3_server.bucket("t-" + uuid.uuid4().hex[:12])


@pytest.fixture
def store(s3_server, bucket, tmp_path):
    return store_for(s3_server, bucket, tmp_path, part_size=5 << 20)


def drive(store: S3Store, name: str = "CART01", keys: CartridgeKeys | None = None) -> VirtualTape:
    return VirtualTape("s3tape", store.cartridge(name), CAPACITY, keys=keys)


def records(count: int, size: int, seed: int = 0) -> list[bytes]:
    return [bytes([(seed + i) % 251]) * 16 + os.urandom(size - 16) for i in range(count)]


def write_all(tape: VirtualTape, data: bytes, size: int) -> None:
    """As the mover: batches of records until all are written."""
    view, done = memoryview(data), 0
    while done < len(data) // size:
        done += tape.write_records(view[done * size:], size)


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_records_and_filemarks_round_trip_through_objects(store, s3_server, bucket):
    tape = drive(store)
    tape.open(write=True)
    first, second = records(40, 256 << 10), records(3, 1000, seed=7)
    for r in first:                         # 10 MiB: two parts and a last one
        tape.write_record(r)
    tape.write_filemarks(1)
    for r in second:
        tape.write_record(r)
    tape.close()                            # the closing filemark, then the index
    assert not s3_server.open_uploads(bucket)
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == first
    assert read_file(tape) == second
    with pytest.raises(EndOfData):
        tape.read_record(1 << 20)
    tape.close()


def test_spacing_over_mapped_records_fetches_only_what_is_read(store):
    tape = drive(store)
    tape.open(write=True)
    data = records(160, 128 << 10)          # 20 MiB
    write_all(tape, b"".join(data), 128 << 10)
    tape.write_filemarks(1)
    tape.close()
    fresh = S3Store(store.config)            # a cold cache
    tape = drive(fresh)
    tape.open(write=False)
    tape.rewind()
    assert tape.space_records(120) .resid == 0
    assert tape.status().blockno == 120
    assert tape.read_record(1 << 20) == data[120]
    assert tape.space_records(-21).resid == 0
    assert tape.read_record(1 << 20) == data[100]
    result = tape.space_records(100)        # 59 left before the filemark
    assert (result.resid, result.stop) == (100 - 59, Stop.FILEMARK)
    tape.close()
    assert fresh.traffic.got < 6 << 20, fresh.traffic     # a few blocks, not the 20 MiB image


def test_a_write_in_the_middle_discards_what_follows(store, s3_server, bucket):
    tape = drive(store)
    tape.open(write=True)
    for r in records(30, 256 << 10):
        tape.write_record(r)
    tape.write_filemarks(1)
    kept = records(2, 4096, seed=3)
    for r in kept:
        tape.write_record(r)
    tape.write_filemarks(1)
    tape.rewind()
    tape.space_filemarks(1)
    tape.space_records(1)
    replacement = b"R" * 5000
    tape.write_record(replacement)
    tape.close()
    tape.open(write=False)
    tape.rewind()
    tape.space_filemarks(1)
    assert read_file(tape) == [kept[0], replacement]
    tape.close()
    assert not s3_server.open_uploads(bucket)
    keys = s3_server.keys(bucket, "lib/CART01/")
    assert len(keys) <= 4, keys             # the index and the segments it names; no garbage kept


def test_sealed_cartridge_on_s3_holds_no_plaintext(store, s3_server, bucket, tmp_path):
    keystore = Keystore(KeySource(tmp_path / "keys"))
    keystore.create("site")
    tape = drive(store, keys=CartridgeKeys("s3tape", keystore, "site"))
    tape.open(write=True)
    pattern = os.urandom(256 << 10)
    write_all(tape, pattern, 64 << 10)
    tape.write_filemarks(1)
    tape.close()
    client = s3_server.client()
    stored = b"".join(client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in s3_server.keys(bucket))
    assert len(stored) > len(pattern)
    assert windows_found(stored, pattern) == 0
    tape.open(write=False)
    tape.rewind()
    assert b"".join(read_file(tape)) == pattern
    tape.rewind()
    assert tape.space_records(2).resid == 0                 # jumped over mapped records: the chunk
    assert tape.read_record(1 << 20) == pattern[2 * (64 << 10):3 * (64 << 10)]   # index still authenticates
    assert tape.space_records(-2).resid == 0
    assert tape.read_record(1 << 20) == pattern[1 * (64 << 10):2 * (64 << 10)]
    tape.close()
    with cartridge.Cartridge(store.cartridge("CART01"), False) as cart:
        assert cart.superblock.seal is not None


def test_write_protection_and_the_end_of_medium_keep_their_meaning(store):
    tape = VirtualTape("s3tape", store.cartridge("SMALL"), 2 << 20, early_warning=512 << 10)
    tape.open(write=True)
    with pytest.raises(EarlyWarning):
        for r in records(40, 64 << 10):
            tape.write_record(r)
    tape.close()
    tape.open(write=True)                       # from BOT on past the warning to the physical end
    tape.rewind()
    written, warned = [], 0
    with pytest.raises(PhysicalEnd):
        for r in records(40, 64 << 10, seed=1):
            try:
                tape.write_record(r)
            except EarlyWarning:
                warned += 1
                tape.write_record(r)            # the warning refuses one write; the next goes on
            written.append(r)
    assert warned == 1 and 24 <= len(written) < 32, (warned, len(written))
    assert tape.status().space_remain < 64 << 10
    tape.close()
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == written           # everything before the end is on the store
    tape.close()
    with cartridge.Cartridge(store.cartridge("SMALL"), True) as cart:
        cart.set_write_protected(True)
    tape.open(write=False)
    assert tape.status().write_protected
    tape.close()
    with pytest.raises(WriteProtected):
        tape.open(write=True)


def only_one_opens(first, second) -> None:
    """While ``first`` has the cartridge open for writing, ``second`` cannot open it at all;
    once ``first`` closes, it can."""
    first.open(write=True)
    with pytest.raises(DeviceBusy):
        second.open(write=False)
    first.close()
    second.open(write=False)
    second.close()


def test_one_server_never_lets_two_drives_open_one_cartridge(store):
    only_one_opens(drive(store), drive(store))


def test_wrong_credentials_give_one_clear_line(s3_server, bucket, tmp_path):
    bad = store_for(s3_server, bucket, tmp_path, secret="not-the-secret")
    tape = drive(bad)
    with pytest.raises(MediaError) as caught:
        tape.open(write=True)
    message = str(caught.value)
    assert "\n" not in message
    assert f"s3://{bucket}/lib/" in message and "CART01" in message and "wrong credentials" in message, message


def test_store_killed_mid_write_halts_with_reason_and_keeps_earlier_files(tmp_path, caplog):
    caplog.set_level(logging.INFO, "ndmpd.s3")
    server = start_or_skip(tmp_path / "own")
    try:
        bucket = server.bucket("killed-" + uuid.uuid4().hex[:8])
        store = store_for(server, bucket, tmp_path, part_size=5 << 20)
        tape = drive(store)
        tape.open(write=True)
        kept = records(4, 64 << 10)
        for r in kept:
            tape.write_record(r)
        tape.write_filemarks(1)             # tape file 0 is on the store
        for r in records(30, 256 << 10):     # parts of tape file 1 upload
            tape.write_record(r)
        wait_for(lambda: server.open_uploads(bucket), "the upload to begin")
        time.sleep(1)                        # the filer has it on disk: it outlives the kill
        server.kill()
        with pytest.raises(MediaError) as caught:
            for r in records(200, 256 << 10):
                tape.write_record(r)
            tape.write_filemarks(1)
        assert "cannot reach" in str(caught.value) and "tape files written before it are kept" in str(caught.value)
        tape.close()
        server.start()                       # the service is back: the upload is aborted soon
        wait_for(lambda: not server.open_uploads(bucket), "the upload to be aborted")
        assert any("aborted the unfinished upload" in r.getMessage() for r in caplog.records)
        tape.open(write=True)
        tape.rewind()
        assert read_file(tape) == kept
        tape.close()
    finally:
        server.stop()


def test_no_credentials_at_all_is_one_clear_line(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bare = S3Store(StoreConfig("nobody-home", "http://127.0.0.1:9", "lib/", timeout=1.0))
    with pytest.raises(MediaError, match=r"^s3://nobody-home/lib/: .*no credentials \(set store.credentials_file"):
        drive(bare).open(write=False)


def test_an_unreachable_store_fails_tape_open_in_seconds_saying_so(tmp_path):
    import socket
    with socket.socket() as s:                   # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    creds.chmod(0o600)
    dead = S3Store(StoreConfig("nobody-home", f"http://127.0.0.1:{port}", "lib/", credentials_file=creds,
                               timeout=1.0))
    started = time.monotonic()
    with pytest.raises(MediaError) as caught:
        drive(dead).open(write=False)
    assert time.monotonic() - started < 30          # bounded retries, not minutes
    message = str(caught.value)
    assert "\n" not in message and f"cannot reach http://127.0.0.1:{port}" in message, message


def test_a_library_whose_store_is_unreachable_answers_not_ready(tmp_path):
    import socket
    from ndmpd.changer.library import VirtualLibrary
    from ndmpd.changer.smc import SmcEmulator
    from tests.test_smc import res, sense_of
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    creds.chmod(0o600)
    config = StoreConfig("nobody-home", f"http://127.0.0.1:{port}", "lib/", credentials_file=creds, timeout=1.0)
    (tmp_path / "lib").mkdir()
    state = tmp_path / "lib" / "library.json"
    state.write_text('{"elements": {"1024": {"barcode": "A1"}}}')
    library = VirtualLibrary("vlib0", tmp_path / "lib", ("d0",), 4, 1, store=config)
    result = SmcEmulator(library).execute(res(), 8192)
    assert sense_of(result) == (0x2, 0x04, 0x00)          # NOT READY: a DMA retries, nothing changed
    assert state.read_text() == '{"elements": {"1024": {"barcode": "A1"}}}'


def test_a_cartridge_deleted_by_hand_is_no_longer_listed(store, s3_server, bucket):
    """Objects removed with another S3 tool (a store such as SeaweedFS keeps the emptied NAME/
    folder in its listings) or only the index removed: no cartridge is there any more."""
    for name in ("CART01", "CART02", "CART03"):
        written = drive(store, name)
        written.open(write=True)
        written.write_records(records(3, 1024, seed=len(name)), 1024)
        written.write_filemarks(1)
        written.close()
    assert store.names() == ["CART01", "CART02", "CART03"]
    client = s3_server.client()
    for key in s3_server.keys(bucket, "lib/CART02/"):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_object(Bucket=bucket, Key="lib/CART03/index")
    assert store.names() == ["CART01"]
    assert not store.cartridge("CART02").exists() and not store.cartridge("CART03").exists()
