"""``ndmp tape``, ``ndmp library``, spanning backups and ``ndmp prune`` as a user runs them against
a real ``ndmpd serve`` with a virtual library of small (1 MiB) cartridges."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import PASSWORD, REPO, library_tables, run, servers
from .ndmp_cli import ndmp, ok_json

pytestmark = pytest.mark.interop


@pytest.fixture
def lib(server_factory, tmp_path):
    """A server whose library vlib0 holds blank cartridges TAPE01-03 in slots 1-3 (slot 4 empty)."""
    server = server_factory(extra=library_tables(tmp_path / "lib"))
    done = run([sys.executable, "-m", "ndmpd", "library", "--config", str(server.config), "create", "vlib0",
                "TAPE01", "TAPE02", "TAPE03"])
    assert done.returncode == 0, done.stderr
    return server, f"ndmp@{server.host}"


def slots(inventory: dict) -> dict[str, str | None]:
    return {e["element"]: e["barcode"] for e in inventory["elements"]}


def test_inventory_load_unload_move_round_trip(lib, tmp_path):
    server, spec = lib
    inv = ok_json(ndmp("library", f"{spec}:vlib0", "inventory", "--json", home=tmp_path))
    assert slots(inv) == {"drive 1": None, "slot 1": "TAPE01", "slot 2": "TAPE02", "slot 3": "TAPE03",
                          "slot 4": None, "ie 1": None}
    [drive] = [e for e in inv["elements"] if e["kind"] == "drive"]
    assert drive["identifier"].split()[-1] == "ltape0"          # how ndmp maps the element to the device

    loaded = ok_json(ndmp("library", f"{spec}:vlib0", "load", "2", "--drive", "ltape0", "--json", home=tmp_path))
    assert loaded == {"loaded": "TAPE02", "from": "slot 2", "into": "drive 1"}
    again = ndmp("library", f"{spec}:vlib0", "load", "1", home=tmp_path)
    assert again.returncode == 1 and "already holds TAPE02" in again.stderr and len(again.stderr.splitlines()) == 1
    unloaded = ok_json(ndmp("library", f"{spec}:vlib0", "unload", "--json", home=tmp_path))
    assert unloaded == {"unloaded": "TAPE02", "from": "drive 1", "into": "slot 2"}
    moved = ok_json(ndmp("library", f"{spec}:vlib0", "move", "3", "ie1", "--json", home=tmp_path))
    assert moved["into"] == "ie 1"
    empty = ndmp("library", f"{spec}:vlib0", "move", "3", "4", home=tmp_path)
    assert empty.returncode == 1 and "slot 3 is empty" in empty.stderr
    inv = ok_json(ndmp("library", f"{spec}:vlib0", "inventory", "--json", home=tmp_path))
    assert slots(inv)["ie 1"] == "TAPE03" and slots(inv)["slot 2"] == "TAPE02" and slots(inv)["slot 3"] is None
    text = ndmp("library", f"{spec}:vlib0", "inventory", home=tmp_path).stdout
    assert "slot 1" in text and "TAPE01" in text


def test_labels_are_written_read_back_and_not_overwritten(lib, tmp_path):
    server, spec = lib
    done = ok_json(ndmp("library", f"{spec}:vlib0", "label", "1=MON", "2=TUE", "--json", home=tmp_path))
    assert done["labelled"] == [{"slot": "slot 1", "barcode": "TAPE01", "label": "MON"},
                                {"slot": "slot 2", "barcode": "TAPE02", "label": "TUE"}]
    inv = ok_json(ndmp("library", f"{spec}:vlib0", "inventory", "--json", home=tmp_path))
    assert slots(inv)["drive 1"] is None and slots(inv)["slot 2"] == "TAPE02"     # unloaded again

    ok_json(ndmp("library", f"{spec}:vlib0", "load", "2", "--json", home=tmp_path))
    read = ok_json(ndmp("tape", f"{spec}:ltape0", "read-label", "--json", home=tmp_path))
    assert read["label"] == "TUE" and read["has_data"] is False
    refused = ndmp("tape", f"{spec}:ltape0", "label", "WED", home=tmp_path)
    assert refused.returncode == 1 and "holds label TUE" in refused.stderr and "--force" in refused.stderr
    ok_json(ndmp("tape", f"{spec}:ltape0", "label", "WED", "--force", "--json", home=tmp_path))
    assert ok_json(ndmp("tape", f"{spec}:ltape0", "read-label", "--json", home=tmp_path))["label"] == "WED"
    status = ok_json(ndmp("tape", f"{spec}:ltape0", "status", "--json", home=tmp_path))
    assert status["total_space"] == 1 << 20 and status["file_num"] == 0
    assert ok_json(ndmp("tape", f"{spec}:ltape0", "rewind", "--json", home=tmp_path))["rewound"]
    ok_json(ndmp("library", f"{spec}:vlib0", "unload", "--json", home=tmp_path))
    ok_json(ndmp("library", f"{spec}:vlib0", "load", "3", "--json", home=tmp_path))
    blank = ndmp("tape", f"{spec}:ltape0", "read-label", "--json", home=tmp_path)
    assert blank.returncode == 1 and json.loads(blank.stdout) == {"drive": "ltape0", "label": None,
                                                                  "created": None, "has_data": False}


def fill_volume(root, size: int) -> None:
    (root / "big").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (root / "big" / f"part{i}.bin").write_bytes(os.urandom(size // 3))
    (root / "small.txt").write_text("after the big ones")


def extract(cartridge, file_number: int) -> bytes:
    return subprocess.run([sys.executable, "-m", "ndmpd", "tape", "extract", str(cartridge), str(file_number)],
                          cwd=REPO, capture_output=True, timeout=60, check=True).stdout


def test_a_backup_spans_two_cartridges_and_the_parts_make_one_image(lib, tmp_path):
    server, spec = lib
    fill_volume(tmp_path / "vol", 1_600_000)
    catalog = tmp_path / "catalog.db"
    ok_json(ndmp("library", f"{spec}:vlib0", "label", "2=SECOND", "--json", home=tmp_path))
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library", f"{spec}:vlib0",
                  "--slots", "1-3", "--catalog", str(catalog), "--json", home=tmp_path)
    report = ok_json(result)
    assert report["status"] == "done"
    [row] = ok_json(ndmp("backups", "--catalog", str(catalog), "--json", home=tmp_path))
    first, second = row["media"]
    assert (first["barcode"], first["slot"], first["file_number"]) == ("TAPE01", 1, 0)
    assert (second["barcode"], second["label"], second["slot"], second["file_number"]) == ("TAPE02", "SECOND", 2, 1)
    assert first["first_byte"] == 0 and first["last_byte"] == second["first_byte"] > 0
    assert second["last_byte"] == row["bytes"] == report["bytes"]

    image = extract(tmp_path / "lib" / "TAPE01.img", 0)
    assert len(image) == first["last_byte"]
    image += extract(tmp_path / "lib" / "TAPE02.img", 1)
    listing = subprocess.run(["tar", "-t"], input=image, capture_output=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert {b"big/part0.bin", b"big/part2.bin", b"small.txt"} <= {n.removeprefix(b"./") for n in listing.stdout.split()}
    inv = ok_json(ndmp("library", f"{spec}:vlib0", "inventory", "--json", home=tmp_path))
    assert slots(inv)["drive 1"] is None and slots(inv)["slot 2"] == "TAPE02"     # put back


def test_a_full_cartridge_with_no_next_one_fails_in_one_line_and_leaves_the_drive_usable(lib, tmp_path):
    server, spec = lib
    fill_volume(tmp_path / "vol", 1_600_000)
    catalog = tmp_path / "catalog.db"
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library", f"{spec}:vlib0",
                  "--slots", "1", "--catalog", str(catalog), home=tmp_path)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert "the medium is full" in line and "no next cartridge" in line
    [row] = ok_json(ndmp("backups", "--catalog", str(catalog), "--json", home=tmp_path))
    assert row["status"] == "failed" and "medium is full" in row["halt_reason"]
    ok_json(ndmp("library", f"{spec}:vlib0", "load", "3", "--json", home=tmp_path))
    assert ok_json(ndmp("tape", f"{spec}:ltape0", "status", "--json", home=tmp_path))["file_num"] == 0


def test_the_media_loader_loads_the_cartridge_holding_an_offset_of_a_spanning_backup(lib, tmp_path):
    """The interface a restore uses: load_for(backup, offset) puts the right cartridge in the
    drive, open at the start of that part's tape file."""
    import asyncio

    from ndmpd.dma.agent import Agent
    from ndmpd.dma.catalog import open_catalog
    from ndmpd.dma.jobs.media import MediaError, MediaLoader, part_length
    from ndmpd.dma.library import Library

    server, spec = lib
    fill_volume(tmp_path / "vol", 1_600_000)
    catalog_path = tmp_path / "catalog.db"
    backup_id = ok_json(ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library",
                             f"{spec}:vlib0", "--catalog", str(catalog_path), "--json", home=tmp_path))["id"]
    image = extract(tmp_path / "lib" / "TAPE01.img", 0) + extract(tmp_path / "lib" / "TAPE02.img", 0)

    async def scenario() -> None:
        cat = open_catalog(catalog_path)
        backup = cat.get(backup_id)
        connect = dict(user="ndmp", password=PASSWORD)
        async with Agent.connect(server.host, **connect) as robot, Agent.connect(server.host, **connect) as tape:
            library = await Library.open(robot, "vlib0")
            await library.initialize()                          # INITIALIZE ELEMENT STATUS: accepted
            loader = MediaLoader(library, tape, "ltape0", cat)
            second = backup.media[1]
            part = await loader.load_for(backup, second.first_byte + 70_000)
            assert (part.barcode, part.first_byte) == ("TAPE02", second.first_byte)
            assert part_length(part) == second.last_byte - second.first_byte
            inv = await library.inventory()
            assert inv.drive("ltape0").barcode == "TAPE02"
            record = bytes((await tape.call("TAPE_READ", count=65536)).data_in)
            assert record == image[part.first_byte:part.first_byte + len(record)]
            part = await loader.load_for(backup, 0)              # back to the first: TAPE02 goes home
            assert part.barcode == "TAPE01"
            inv = await library.inventory()
            assert inv.drive("ltape0").barcode == "TAPE01" and inv.slot(2).barcode == "TAPE02"
            record = bytes((await tape.call("TAPE_READ", count=65536)).data_in)
            assert record == image[:len(record)]
            with pytest.raises(MediaError, match="no medium of backup"):
                await loader.load_for(backup, backup.bytes + 1)
            await loader.release(unload=True)
            assert not (await library.inventory()).drive("ltape0").full
            await library.close()
        cat.close()

    asyncio.run(scenario())


