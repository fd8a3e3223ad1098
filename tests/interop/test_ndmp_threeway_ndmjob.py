"""``ndmp backup`` with other tape agents and older protocol versions: the data on ndmpd and
the tape on ndmjob's own daemon (``ndmjob -o daemon``: another vendor's mover and simulated
tape), and ndmpd to ndmpd negotiated at NDMPv2 and v3."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.server_process import ServerProcess

from .conftest import PASSWORD, free_loopback_address, ndmjob_daemon, write_config
from .ndmjob_daemon import DAEMON_PASSWORD, hosts_file, simulator_image
from .ndmp_cli import ndmp

pytestmark = pytest.mark.interop


@pytest.fixture
def source(tmp_path) -> ServerProcess:
    host = free_loopback_address()
    root = tmp_path / "ndmpd"
    root.mkdir()
    server = ServerProcess(host, write_config(root, host, ["md5", "text"]), root / "ndmpd.log", PASSWORD)
    (root / "vol" / "docs").mkdir()
    for i in range(50):
        (root / "vol" / "docs" / f"note{i:02d}.txt").write_text(f"note {i}\n" * (i + 1))
    (root / "vol" / "big.bin").write_bytes(os.urandom(300_000))
    yield server
    server.stop()


@pytest.mark.parametrize("version", [4, 3, 2])
def test_a_three_way_backup_to_ndmjobs_tape_daemon_is_one_gnu_tar_lists(ndmjob, source, tmp_path, version):
    daemon_dir = tmp_path / "daemon"
    daemon_dir.mkdir()
    tape = daemon_dir / "tape0"
    tape.touch()                                     # the simulator opens an existing file only
    home = tmp_path / "home"
    catalog = tmp_path / "catalog.db"
    with ndmjob_daemon(daemon_dir) as port:
        hosts_file(home, {"nas": (source.host, 10000, PASSWORD), "vendor": ("127.0.0.1", port, DAEMON_PASSWORD)})
        result = ndmp("backup", "nas:/export/data", "--tape", f"vendor:{tape}", "--version", str(version),
                      "--catalog", str(catalog), "--json", home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])     # the summary line
    assert report["status"] == "done" and report["entries"] >= 52
    found = ndmp("find", "/docs/note4*.txt", "--catalog", str(catalog), "--json", home=home)
    assert {e["path"] for e in json.loads(found.stdout)} == {f"/docs/note{i}.txt" for i in range(40, 50)}

    image = simulator_image(tape, 0)
    assert len(image) >= report["bytes"] > 300_000
    listing = subprocess.run(["tar", "-tv"], input=image, capture_output=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    names = listing.stdout.decode()
    assert "docs/note49.txt" in names and "big.bin" in names


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("butype", ["tar", "dump"])
def test_a_two_way_backup_at_an_older_version_is_cataloged(source, tmp_path, version, butype):
    catalog = tmp_path / "catalog.db"
    spec = f"ndmp@{source.host}"
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--version", str(version),
                  "--butype", butype, "--catalog", str(catalog), "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])     # the summary line
    assert report["status"] == "done" and report["entries"] == 53          # /, docs, 50 notes, big.bin
    listing = ndmp("ls", report["id"], "/docs", "--catalog", str(catalog), "--json", home=tmp_path)
    entries = {e["path"]: e for e in json.loads(listing.stdout)}
    assert len(entries) == 50 and entries["/docs/note07.txt"]["size"] == len("note 7\n") * 8


def test_a_three_way_backup_between_two_ndmpd_at_ndmpv2(source, tmp_path):
    """v2 addresses a TCP mover as one IPv4 address and port (no v3/v4 address list): still fine."""
    host = free_loopback_address()
    root = tmp_path / "tape-side"
    root.mkdir()
    tape = ServerProcess(host, write_config(root, host, ["md5", "text"]), root / "ndmpd.log", PASSWORD)
    try:
        catalog = tmp_path / "catalog.db"
        result = ndmp("backup", f"ndmp@{source.host}:/export/data", "--tape", f"ndmp@{tape.host}:vtape0",
                      "--version", "2", "--catalog", str(catalog), "--json", home=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.splitlines()[-1])     # the summary line
        assert report["status"] == "done" and report["entries"] == 53
        assert (root / "state" / "vtape0.img").stat().st_size > report["bytes"] > 300_000
    finally:
        tape.stop()
