"""A virtual library whose cartridges live in S3 (a real SeaweedFS on loopback), driven by a
real ``ndmpd serve`` and ``ndmp``: ``ndmpd library`` creates and lists them, a backup spans two
cartridges, a whole restore and a DAR of three files come back identical with the DAR fetching
a small part of the image, and a store killed mid-backup fails the job clearly, leaves no
unfinished upload once it is back, and the next backup works."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid

import pytest

from ndmpd.keystore import Keystore, KeySource
from tests.engine_helpers import build_every_case
from tests.interop.test_ndmjob_encrypted import pattern, windows_found
from tests.s3_server import start_or_skip
from tests.trees import describe, differences

from .conftest import library_tables, run
from .ndmp_cli import ndmp, ndmp_env, ok_json
from .s3_rig import credentials_file, kill_once_uploading, s3_drive, store_table
from .test_ndmp_library import fill_volume, slots

pytestmark = pytest.mark.interop

TRAFFIC = re.compile(r"store traffic so far: (\d+) GETs (\d+) bytes")


def library_cli(server, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "ndmpd", "library", "--config", str(server.config), *args])


def bytes_got(log_text: str) -> int:
    """The store's GET bytes as of the last cartridge closed (the server logs them at close)."""
    found = TRAFFIC.findall(log_text)
    return int(found[-1][1]) if found else 0


def start_s3lib(server_factory, s3_server, tmp_path, sealed: bool = False):
    """A server whose library vlib0 keeps TAPE01-03 in a fresh bucket (``sealed``: encrypting
    with key "site"); (server, its NDMP spec, the bucket)."""
    bucket = s3_server.bucket("lib-" + uuid.uuid4().hex[:12])
    tables = library_tables(tmp_path / "lib", capacity="24MiB", early_warning="1MiB")
    if sealed:
        Keystore(KeySource(tmp_path / "state" / "keys")).create("site")
        tables = tables.replace("import_export = 1\n", 'import_export = 1\nencryption_key = "site"\n')
    tables += store_table("changer", s3_server, bucket, credentials_file(tmp_path), prefix="vlib0")
    (tmp_path / "out").mkdir()
    tables += f'\n[[volume]]\nname = "/export/out"\npath = "{tmp_path / "out"}"\n'
    server = server_factory(extra=tables)
    done = library_cli(server, "create", "vlib0", "TAPE01", "TAPE02", "TAPE03")
    assert done.returncode == 0, done.stderr
    return server, f"ndmp@{server.host}", bucket


@pytest.fixture
def s3lib(server_factory, s3_server, tmp_path):
    return start_s3lib(server_factory, s3_server, tmp_path)


def test_library_commands_create_list_import_export_on_s3(s3lib, s3_server):
    server, spec, bucket = s3lib
    assert {k for k in s3_server.keys(bucket)} >= {f"vlib0/TAPE0{i}/index" for i in (1, 2, 3)}
    listing = library_cli(server, "list", "vlib0")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"1024\s+slot\s+TAPE01", listing.stdout) and "outside: -" in listing.stdout
    again = library_cli(server, "create", "vlib0", "TAPE01")
    assert again.returncode == 1 and "exists already" in again.stderr
    outside = library_cli(server, "create", "vlib0", "SPARE1", "--outside")
    assert outside.returncode == 0, outside.stderr
    assert "outside: SPARE1" in library_cli(server, "list", "vlib0").stdout
    put = library_cli(server, "import", "vlib0", "SPARE1")
    assert put.returncode == 0 and "import/export port" in put.stdout, put.stderr
    taken = library_cli(server, "export", "vlib0", "SPARE1")
    assert taken.returncode == 0 and f"s3://{bucket}/vlib0/SPARE1/" in taken.stdout, taken.stdout