def test_prune_frees_a_cartridge_the_next_library_backup_reuses(lib, tmp_path):
    server, spec = lib
    (tmp_path / "vol" / "note.txt").write_text("small enough for one cartridge")
    catalog = tmp_path / "catalog.db"

    def backup() -> dict:
        ok_json(ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library", f"{spec}:vlib0",
                     "--slots", "1-2", "--catalog", str(catalog), "--json", home=tmp_path))
        return ok_json(ndmp("backups", "--catalog", str(catalog), "--json", home=tmp_path))[0]

    assert [m["barcode"] for m in backup()["media"]] == ["TAPE01"]
    assert [m["barcode"] for m in backup()["media"]] == ["TAPE02"]          # TAPE01 holds a kept backup
    full = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:ltape0", "--library", f"{spec}:vlib0",
                "--slots", "1-2", "--catalog", str(catalog), home=tmp_path)
    assert full.returncode == 1 and "no writable cartridge" in full.stderr
    report = ok_json(ndmp("prune", "--keep-last", "1", "--catalog", str(catalog), "--json", home=tmp_path))
    assert report["reusable"] == ["TAPE01"]
    newest = backup()
    assert [m["barcode"] for m in newest["media"]] == ["TAPE01"] and newest["status"] == "done"


@pytest.mark.parametrize("version", [3, 4])
def test_the_backup_job_changes_cartridges_in_ndmp_v3_and_v4(lib, tmp_path, version):
    """EOM pauses, SET_WINDOW in PAUSED and CONTINUE mean the same in v3 and v4 (wire reference 5.3)."""
    import asyncio

    from ndmpd.dma.agent import Agent
    from ndmpd.dma.catalog import open_catalog
    from ndmpd.dma.jobs.backup import BackupJob, BackupRequest
    from ndmpd.dma.jobs.media import MediaLoader
    from ndmpd.dma.library import Library

    server, spec = lib
    fill_volume(tmp_path / "vol", 1_600_000)

    async def scenario():
        cat = open_catalog(tmp_path / "catalog.db")
        connect = dict(user="ndmp", password=PASSWORD, versions=(version,))
        async with Agent.connect(server.host, **connect) as robot, Agent.connect(server.host, **connect) as agent:
            assert agent.version == version
            library = await Library.open(robot, "vlib0")
            loader = MediaLoader(library, agent, "ltape0", cat, slots=[3, 1])
            request = BackupRequest(host_name=server.host, volume="/export/data", drive="ltape0")
            result = await BackupJob(agent, agent, cat, request, media=loader).run()
            await library.close()
        backup = cat.get(result.id)
        cat.close()
        return result, backup

    result, backup = asyncio.run(scenario())
    assert result.status == "done"
    assert [(m.barcode, m.slot) for m in backup.media] == [("TAPE03", 3), ("TAPE01", 1)]   # the order asked
    assert backup.media[0].last_byte == backup.media[1].first_byte and backup.media[1].last_byte == backup.bytes


