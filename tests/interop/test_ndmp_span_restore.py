"""Restores that need another cartridge, and interrupting a spanning backup, as a user runs them
against a real ``ndmpd serve`` whose virtual library holds small (1 MiB) cartridges: the restore
loads the cartridge holding the first part it needs, changes cartridges at the end of a part
(or on a SEEK into another part), also when the pause notice is lost on its way, and puts the
last one back in its slot."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from ndmpd.wire import C
from tests.dma_fuzz import RewritingProxy, dropping
from tests.trees import describe, differences

from .conftest import PASSWORD, library_tables, run
from .ndmp_cli import assert_interrupted, json_lines, ndmp, ok_json, stop_mid_job
from .test_ndmp_library import fill_volume, slots

pytestmark = pytest.mark.interop

OUT = """
[[volume]]
name = "/export/out"
path = "{path}"
"""


@pytest.fixture
def lib(server_factory, tmp_path):
    """A server whose library vlib0 holds blank cartridges TAPE01-04 in slots 1-4 (ie 1 empty)."""
    (tmp_path / "out").mkdir()
    server = server_factory(extra=library_tables(tmp_path / "lib") + OUT.format(path=tmp_path / "out"))
    done = run([sys.executable, "-m", "ndmpd", "library", "--config", str(server.config), "create", "vlib0",
                "TAPE01", "TAPE02", "TAPE03", "TAPE04"])
    assert done.returncode == 0, done.stderr
    return server, f"ndmp@{server.host}"


def spanning_backup(spec: str, catalog, home) -> dict:
    report = ok_json(ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library",
                          f"{spec}:vlib0", "--catalog", str(catalog), "--json", home=home))
    assert report["status"] == "done"
    return report


def restore(*args: str, catalog, home) -> subprocess.CompletedProcess:
    return ndmp("restore", *args, "--catalog", str(catalog), "--json", home=home)


def inventory(spec: str, home) -> dict[str, str | None]:
    return slots(ok_json(ndmp("library", f"{spec}:vlib0", "inventory", "--json", home=home)))


def states(host: str) -> tuple[int, int]:
    from ndmpd.dma.agent import Agent

    async def ask() -> tuple[int, int]:
        async with Agent.connect(host, 10000, user="ndmp", password=PASSWORD, timeout=10) as agent:
            return (await agent.call("DATA_GET_STATE")).state, (await agent.call("MOVER_GET_STATE")).state
    return asyncio.run(ask())


def both_idle(host: str) -> bool:
    return states(host) == (C.DATA_STATE_IDLE, C.MOVER_STATE_IDLE)


HOME = {"drive 1": None, "slot 1": "TAPE01", "slot 2": "TAPE02", "slot 3": "TAPE03", "slot 4": "TAPE04", "ie 1": None}


def test_a_backup_spanning_three_cartridges_comes_back_whole_through_the_library(lib, tmp_path):
    from tests.engine_helpers import build_every_case
    server, spec = lib
    vol = build_every_case(tmp_path / "vol")
    fill_volume(vol, 2_400_000)
    before = describe(vol)
    catalog = tmp_path / "catalog.db"
    made = spanning_backup(spec, catalog, tmp_path)
    assert [m["barcode"] for m in made["media"]] == ["TAPE01", "TAPE02", "TAPE03"]
    assert made["media"][0]["library"] == f"{spec}:vlib0" and made["media"][0]["drive"] == f"{spec}:ltape0"

    # no --tape, no --library: the catalog knows the library and the drive that wrote it
    result = restore(made["id"][:8], "--to", f"{spec}:/export/out/whole", catalog=catalog, home=tmp_path)
    summary = ok_json(result)
    assert summary["status"] == "done" and summary["cartridges"] == ["TAPE01", "TAPE02", "TAPE03"]
    assert summary["bytes_moved"] >= made["bytes"]
    assert differences(before, describe(tmp_path / "out" / "whole")) == []
    assert inventory(spec, tmp_path) == HOME                       # each cartridge back in its slot
    assert both_idle(server.host)


def offsets(catalog, backup_id: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """The image offset where the second cartridge starts, and each big file's (fh_info, size)."""
    from ndmpd.dma.catalog import open_catalog
    with open_catalog(catalog) as cat:
        backup = cat.get(backup_id)
        files = {}
        for name in ("part0.bin", "part1.bin", "part2.bin"):
            entry = cat.lookup(backup_id, f"/big/{name}")
            assert entry is not None and entry.fh_info not in (None, 0)
            files[name] = (entry.fh_info, entry.size)
        return backup.media[1].first_byte, files