def test_a_backup_spans_two_s3_cartridges_and_restores_whole_and_by_dar(s3lib, tmp_path):
    server, spec, bucket = s3lib
    vol = build_every_case(tmp_path / "vol")
    fill_volume(vol, 36_000_000)
    before = describe(vol)
    catalog = tmp_path / "catalog.db"
    made = ok_json(ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library",
                        f"{spec}:vlib0", "--catalog", str(catalog), "--json", home=tmp_path))
    assert made["status"] == "done"
    assert [m["barcode"] for m in made["media"]] == ["TAPE01", "TAPE02"]

    url = f"s3://{bucket}/vlib0/TAPE01/"
    info = run([sys.executable, "-m", "ndmpd", "tape", "info", "--config", str(server.config), url])
    assert info.returncode == 0 and f"cartridge  {url}" in info.stdout, info.stderr
    assert re.search(r"file 0\s+\d+ records\s+\d+ bytes", info.stdout), info.stdout
    first = subprocess.run([sys.executable, "-m", "ndmpd", "tape", "extract", "--config", str(server.config),
                            url, "0"], capture_output=True, timeout=120)
    assert first.returncode == 0 and len(first.stdout) == made["media"][0]["last_byte"], first.stderr
    no_config = run([sys.executable, "-m", "ndmpd", "tape", "info", url])
    assert no_config.returncode == 1 and "give --config" in no_config.stderr

    whole = ok_json(ndmp("restore", made["id"][:8], "--to", f"{spec}:/export/out/whole", "--catalog",
                         str(catalog), "--json", home=tmp_path))
    assert whole["status"] == "done" and whole["cartridges"] == ["TAPE01", "TAPE02"]
    assert differences(before, describe(tmp_path / "out" / "whole")) == []

    log = tmp_path / "ndmpd.log"
    got_before = bytes_got(log.read_text())
    picked = ["/dir/file", "/ünïcödé name", "/small.txt"]          # the last is on TAPE02
    dar = ok_json(ndmp("restore", made["id"][:8], *picked, "--to", f"{spec}:/export/out/dar", "--catalog",
                       str(catalog), "--json", home=tmp_path))
    assert dar["status"] == "done" and dar["direct"] is True
    for name in picked:
        assert (tmp_path / "out" / "dar" / name[1:]).read_bytes() == (vol / name[1:]).read_bytes(), name
    assert dar["cartridges"] == ["TAPE01", "TAPE02"]
    fetched = bytes_got(log.read_text()) - got_before
    print(f"DAR of {len(picked)} files fetched {fetched} of the image's {made['bytes']} bytes")
    assert 0 < fetched < 0.12 * made["bytes"], (fetched, made["bytes"])     # a few blocks, not the image


def test_the_store_killed_mid_backup_fails_clearly_leaves_no_upload_and_the_next_backup_works(
        server_factory, tmp_path):
    own = start_or_skip(tmp_path / "weed")
    try:
        bucket = own.bucket("kill-" + uuid.uuid4().hex[:8])
        (tmp_path / "out").mkdir()
        out = f'\n[[volume]]\nname = "/export/out"\npath = "{tmp_path / "out"}"\n'
        server = server_factory(extra=s3_drive("s3tape", own, bucket, credentials_file(tmp_path)) + out)
        spec = f"ndmp@{server.host}"
        catalog = tmp_path / "catalog.db"
        (tmp_path / "vol" / "first.txt").write_text("backed up before the store died")
        first = ok_json(ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:s3tape", "--catalog",
                             str(catalog), "--json", home=tmp_path))
        assert first["status"] == "done"
        fill_volume(tmp_path / "vol", 120_000_000)
        backup = [sys.executable, "-m", "ndmpd.dma", "backup", f"{spec}:/export/data", "--tape",
                  f"{spec}:s3tape", "--catalog", str(catalog)]
        job = subprocess.Popen(backup, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ndmp_env(tmp_path), cwd=server.config.parent)
        kill_once_uploading(own, bucket, job)
        _, stderr = job.communicate(timeout=120)
        assert job.returncode == 1, stderr
        [line] = stderr.splitlines()
        assert "the mover halted: media error: " in line, line    # NDMP_MOVER_HALT_MEDIA_ERROR, then the
        # server's last error line: the mover's, or (two-way, same session) the data server's quoting it
        assert re.search(r"uploading part \d+ of s3tape: cannot reach", line), line    # the S3 reason, not only "media error"
        log = (tmp_path / "ndmpd.log").read_text()
        assert re.search(rf"s3://{bucket}/ndmpd/: uploading part \d+ of s3tape: cannot reach", log), log[-3000:]

        own.start()
        deadline = time.monotonic() + 60
        while own.open_uploads(bucket):
            assert time.monotonic() < deadline, "the unfinished upload was not aborted"
            time.sleep(0.5)
        kept = ok_json(ndmp("restore", first["id"][:8], "--to", f"{spec}:/export/out/first", "--catalog",
                            str(catalog), "--json", home=tmp_path))        # the tape file before it is intact
        assert kept["status"] == "done"
        assert (tmp_path / "out" / "first" / "first.txt").read_text() == "backed up before the store died"
        (tmp_path / "vol" / "big" / "part0.bin").unlink()
        (tmp_path / "vol" / "big" / "part1.bin").unlink()
        again = ok_json(ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:s3tape", "--catalog",
                             str(catalog), "--json", home=tmp_path))
        assert again["status"] == "done"
        back = ok_json(ndmp("restore", again["id"][:8], "--to", f"{spec}:/export/data/back", "--catalog",
                            str(catalog), "--json", home=tmp_path))
        assert back["status"] == "done"
        restored = tmp_path / "vol" / "back" / "big" / "part2.bin"
        assert restored.read_bytes() == (tmp_path / "vol" / "big" / "part2.bin").read_bytes()
        assert not own.open_uploads(bucket)
    finally:
        own.stop()