def test_the_library_commands_drive_ndmjobs_simulated_robot(ndmjob, tmp_path):
    """Another vendor's changer: ndmjob's daemon (two drives that do not identify themselves,
    so --drive names the element and --tape-device the NDMP tape device)."""
    from .conftest import ndmjob_daemon

    (tmp_path / "robot").mkdir()
    with ndmjob_daemon(tmp_path) as port:
        env_home = tmp_path / "home"
        spec = f"ndmp@127.0.0.1:{port}"
        robot, drive0 = f"{spec}:{tmp_path}/robot", f"{spec}:{tmp_path}/robot/drive0"

        def run_ndmp(*args: str) -> subprocess.CompletedProcess:
            return ndmp(*args, home=env_home, password="ndmp", timeout=120)

        inv = ok_json(run_ndmp("library", robot, "inventory", "--json"))
        kinds = [e["kind"] for e in inv["elements"]]
        assert kinds.count("drive") == 2 and kinds.count("slot") == 10 and slots(inv)["slot 1"] == "PTAG00XX"
        ambiguous = run_ndmp("library", robot, "load", "1")
        assert ambiguous.returncode == 1 and "2 drives" in ambiguous.stderr
        ok_json(run_ndmp("library", robot, "load", "1", "--drive", "1", "--json"))
        ok_json(run_ndmp("tape", drive0, "label", "NJ01", "--json"))
        assert ok_json(run_ndmp("tape", drive0, "read-label", "--json"))["label"] == "NJ01"
        assert ok_json(run_ndmp("library", robot, "unload", "--drive", "1", "--json"))["into"] == "slot 1"
        done = ok_json(run_ndmp("library", robot, "label", "2=NJ02", "--drive", "1", "--tape-device",
                                f"{tmp_path}/robot/drive0", "--json"))
        assert done["labelled"] == [{"slot": "slot 2", "barcode": "PTAG01XX", "label": "NJ02"}]
        ok_json(run_ndmp("library", robot, "move", "3", "ie1", "--json"))
        assert slots(ok_json(run_ndmp("library", robot, "inventory", "--json")))["ie 1"] == "PTAG02XX"