def test_dar_of_a_file_on_the_second_cartridge_reads_little_and_one_crossing_the_boundary_comes_whole(lib, tmp_path):
    server, spec = lib
    fill_volume(tmp_path / "vol", 1_600_000)
    catalog = tmp_path / "catalog.db"
    made = spanning_backup(spec, catalog, tmp_path)
    boundary, files = offsets(catalog, made["id"])
    second = next(n for n, (at, size) in files.items() if at > boundary)
    crossing = next(n for n, (at, size) in files.items() if at < boundary < at + size)

    result = restore(made["id"][:8], f"/big/{second}", "--to", f"{spec}:/export/out/one", catalog=catalog,
                     home=tmp_path)
    summary = ok_json(result)
    assert summary["status"] == "done" and summary["direct"] is True
    # ndmpd's data server reads the image's global header (on TAPE01) before it seeks to the
    # file: the first cartridge gives that slice only, the rest comes from the second
    assert summary["cartridges"] == ["TAPE01", "TAPE02"]
    size = files[second][1]
    assert summary["bytes_moved"] < size + 256 * 1024 < made["bytes"]
    assert (tmp_path / "out" / "one" / "big" / second).read_bytes() == (tmp_path / "vol" / "big" / second).read_bytes()

    result = restore(made["id"][:8], f"/big/{crossing}", "--to", f"{spec}:/export/out/two", catalog=catalog,
                     home=tmp_path)
    summary = ok_json(result)
    assert summary["status"] == "done" and summary["direct"] is True
    assert summary["cartridges"] == ["TAPE01", "TAPE02"]
    assert summary["bytes_moved"] < made["bytes"] - files[crossing][0] + 128 * 1024   # nothing before the file but the head
    got = (tmp_path / "out" / "two" / "big" / crossing).read_bytes()
    assert got == (tmp_path / "vol" / "big" / crossing).read_bytes()
    assert inventory(spec, tmp_path) == HOME
    assert both_idle(server.host)


def test_a_restore_whose_next_cartridge_left_the_library_fails_naming_it(lib, tmp_path):
    server, spec = lib
    fill_volume(tmp_path / "vol", 1_600_000)
    before = describe(tmp_path / "vol")
    catalog = tmp_path / "catalog.db"
    made = spanning_backup(spec, catalog, tmp_path)
    ok_json(ndmp("library", f"{spec}:vlib0", "move", "2", "ie1", "--json", home=tmp_path))

    result = ndmp("restore", made["id"][:8], "--to", f"{spec}:/export/out/missing", "--library", f"{spec}:vlib0",
                  "--catalog", str(catalog), home=tmp_path)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert "TAPE02" in line and "not in the library's slots" in line and "ie 1" in line, line
    assert both_idle(server.host)
    assert inventory(spec, tmp_path)["drive 1"] is None and inventory(spec, tmp_path)["slot 1"] == "TAPE01"

    # the drive is usable: the cartridge back in, the same restore succeeds
    ok_json(ndmp("library", f"{spec}:vlib0", "move", "ie1", "2", "--json", home=tmp_path))
    summary = ok_json(restore(made["id"][:8], "--to", f"{spec}:/export/out/back", catalog=catalog, home=tmp_path))
    assert summary["cartridges"] == ["TAPE01", "TAPE02"]
    assert differences(before, describe(tmp_path / "out" / "back")) == []


def test_sigint_right_after_the_first_cartridge_change_exit_130_cartridge_back_in_its_slot(lib, tmp_path):
    server, spec = lib
    fill_volume(tmp_path / "vol", 3_600_000)                       # four cartridges' worth: time to stop it
    catalog = tmp_path / "catalog.db"
    stopped = stop_mid_job(["backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library",
                            f"{spec}:vlib0", "--catalog", str(catalog), "--json"], tmp_path,
                           line=lambda line: line["type"] == "log" and line["text"].startswith("continuing on"))
    changed = next(x for x in json_lines(stopped.stdout) if x["type"] == "log" and x["text"].startswith("continuing on"))
    assert "TAPE02" in changed["text"]
    assert_interrupted(stopped, {"data": "idle", "mover": "idle"})
    [row] = ok_json(ndmp("backups", "--catalog", str(catalog), "--json", home=tmp_path))
    assert row["status"] == "interrupted" and "SIGINT" in row["halt_reason"]
    assert inventory(spec, tmp_path) == HOME                       # the cartridge it was writing went home


def test_a_spanning_restore_whose_pause_notices_never_come_changes_cartridges_from_the_state(lib, tmp_path):
    """Every NOTIFY_MOVER_PAUSED (the end of each cartridge's part) dropped on its way to the
    DMA: the restore reads the pause from MOVER_GET_STATE and changes cartridges as it would
    on the post, rather than waiting out its stall timeout."""
    server, spec = lib
    fill_volume(tmp_path / "vol", 2_400_000)
    before = describe(tmp_path / "vol")
    catalog = tmp_path / "catalog.db"
    made = spanning_backup(spec, catalog, tmp_path)
    dropped: list[bytes] = []
    proxy = RewritingProxy((server.host, 10000), dropping(C.NOTIFY_MOVER_PAUSED, dropped))
    via = f"ndmp@127.0.0.1:{proxy.port}"
    try:
        began = time.monotonic()
        result = ndmp("--timeout", "5", "restore", made["id"][:8], "--to", f"{via}:/export/out/paused",
                      "--tape", f"{via}:ltape0", "--library", f"{via}:vlib0", "--catalog", str(catalog),
                      "--json", home=tmp_path, timeout=120)
        took = time.monotonic() - began
    finally:
        proxy.close()
    summary = ok_json(result)
    assert summary["status"] == "done" and summary["cartridges"] == ["TAPE01", "TAPE02", "TAPE03"], summary
    assert len(dropped) >= 2, "the restore changed cartridges without a pause"
    assert differences(before, describe(tmp_path / "out" / "paused")) == []
    assert inventory(spec, tmp_path) == HOME
    assert took < 15 * len(dropped) + 20, (took, len(dropped))
