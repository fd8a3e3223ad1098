"""ndmjob against a drive whose cartridge lives in S3 (a real SeaweedFS on loopback): the
tape and mover conformance series pass, plain and encrypted, the encrypted objects hold
no plaintext, a store that refuses the credentials fails TAPE_OPEN in one line, and a store
killed mid-backup reaches ndmjob as a LOG_MESSAGE naming the S3 failure before the halt."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from ndmpd.keystore import Keystore, KeySource
from tests.interop.conftest import run
from tests.interop.ndmp_cli import ndmp
from tests.interop.s3_rig import credentials_file, kill_once_uploading, s3_drive
from tests.interop.test_ndmjob_encrypted import PROGRAM, pattern, run_ndmjob, windows_found
from tests.s3_server import start_or_skip
from tests.interop.test_ndmjob_tape_mover import MOVER_PHASES, TAPE_PHASES

pytestmark = pytest.mark.interop
SEALED = 'encryption_key = "site"\n'


@pytest.fixture
def bucket(s3_server):
    return s3_server.bucket("nj-" + uuid.uuid4().hex[:12])


def series(ndmjob_suite, server, name: str, version: str, phases: list[str]) -> str:
    result = ndmjob_suite(name, server.agent(version), version, "-f", "s3tape")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert re.findall(r"Test (\S+) Passed -- pass=\d+ warn=0 fail=0", out) == phases, out[-3000:]
    return out


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "encrypted"])
def test_test_tape_and_test_mover_pass_on_an_s3_drive(ndmjob_suite, server_factory, s3_server, bucket,
                                                       tmp_path, sealed):
    if sealed:
        Keystore(KeySource(tmp_path / "state" / "keys")).create("site")
    drive = s3_drive("s3tape", s3_server, bucket, credentials_file(tmp_path), extra=SEALED if sealed else "")
    server = server_factory(extra=drive)
    out = series(ndmjob_suite, server, "test-tape", "4", TAPE_PHASES)
    assert re.search(r"FINAL test-tape Passed -- pass=\d+ warn=0 fail=0", out), out[-2000:]
    out = series(ndmjob_suite, server, "test-mover", "4", MOVER_PHASES)
    assert "FINAL test-mover Passed -- pass=100 warn=0 fail=0" in out
    keys = s3_server.keys(bucket)
    assert "ndmpd/s3tape/index" in keys and len(keys) > 1, keys      # the cartridge is in the bucket
    assert not s3_server.open_uploads(bucket)
    index = s3_server.client().get_object(Bucket=bucket, Key="ndmpd/s3tape/index")["Body"].read()
    assert (b"NDMPDVT1\x00\x02" in index) == sealed       # the superblock says format 2 (sealed)


def test_wrong_credentials_fail_tape_open_in_one_line(ndmjob_suite, server_factory, s3_server, bucket, tmp_path):
    drive = s3_drive("s3tape", s3_server, bucket, credentials_file(tmp_path, secret="wrong-secret"))
    server = server_factory(extra=drive)
    result = ndmjob_suite("test-tape", server.agent("4"), "4", "-f", "s3tape", timeout=120)
    assert "FINAL test-tape Passed" not in result.stdout + result.stderr
    log = (tmp_path / "ndmpd.log").read_text()
    lines = [line for line in log.splitlines() if "s3://" in line and "wrong credentials" in line]
    assert lines, log[-3000:]
    assert f"s3://{bucket}/ndmpd/" in lines[0] and "s3tape" in lines[0]


@pytest.mark.parametrize("version", ["4", "3"])
def test_a_dma_reads_why_tape_open_failed_in_one_line(ndmjob, server_factory, s3_server, bucket, tmp_path, version):
    """ndmjob (whose TAPE_OPEN reply only says IO_ERR), ``ndmp backup`` and ``ndmpd tape info``
    each show the store's reason: which cartridge, and that the credentials are wrong."""
    server = server_factory(extra=s3_drive("s3tape", s3_server, bucket, credentials_file(tmp_path, secret="wrong")))
    out = run_ndmjob("-c", "-D", server.agent(version), "-f", "s3tape", "-B", "tar", "-C", "/export/data",
                     "-I", str(tmp_path / "backup.idx"))
    assert "Operation ended OKAY" not in out, out[-3000:]
    said = [line for line in out.splitlines() if "wrong credentials" in line]
    assert len(said) == 1, out[-3000:]
    assert re.search(rf"TAPE_OPEN s3tape: s3://{bucket}/ndmpd/: [a-z ]+ cartridge s3tape: ", said[0]), said
    done = ndmp("backup", f"ndmp@{server.host}:/export/data", "--tape", f"ndmp@{server.host}:s3tape",
                "--catalog", str(tmp_path / "catalog.db"), home=tmp_path)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert "TAPE_OPEN s3tape: IO_ERR: " in line and "wrong credentials" in line and f"s3://{bucket}/" in line, line
    info = run([sys.executable, "-m", "ndmpd", "tape", "info", "--config", str(server.config),
                f"s3://{bucket}/ndmpd/s3tape/"])
    assert info.returncode == 1 and info.stdout == "", info.stdout
    [line] = info.stderr.splitlines()
    assert line.startswith(f"ndmpd tape: s3://{bucket}/ndmpd/: opening cartridge s3tape: ") \
        and "wrong credentials" in line, line