@pytest.mark.parametrize("series", ["test-tape", "test-mover"])
def test_ndmjob_conformance_on_an_s3_library_drive_loaded_by_its_robot(s3lib, s3_server, ndmjob_suite, series):
    server, _, bucket = s3lib
    agent = server.agent("4")
    done = ndmjob_suite(series, agent, "4", "-f", "ltape0", "-R", agent, "-r", "vlib0", "-m", "@1024")
    out = done.stdout + done.stderr
    assert "Commanding robot to load slot @1024 into drive @128" in out, out[-3000:]
    assert re.search(rf"FINAL {series} Passed -- pass=\d+ warn=0 fail=0", out), out[-3000:]
    assert "unload drive @128 to slot @1024" in out, out[-2000:]
    log = (server.config.parent / "ndmpd.log").read_text()
    closed = re.findall(rf"s3://{bucket}/vlib0/TAPE01/: closed; store traffic so far: \d+ GETs \d+ bytes, (\d+) PUTs",
                        log)
    assert closed, log[-3000:]                              # the drive's medium was TAPE01 in the bucket
    if series == "test-tape":                               # (test-mover checks states, it moves no data)
        assert max(int(n) for n in closed) > 0, closed
    assert not s3_server.open_uploads(bucket)


def test_an_encrypted_s3_library_never_uploads_plaintext_and_restores(server_factory, s3_server, tmp_path):
    server, spec, bucket = start_s3lib(server_factory, s3_server, tmp_path, sealed=True)
    known = pattern()
    (tmp_path / "vol" / "pattern.bin").write_bytes(known)
    (tmp_path / "vol" / "repeat.txt").write_bytes(known[:4096] * 300)        # compressible, 1.2 MB
    fill_volume(tmp_path / "vol", 30_000_000)                                 # spans TAPE01 and TAPE02
    catalog = tmp_path / "catalog.db"
    made = ok_json(ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library",
                        f"{spec}:vlib0", "--catalog", str(catalog), "--json", home=tmp_path))
    assert made["status"] == "done" and len(made["media"]) == 2, made
    client = s3_server.client()
    stored = b"".join(client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in s3_server.keys(bucket))
    assert len(stored) > 30_000_000
    assert windows_found(stored, known) == 0
    for barcode in ("TAPE01", "TAPE02"):
        index = client.get_object(Bucket=bucket, Key=f"vlib0/{barcode}/index")["Body"].read()
        assert b"NDMPDVT1\x00\x02" in index, barcode          # the superblock says format 2 (sealed)
    dar = ok_json(ndmp("restore", made["id"][:8], "/pattern.bin", "/repeat.txt", "--to", f"{spec}:/export/out/dar",
                       "--catalog", str(catalog), "--json", home=tmp_path))
    assert dar["status"] == "done"
    assert (tmp_path / "out" / "dar" / "pattern.bin").read_bytes() == known
    assert (tmp_path / "out" / "dar" / "repeat.txt").read_bytes() == known[:4096] * 300


def test_barcodes_labels_and_capacity_keep_their_meaning_on_s3(s3lib, s3_server, tmp_path):
    server, spec, bucket = s3lib
    inv = ok_json(ndmp("library", f"{spec}:vlib0", "inventory", "--json", home=tmp_path))
    assert [slots(inv)[f"slot {i}"] for i in (1, 2, 3)] == ["TAPE01", "TAPE02", "TAPE03"]
    done = ok_json(ndmp("library", f"{spec}:vlib0", "label", "1=MON", "2=TUE", "--json", home=tmp_path))
    assert [d["label"] for d in done["labelled"]] == ["MON", "TUE"]
    ok_json(ndmp("library", f"{spec}:vlib0", "load", "2", "--json", home=tmp_path))
    read = ok_json(ndmp("tape", f"{spec}:ltape0", "read-label", "--json", home=tmp_path))
    assert read["label"] == "TUE" and read["has_data"] is False
    refused = ndmp("tape", f"{spec}:ltape0", "label", "WED", home=tmp_path)
    assert refused.returncode == 1 and "holds label TUE" in refused.stderr
    status = ok_json(ndmp("tape", f"{spec}:ltape0", "status", "--json", home=tmp_path))
    assert status["total_space"] == 24 << 20, status
    ok_json(ndmp("library", f"{spec}:vlib0", "unload", "--json", home=tmp_path))
    assert any(k.startswith("vlib0/TAPE02/seg-") for k in s3_server.keys(bucket)), s3_server.keys(bucket)
