"""``ndmp copy`` between two real ndmpd processes (two loopback addresses): data server to data
server, no tape. A level 0 gives an identical tree; a level-1 copy moves only the changes and
leaves the destination identical to the source again, deletions and renames included. Refusals
are one line and exit 1; SIGINT leaves both data servers IDLE and the catalog says interrupted."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from ndmpd.dma.agent import Agent
from ndmpd.dma.catalog import open_catalog
from ndmpd.wire import C
from tests.engine_helpers import build_every_case
from tests.trees import describe, differences

from .conftest import PASSWORD, servers
from .ndmp_cli import (assert_interrupted, backups, ndmp, running_backup_in, sigint_once_bytes_flow, stop_mid_job,
                       summary)

pytestmark = pytest.mark.interop


@pytest.fixture
def two_servers(tmp_path):
    """(source, destination): ndmpd processes on two loopback addresses, each with /export/data."""
    with servers(tmp_path, "src", "dst") as started:
        yield started


def big_source(tmp_path) -> None:
    """A 1 GiB file on the source, so a copy runs long enough to be stopped."""
    block = os.urandom(1 << 20)
    with open(tmp_path / "src" / "vol" / "big.bin", "wb") as f:
        for _ in range(1024):
            f.write(block)


def copy(src, dst, tmp_path, *flags: str, target: str = "/export/data", volume: str = "/export/data"):
    return ndmp("copy", f"ndmp@{src.host}:{volume}", f"ndmp@{dst.host}:{target}", "--catalog",
                str(tmp_path / "catalog.db"), *flags, home=tmp_path)


def copied(src, dst, tmp_path, *flags: str) -> dict:
    result = copy(src, dst, tmp_path, "--json", *flags)
    assert result.returncode == 0, result.stderr
    return summary(result.stdout)


@pytest.mark.parametrize("butype", ["tar", "dump"])
def test_a_copy_is_identical_and_a_level_1_copy_brings_over_only_the_changes(two_servers, tmp_path, butype):
    src, dst = two_servers
    vol, out = tmp_path / "src" / "vol", tmp_path / "dst" / "vol"
    build_every_case(vol)
    (vol / "big.bin").write_bytes(os.urandom(4 << 20))
    (vol / "docs").mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (vol / "docs" / name).write_text(name * 100)

    full = copied(src, dst, tmp_path, "--butype", butype)
    assert full["status"] == "done" and full["level"] == 0 and full["entries"] > 10
    assert differences(describe(vol), describe(out)) == []
    [row] = backups(tmp_path, tmp_path / "catalog.db")
    assert row["kind"] == "copy" and row["destination"] == f"ndmp@{dst.host}:/export/data"
    assert row["media"] == [{"label": f"ndmp@{dst.host}:/export/data", "file_number": None}]
    assert row["dump_date"], "the source's DUMP_DATE is kept for the next copy"
    listed = ndmp("backups", "--catalog", str(tmp_path / "catalog.db"), home=tmp_path).stdout
    assert f"copy to ndmp@{dst.host}:/export/data" in listed

    (vol / "docs" / "new.txt").write_text("added")                 # add
    (vol / "docs" / "a.txt").write_text("modified")                # modify
    (vol / "docs" / "b.txt").unlink()                              # delete
    (vol / "docs" / "c.txt").rename(vol / "docs" / "c-renamed.txt")  # rename
    shutil.rmtree(vol / "empty")                                   # a whole directory goes
    one = copied(src, dst, tmp_path, "--butype", butype, "--level", "1")
    assert one["level"] == 1 and one["base"] == full["id"]
    assert one["bytes"] < full["bytes"] / 20, (one["bytes"], full["bytes"])
    assert differences(describe(vol), describe(out)) == []
    assert not (out / "docs" / "b.txt").exists() and not (out / "docs" / "c.txt").exists()
    rows = {b["id"]: b for b in backups(tmp_path, tmp_path / "catalog.db")}
    assert rows[one["id"]]["base_token"] == rows[full["id"]]["dump_date"]
    with open_catalog(tmp_path / "catalog.db") as cat:              # the catalog knows what was copied
        paths = {os.fsdecode(e.path) for e in cat.entries(one["id"])}
    assert {"/docs/new.txt", "/docs/a.txt", "/docs/c-renamed.txt"} <= paths and "/big.bin" not in paths

    two = copied(src, dst, tmp_path, "--butype", butype, "--incremental")   # no change: a level 2 on the 1
    assert two["level"] == 2 and two["base"] == one["id"]
    assert differences(describe(vol), describe(out)) == []


def test_an_unknown_volume_or_a_refused_destination_is_one_line_exit_1(two_servers, tmp_path):
    src, dst = two_servers
    (tmp_path / "src" / "vol" / "f").write_text("x")
    for kwargs, what in (({"volume": "/no/such"}, "/no/such"), ({"target": "/not/a/volume"}, "/not/a/volume")):
        result = copy(src, dst, tmp_path, **kwargs)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "failed" in lines[0] and what in lines[0], result.stderr
    assert [b["status"] for b in backups(tmp_path, tmp_path / "catalog.db")] == ["failed", "failed"]
    assert copy(src, dst, tmp_path).returncode == 0, "both servers are left usable"


def test_sigint_during_a_copy_aborts_both_data_servers_exit_130(two_servers, tmp_path):
    src, dst = two_servers
    big_source(tmp_path)
    catalog = tmp_path / "catalog.db"
    stopped = stop_mid_job(["copy", f"ndmp@{src.host}:/export/data", f"ndmp@{dst.host}:/export/data", "--catalog",
                            str(catalog), "--json"], tmp_path, until=running_backup_in(catalog), settle=0.3)
    assert_interrupted(stopped, {"source": "idle", "destination": "idle"})
    [row] = backups(tmp_path, catalog)
    assert row["status"] == "interrupted" and row["kind"] == "copy"


def test_an_interrupted_copy_job_leaves_both_of_its_data_servers_idle(two_servers, tmp_path):
    """The job's own sessions (a new session is always IDLE) are what must be back to IDLE."""
    from ndmpd.dma.jobs.copy import CopyInterrupted, CopyJob, CopyRequest
    src, dst = two_servers
    big_source(tmp_path)

    async def run() -> tuple[int, int, str]:
        async with Agent.connect(src.host, 10000, user="ndmp", password=PASSWORD, timeout=30) as source, \
                Agent.connect(dst.host, 10000, user="ndmp", password=PASSWORD, timeout=30) as dest:
            with open_catalog(tmp_path / "catalog.db") as cat:
                job = CopyJob(source, dest, cat, CopyRequest("src", "/export/data", "dst", "/export/data"))
                await sigint_once_bytes_flow(asyncio.create_task(job.run()), source, CopyInterrupted)
                [row] = cat.backups()
                assert job.states == {"source": "idle", "destination": "idle"}
                return ((await source.call("DATA_GET_STATE")).state, (await dest.call("DATA_GET_STATE")).state,
                        row.status)

    assert asyncio.run(run()) == (C.DATA_STATE_IDLE, C.DATA_STATE_IDLE, "interrupted")


def test_a_destination_that_dies_mid_copy_fails_the_copy_in_one_line(two_servers, tmp_path):
    src, dst = two_servers
    big_source(tmp_path)
    catalog = tmp_path / "catalog.db"

    def kill_destination() -> None:
        dst.proc.kill()
        dst.proc.wait(timeout=15)
    stopped = stop_mid_job(["copy", f"ndmp@{src.host}:/export/data", f"ndmp@{dst.host}:/export/data", "--catalog",
                            str(catalog)], tmp_path, until=running_backup_in(catalog), stop=kill_destination,
                           settle=0.3)
    assert stopped.returncode == 1, stopped.stderr
    assert len(stopped.stderr.strip().splitlines()) == 1 and "failed" in stopped.stderr, stopped.stderr
    [row] = backups(tmp_path, catalog)
    assert row["status"] == "failed" and row["halt_reason"]
