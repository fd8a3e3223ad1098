"""``ndmpd tape``: create, info, extract (a tar on a virtual tape reads back with GNU tar), protect."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile

import pytest

from ndmpd.devices.virtual_tape import VirtualTape
from ndmpd.devices.tape import WriteProtected


def ndmpd(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndmpd", "tape", *map(str, args)],
                          capture_output=True, timeout=60, **kw)


def make_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("a.txt", b"alpha\n"), ("dir/b.bin", bytes(range(256)) * 100)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_create_info_extract_and_read_back_with_gnu_tar(tmp_path):
    path = tmp_path / "c.img"
    assert ndmpd("create", path, "--capacity", "64MiB", "--barcode", "NDM001").returncode == 0
    assert ndmpd("create", path).returncode != 0                 # never overwrites a cartridge
    archive = make_tar()
    drive = VirtualTape("vt", path, 0)
    drive.open(write=True)
    drive.write_record(b"label")
    drive.write_filemarks(1)
    for i in range(0, len(archive), 10240):                    # file 1: the archive in 10 KiB records
        drive.write_record(archive[i:i + 10240].ljust(10240, b"\0"))
    drive.write_filemarks(1)
    drive.close()
    info = ndmpd("info", path, text=True)
    assert "NDM001" in info.stdout
    assert "file 0              1 records               5 bytes" in info.stdout
    records = -(-len(archive) // 10240)
    assert f"file 1     {records:>10} records {records * 10240:>15} bytes" in info.stdout
    extracted = ndmpd("extract", path, 1)
    assert extracted.returncode == 0 and extracted.stdout[:len(archive)] == archive
    if shutil.which("tar"):
        listing = subprocess.run(["tar", "-tf", "-"], input=extracted.stdout, capture_output=True, timeout=30)
        assert listing.stdout.decode().split() == ["a.txt", "dir/b.bin"]
    assert ndmpd("extract", path, 7).returncode == 1


def test_protect_and_corrupt_cartridge_messages(tmp_path):
    path = tmp_path / "c.img"
    ndmpd("create", path, "--capacity", "1MiB")
    assert ndmpd("protect", path, "on").returncode == 0
    with pytest.raises(WriteProtected):
        VirtualTape("vt", path, 0).open(write=True)
    assert "write-protected" in ndmpd("info", path, text=True).stdout
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"x" * 5000)
    result = ndmpd("info", junk, text=True)
    assert result.returncode == 1 and "not an ndmpd cartridge" in result.stderr


def test_a_tiny_capacity_on_the_command_line_is_refused_like_in_the_config(tmp_path):
    path = tmp_path / "c.img"
    result = ndmpd("create", path, "--capacity", "20", text=True)
    assert result.returncode != 0 and "--capacity: 20 is 20 bytes, below the minimum" in result.stderr
    assert not path.exists()
    assert ndmpd("create", path, "--capacity", "20GB").returncode == 0
    assert "20000000000" in ndmpd("info", path, text=True).stdout.replace(",", "")