def test_an_encrypted_s3_backup_leaves_no_plaintext_in_the_bucket_and_restores(ndmjob, server_factory, s3_server,
                                                                              bucket, tmp_path):
    Keystore(KeySource(tmp_path / "state" / "keys")).create("site")
    server = server_factory(extra=s3_drive("s3tape", s3_server, bucket, credentials_file(tmp_path), extra=SEALED))
    src = tmp_path / "vol" / "src"
    src.mkdir(parents=True)
    known = pattern()
    (src / "pattern.bin").write_bytes(known)
    (src / "other.bin").write_bytes(os.urandom(6 << 20))           # more than a part: a multipart upload
    agent, index = server.agent("4"), tmp_path / "backup.idx"
    out = run_ndmjob("-c", "-D", agent, "-f", "s3tape", "-B", "tar", "-C", "/export/data", "-I", str(index))
    assert "Operation ended OKAY" in out, out
    client = s3_server.client()
    stored = b"".join(client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in s3_server.keys(bucket))
    assert len(stored) > 7 << 20
    assert windows_found(stored, known) == 0
    dar = run_ndmjob("-x", "-D", agent, "-f", "s3tape", "-B", "tar", "-C", str(tmp_path / "vol" / "picked"),
                     "-J", str(index), "/src/pattern.bin")
    assert "Operation ended OKAY" in dar, dar
    assert (tmp_path / "vol" / "picked" / "src" / "pattern.bin").read_bytes() == known


def test_the_store_killed_mid_backup_reaches_ndmjob_with_the_s3_reason(server_factory, tmp_path):
    own = start_or_skip(tmp_path / "weed")
    try:
        bucket = own.bucket("njkill-" + uuid.uuid4().hex[:8])
        server = server_factory(extra=s3_drive("s3tape", own, bucket, credentials_file(tmp_path)))
        (tmp_path / "vol" / "big.bin").write_bytes(os.urandom(120 << 20))
        job = subprocess.Popen([str(PROGRAM), "-v", "-c", "-D", server.agent("4"), "-f", "s3tape", "-B", "tar",
                                "-C", "/export/data", "-I", str(tmp_path / "backup.idx")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        kill_once_uploading(own, bucket, job)
        out, _ = job.communicate(timeout=180)
        assert "Operation ended OKAY" not in out, out[-3000:]
        said = [line for line in out.splitlines() if "mover halted: tape write failed" in line]
        assert len(said) == 1, out[-3000:]
        assert re.search(rf"s3://{bucket}/ndmpd/: uploading part \d+ of s3tape: cannot reach", said[0]), said
        halted = out.index(said[0])
        assert "backup of /export/data incomplete: media error: tape write failed" in out[halted:], out[-3000:]
    finally:
        own.stop()