def test_a_three_way_backup_spans_cartridges_of_the_tape_hosts_library(tmp_path):
    """Data on one ndmpd; drive and library on another: the cartridge change is the tape host's."""
    with servers(tmp_path, "data", "tape", extra={"tape": library_tables(tmp_path / "tape" / "lib")}) as [data, tape]:
        done = run([sys.executable, "-m", "ndmpd", "library", "--config", str(tape.config), "create", "vlib0",
                    "TAPE01", "TAPE02"])
        assert done.returncode == 0, done.stderr
        fill_volume(tmp_path / "data" / "vol", 1_600_000)
        catalog = tmp_path / "catalog.db"
        report = ok_json(ndmp("backup", f"ndmp@{data.host}:/export/data", "--tape", f"ndmp@{tape.host}:ltape0",
                              "--library", f"ndmp@{tape.host}:vlib0", "--catalog", str(catalog), "--json",
                              home=tmp_path))
        assert [m["barcode"] for m in report["media"]] == ["TAPE01", "TAPE02"]
        assert report["media"][1]["last_byte"] == report["bytes"]
        lib = tmp_path / "tape" / "lib"
        image = extract(lib / "TAPE01.img", 0) + extract(lib / "TAPE02.img", 0)
        listing = subprocess.run(["tar", "-t"], input=image, capture_output=True, timeout=60)
        assert listing.returncode == 0 and b"./small.txt" in listing.stdout.split()


def test_a_big_library_is_read_in_several_element_status_replies(server_factory, tmp_path):
    big = library_tables(tmp_path / "lib").replace("slots = 4", "slots = 3000")
    server = server_factory(extra=big)
    done = run([sys.executable, "-m", "ndmpd", "library", "--config", str(server.config), "create", "vlib0",
                "FIRST1", "SECOND"])
    assert done.returncode == 0, done.stderr
    spec = f"ndmp@{server.host}"
    ok_json(ndmp("library", f"{spec}:vlib0", "move", "2", "3000", "--json", home=tmp_path))   # past 64 KiB
    inv = ok_json(ndmp("library", f"{spec}:vlib0", "inventory", "--json", home=tmp_path))
    found = slots(inv)
    assert len([k for k in found if k.startswith("slot ")]) == 3000
    assert found["slot 1"] == "FIRST1" and found["slot 3000"] == "SECOND" and found["slot 2"] is None
