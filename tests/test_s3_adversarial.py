"""Hostile and broken S3 cartridges (a real SeaweedFS): a damaged or foreign index fails
TAPE_OPEN clearly and is never overwritten, a damaged segment is a MediaError at that
record and never wrong bytes, a write cut off between its segment and its index keeps the
old cartridge readable, and old segments go once an overwrite's index has switched."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import pytest

from ndmpd.devices.s3_layout import HEADER_SIZE, INDEX_CHECK, INDEX_VERSION, PREAMBLE, TAIL_LIMIT
from ndmpd.devices import s3_medium
from ndmpd.devices.s3_medium import INDEX, Openers, S3Store
from ndmpd.devices.tape import EndOfData, MediaError
from ndmpd.store_config import StoreConfig
from tests.test_cartridge_sealing import read_file
from tests import test_s3_cartridge as plain
from tests.test_s3_cartridge import drive, only_one_opens, records, store_for

KEY = "lib/CART01/" + INDEX
bucket, store = plain.bucket, plain.store                      # the same fixtures


def written(tape, files: list[list[bytes]]) -> None:
    tape.open(write=True)
    for file in files:
        for r in file:
            tape.write_record(r)
        tape.write_filemarks(1)
    tape.close()


def get(s3_server, bucket: str, key: str) -> bytes:
    return s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def put(s3_server, bucket: str, key: str, body: bytes) -> None:
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=body)


def segments(s3_server, bucket: str) -> list[str]:
    return sorted(k for k in s3_server.keys(bucket, "lib/CART01/") if not k.endswith("/" + INDEX))


def newer_version(index: bytes) -> bytes:
    """The index with the next layout version in its preamble (checksum made right)."""
    body = PREAMBLE.build(dict(version=INDEX_VERSION + 1)) + index[PREAMBLE.sizeof():-4]
    return body + INDEX_CHECK.build(dict(check=zlib.crc32(body)))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "empty", "newer"])
def test_a_damaged_or_newer_index_fails_open_clearly_and_is_not_overwritten(store, s3_server, bucket, damage):
    written(drive(store), [records(3, 4096)])
    good = get(s3_server, bucket, KEY)
    bad = {"garbage": b"\x00not an index" * 50, "truncated": good[:len(good) // 2],
           "flipped": good[:100] + bytes([good[100] ^ 1]) + good[101:], "empty": b"",
           "newer": newer_version(good)}[damage]
    put(s3_server, bucket, KEY, bad)
    before = set(s3_server.keys(bucket))
    for write in (True, False):
        tape = drive(store)
        with pytest.raises(MediaError) as caught:
            tape.open(write=write)
        message = str(caught.value)
        assert "\n" not in message and "CART01" in message, message
        expected = f"version {INDEX_VERSION + 1} is not supported" if damage == "newer" else "cartridge index"
        assert expected in message, message
    assert get(s3_server, bucket, KEY) == bad                   # nothing overwritten
    assert set(s3_server.keys(bucket)) == before                # nor any segment swept


@pytest.mark.parametrize("damage", ["missing", "shorter"])
def test_a_missing_or_short_segment_is_a_media_error_at_that_record_never_wrong_bytes(store, s3_server, bucket,
                                                                                      damage):
    first, second = records(4, 64 << 10), records(4, 64 << 10, seed=9)
    written(drive(store), [first, second])
    victim = segments(s3_server, bucket)[-1]                   # tape file 1's segment
    if damage == "missing":
        s3_server.client().delete_object(Bucket=bucket, Key=victim)
    else:
        put(s3_server, bucket, victim, get(s3_server, bucket, victim)[:100_000])
    tape = drive(store)
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == first                             # the intact file reads whole
    got = []
    with pytest.raises(MediaError) as caught:
        for _ in range(len(second)):
            got.append(tape.read_record(1 << 20))
    assert got == second[:len(got)]                             # what came back is right
    assert len(got) < len(second)
    message = str(caught.value)
    assert victim in message or "CART01" in message, message
    tape.close()


def test_two_stores_of_one_configuration_never_open_one_cartridge_twice(s3_server, bucket, tmp_path):
    """A library and a standalone drive (or two libraries) configured on one bucket and prefix
    each have their own S3Store: the one-opener rule must hold across them."""
    one, two = store_for(s3_server, bucket, tmp_path), store_for(s3_server, bucket, tmp_path)
    written(drive(one), [records(1, 4096)])
    only_one_opens(drive(one), drive(two))


class FailIndexPut:
    """A client whose PUT of a cartridge index fails while ``armed`` (the service went away
    between the segment's completion and the index switch)."""

    def __init__(self, real) -> None:
        self.real, self.armed = real, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def put_object(self, **kwargs):
        if self.armed and kwargs["Key"].endswith("/" + INDEX):
            raise ConnectionError("the service went away")
        return self.real.put_object(**kwargs)


@pytest.mark.parametrize("where", ["append", "overwrite"])
def test_a_write_cut_off_before_its_index_switch_keeps_the_old_cartridge_and_is_cleaned_later(
        s3_server, bucket, tmp_path, where):
    plain = store_for(s3_server, bucket, tmp_path, part_size=5 << 20)
    wrapped: list[FailIndexPut] = []

    def factory(config: StoreConfig):
        from ndmpd.devices.s3_client import make_client
        wrapped.append(FailIndexPut(make_client(config)))
        return wrapped[-1]
    store = S3Store(plain.config, factory)
    kept = records(5, 64 << 10)
    written(drive(store), [kept])
    old_index, old_segments = get(s3_server, bucket, KEY), segments(s3_server, bucket)
    tape = drive(store)
    tape.open(write=True)
    tape.rewind()
    if where == "append":
        tape.space_filemarks(1)
    for r in records(30, 256 << 10, seed=3):                    # multipart: completed, then the index fails
        tape.write_record(r)
    wrapped[0].armed = True
    with pytest.raises(MediaError) as caught:
        tape.write_filemarks(1)
    assert "writing the index" in str(caught.value), caught.value
    tape.close()
    assert get(s3_server, bucket, KEY) == old_index            # the old index still rules
    assert len(segments(s3_server, bucket)) > len(old_segments)    # the completed segment is garbage
    wrapped[0].armed = False
    tape = drive(store)
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == kept
    tape.close()
    tape.open(write=True)                                       # a writable open sweeps the garbage
    tape.close()
    assert segments(s3_server, bucket) == old_segments
    assert not s3_server.open_uploads(bucket)


def test_an_overwrite_from_bot_of_many_tape_files_deletes_old_segments_after_the_switch(store, s3_server, bucket):
    written(drive(store), [records(2, 4096, seed=i) for i in range(25)])
    old = segments(s3_server, bucket)
    assert len(old) >= 25
    fresh = records(3, 4096, seed=99)
    tape = drive(store)
    tape.open(write=True)
    tape.rewind()
    for r in fresh:
        tape.write_record(r)
    tape.write_filemarks(1)
    now = segments(s3_server, bucket)
    assert len(now) == 1 and now[0] not in old, now
    tape.close()
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == fresh
    tape.close()


def test_a_bucket_that_does_not_exist_is_one_clear_line(s3_server, tmp_path):
    store = store_for(s3_server, "no-such-bucket-here", tmp_path)
    for write in (True, False):
        with pytest.raises(MediaError) as caught:
            drive(store).open(write=write)
        message = str(caught.value)
        assert "\n" not in message and "no such bucket" in message and "no-such-bucket-here" in message, message


def test_a_credentials_file_others_can_read_is_refused_naming_it(s3_server, bucket, tmp_path):
    store = store_for(s3_server, bucket, tmp_path)
    store.config.credentials_file.chmod(0o644)
    with pytest.raises(Exception) as caught:
        drive(store).open(write=False)
    message = str(caught.value)
    assert "readable by others" in message and str(store.config.credentials_file) in message, message


def test_many_tape_files_keep_the_index_object_small_and_read_back_after_compactions(store, s3_server, bucket):
    files = [[bytes([n % 251]) * 100] for n in range(TAIL_LIMIT * 2 + 40)]
    written(drive(store), files)
    index = get(s3_server, bucket, KEY)
    assert len(index) < HEADER_SIZE + (TAIL_LIMIT + 2) * 80, len(index)      # a tail, not every segment
    bases = [k for k in s3_server.keys(bucket, "lib/CART01/base-")]
    assert len(bases) == 1, bases                                   # the replaced bases are gone
    tape = drive(store)
    tape.open(write=True)                                           # the sweep keeps the base
    tape.close()
    assert s3_server.keys(bucket, "lib/CART01/base-") == bases
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == files[0]
    tape.space_filemarks(len(files) - 2)
    assert read_file(tape) == files[-1]
    tape.close()


@pytest.mark.parametrize("flush", [True, False], ids=["mtweof-0", "no-sync"])
def test_mtweof_0_makes_records_without_a_filemark_durable(store, s3_server, bucket, flush):
    """Records written with no filemark live in the spool until a sync point; MTWEOF 0 (as st
    flushes its buffer) is one: a server that dies right after it has them on the store."""
    tape = drive(store)
    tape.open(write=True)
    kept = records(3, 64 << 10)
    for r in kept:
        tape.write_record(r)
    if flush:
        tape.write_filemarks(0)
    other = S3Store(store.config, openers=Openers())            # another server's view, the writer still open
    reader = drive(other)
    reader.open(write=False)
    reader.rewind()
    got = []
    try:
        while True:
            got.append(reader.read_record(1 << 20))
    except EndOfData:
        pass
    reader.close()
    assert got == (kept if flush else [])
    tape.write_record(kept[0])                                  # the tape file goes on, and close ends it
    tape.close()
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == kept + [kept[0]]
    tape.close()


def test_a_tape_file_longer_than_one_multipart_upload_spans_segments(store, s3_server, bucket, monkeypatch):
    """S3 allows 10,000 parts per upload (80 GB at 8 MiB parts): a longer tape file goes on in
    a new segment instead of failing at part 10,001 (the limit made 2 here)."""
    monkeypatch.setattr(s3_medium, "MAX_PARTS", 2)
    big = records(96, 256 << 10, seed=5)                        # 24 MiB: five 5 MiB parts
    written(drive(store), [big])
    assert len(segments(s3_server, bucket)) >= 3
    assert not s3_server.open_uploads(bucket)
    tape = drive(store)
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == big
    tape.close()


def test_an_index_naming_another_cartridges_objects_is_refused_and_deletes_nothing(store, s3_server, bucket):
    """An index copied from CART02 (or damaged) names CART02's segments: opening it must not
    read them as CART01's, and an overwrite must never delete them."""
    written(drive(store, "CART02"), [records(2, 4096)])
    theirs = set(s3_server.keys(bucket, "lib/CART02/"))
    put(s3_server, bucket, KEY, get(s3_server, bucket, "lib/CART02/" + INDEX))
    for write in (True, False):
        with pytest.raises(MediaError) as caught:
            drive(store).open(write=write)
        assert "not an object of this cartridge" in str(caught.value), caught.value
    assert set(s3_server.keys(bucket, "lib/CART02/")) == theirs


@pytest.mark.parametrize("which", ["index", "base"])
def test_a_huge_object_under_an_index_name_is_refused_without_reading_it(store, s3_server, bucket, monkeypatch, which):
    """An index (or the base it names) of gigabytes would be read whole into memory at
    TAPE_OPEN: its length is checked first (the limit made 1 MiB here, the object 3 MiB)."""
    monkeypatch.setattr(s3_medium, "MAX_INDEX_BYTES", 1 << 20, raising=False)
    written(drive(store), [[bytes([n % 251]) * 100] for n in range(TAIL_LIMIT + 10)])     # a base and a tail
    [base] = s3_server.keys(bucket, "lib/CART01/base-")
    huge = (get(s3_server, bucket, KEY if which == "index" else base) + b"\0" * (3 << 20))
    put(s3_server, bucket, KEY if which == "index" else base, huge)
    for write in (True, False):
        with pytest.raises(MediaError) as caught:
            drive(store).open(write=write)
        message = str(caught.value)
        assert "\n" not in message and "more than any cartridge index" in message and "CART01" in message, message
    assert get(s3_server, bucket, KEY if which == "index" else base) == huge        # nothing overwritten


def test_an_upload_left_by_a_failed_write_is_aborted_once_the_store_is_back_even_after_an_hour(monkeypatch):
    """The service away for an hour (clock and sleeps simulated): the aborts go on with a
    backoff capped at ABORT_RETRY_MAX, so the parts are not billed until the cartridge is next written."""
    clock = [0.0]
    monkeypatch.setattr(s3_medium, "time", SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds)))
    aborted = []

    class Away:
        def abort_multipart_upload(self, **kwargs):
            if clock[0] < 3600:
                raise ConnectionError("the service is away")
            aborted.append((kwargs["Key"], kwargs["UploadId"], clock[0]))

    store = S3Store(StoreConfig("b", "http://127.0.0.1:9", "lib/"), lambda config: Away())
    store.abort_later("lib/CART01/seg-1", "upload-1")
    assert [a[:2] for a in aborted] == [("lib/CART01/seg-1", "upload-1")]
    assert aborted[0][2] <= 3600 + s3_medium.ABORT_RETRY_MAX     # soon after its return
