"""``ndmp backup`` as a user runs it against real ndmpd processes, then ``ndmp backups``,
``ndmp ls`` and ``ndmp find`` on the catalog it wrote; the image on the cartridge is one GNU
tar can list."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.engine_helpers import build_every_case

from .conftest import REPO, drive_is_free, servers
from .ndmp_cli import assert_interrupted, backups, ndmp, running_backup_in, stop_mid_job, summary

pytestmark = pytest.mark.interop


def test_a_two_way_tar_backup_is_cataloged_and_gnu_tar_lists_the_tape(server_factory, tmp_path):
    server = server_factory()
    build_every_case(tmp_path / "vol")
    catalog = tmp_path / "catalog.db"
    spec = f"ndmp@{server.host}"
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--catalog", str(catalog),
                  "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = summary(result.stdout)
    assert report["status"] == "done" and report["bytes"] > 0 and report["file_number"] == 0
    [row] = backups(tmp_path, catalog)
    assert row["id"] == report["id"] and row["status"] == "done" and row["volume"] == "/export/data"
    assert row["bytes"] == report["bytes"] and row["media"] == [{"label": "vtape0", "file_number": 0}]
    assert row["env"], "the env from DATA_GET_ENV is kept"

    listing = ndmp("ls", row["id"][:8], "/", "--catalog", str(catalog), "--json", home=tmp_path)
    assert listing.returncode == 0, listing.stderr
    names = {e["path"] for e in json.loads(listing.stdout)}
    assert {"/dir", "/zero", "/sparse", "/fifo", "/rel_link"} <= names
    found = ndmp("find", "**/hard", "--catalog", str(catalog), home=tmp_path)
    assert found.returncode == 0, found.stderr
    assert "/dir/sub/hard" in found.stdout and row["id"] in found.stdout

    cartridge = tmp_path / "state" / "vtape0.img"
    image = subprocess.run([sys.executable, "-m", "ndmpd", "tape", "extract", str(cartridge), "0"],
                           cwd=REPO, capture_output=True, timeout=60, check=True).stdout
    members = subprocess.run(["tar", "-t"], input=image, capture_output=True, timeout=60)
    assert members.returncode == 0, members.stderr
    assert b"dir/sub/hard" in members.stdout and b"zero" in members.stdout


def test_a_dump_backup_records_its_history(server_factory, tmp_path):
    server = server_factory()
    (tmp_path / "vol" / "a").mkdir()
    (tmp_path / "vol" / "a" / "file.txt").write_text("dump me")
    catalog = tmp_path / "catalog.db"
    spec = f"ndmp@{server.host}"
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--butype", "dump",
                  "--catalog", str(catalog), home=tmp_path)
    assert result.returncode == 0, result.stderr
    [row] = backups(tmp_path, catalog)
    assert row["butype"] == "dump" and row["status"] == "done" and row["entries"] >= 3
    found = ndmp("find", "**/file.txt", "--catalog", str(catalog), "--json", home=tmp_path)
    assert [e["path"] for e in json.loads(found.stdout)] == ["/a/file.txt"]


def test_a_three_way_backup_between_two_servers(tmp_path):
    with servers(tmp_path, "data", "tape") as [data, tape]:
        (tmp_path / "data" / "vol" / "only-on-data.txt").write_text("three-way")
        catalog = tmp_path / "catalog.db"
        result = ndmp("backup", f"ndmp@{data.host}:/export/data", "--tape", f"ndmp@{tape.host}:vtape0",
                      "--catalog", str(catalog), home=tmp_path)
        assert result.returncode == 0, result.stderr
        [row] = backups(tmp_path, catalog)
        assert row["status"] == "done" and row["host"] == f"ndmp@{data.host}"
        assert (tmp_path / "tape" / "state" / "vtape0.img").stat().st_size > 0
        assert not (tmp_path / "data" / "state" / "vtape0.img").exists() or \
            (tmp_path / "data" / "state" / "vtape0.img").stat().st_size < row["bytes"]


def test_an_unknown_volume_is_exit_1_one_line_and_marked_failed(server_factory, tmp_path):
    server = server_factory()
    catalog = tmp_path / "catalog.db"
    spec = f"ndmp@{server.host}"
    result = ndmp("backup", f"{spec}:/no/such", "--tape", f"{spec}:vtape0", "--catalog", str(catalog),
                  home=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "failed" in result.stderr
    [row] = backups(tmp_path, catalog)
    assert row["status"] == "failed" and row["halt_reason"]


SMALL_TAPE = """
[[tape]]
name = "small"
path = "{path}"
capacity = "1MiB"
early_warning = "64KiB"
"""


def test_a_full_medium_with_no_library_aborts_cleanly_and_is_marked_failed(server_factory, tmp_path):
    server = server_factory(extra=SMALL_TAPE.format(path=tmp_path / "small.img"))
    (tmp_path / "vol" / "big.bin").write_bytes(os.urandom(3 << 20))
    catalog = tmp_path / "catalog.db"
    spec = f"ndmp@{server.host}"
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:small", "--catalog", str(catalog),
                  home=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "full" in result.stderr, result.stderr
    [row] = backups(tmp_path, catalog)
    assert row["status"] == "failed" and "full" in row["halt_reason"]
    again = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--catalog", str(catalog),
                 home=tmp_path)                        # the server is left usable
    assert again.returncode == 0, again.stderr


def test_sigterm_aborts_both_sides_exit_130_and_marks_it_interrupted(server_factory, tmp_path):
    server = server_factory()
    with open(tmp_path / "vol" / "big.bin", "wb") as f:
        for _ in range(768):
            f.write(os.urandom(1 << 20))
    catalog = tmp_path / "catalog.db"
    spec = f"ndmp@{server.host}"
    stopped = stop_mid_job(["backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--catalog", str(catalog),
                            "--json"], tmp_path, until=running_backup_in(catalog), stop=signal.SIGTERM, settle=0.3)
    assert_interrupted(stopped, {"data": "idle", "mover": "idle"})
    assert drive_is_free(server.host, "vtape0"), "the job closed the drive"
    [row] = backups(tmp_path, catalog)
    assert row["status"] == "interrupted"
