"""``ndmp restore`` as a user runs it against real ndmpd processes: a backup made with ``ndmp
backup``, then restored whole, by direct access (some files, one renamed), three-way onto
another server, and as of a time through a level 0 and its increment. Identity is judged by
``tests/trees.py`` (contents, holes, links, modes, owners, ns times, xattrs, ACLs)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.engine_helpers import build_every_case
from tests.trees import describe, differences

from .conftest import PASSWORD, drive_is_free, servers
from .ndmp_cli import assert_interrupted, backups, file_grows, json_lines, ndmp, stop_mid_job, summary

pytestmark = pytest.mark.interop

def backup(spec: str, catalog: Path, home: Path, *extra: str, tape: str | None = None) -> dict:
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{tape or spec}:vtape0", "--catalog", str(catalog),
                  "--json", *extra, home=home)
    assert result.returncode == 0, result.stderr
    return summary(result.stdout)


def restore(*args: str, catalog: Path, home: Path):
    return ndmp("restore", *args, "--catalog", str(catalog), home=home)


def summaries(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [line for line in json_lines(result.stdout) if line.get("type") == "summary"]


@pytest.mark.parametrize("version,butype", [(4, "tar"), (3, "dump"), (4, "dump"), (3, "tar")])
def test_a_whole_restore_is_identical(tmp_path, version, butype):
    with servers(tmp_path, "nas", max_version=version) as [nas]:
        vol = build_every_case(tmp_path / "nas" / "vol")
        before = describe(vol)
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        made = backup(spec, catalog, tmp_path, "--butype", butype)
        listing = ndmp("ls", made["id"][:8], "/dir", "--catalog", str(catalog), "--json", home=tmp_path)
        assert listing.returncode == 0, listing.stderr
        assert {e["path"] for e in json.loads(listing.stdout)} >= {"/dir/file", "/dir/sub"}
        [done] = summaries(restore(made["id"][:8], "--to", f"{spec}:/export/out/r", "--json",
                                   catalog=catalog, home=tmp_path))
        assert done["status"] == "done" and not done["direct"]
        assert differences(before, describe(tmp_path / "nas" / "out" / "r")) == []


def small_files_and_a_big_one(vol: Path) -> dict[bytes, bytes]:
    """Three small files around a 24 MiB one (so the image is large); returns path -> contents."""
    (vol / "dir" / "sub").mkdir(parents=True)
    (vol / "aaa.txt").write_bytes(b"first\n" * 100)
    with open(vol / "dir" / "big.bin", "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1 << 20))
    (vol / "dir" / "sub" / "c.txt").write_bytes(b"third\n" * 3000)
    (vol / "zzz.txt").write_bytes(b"last\n")
    for name in ("aaa.txt", "dir/sub/c.txt", "zzz.txt"):
        os.utime(vol / name, ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    return describe(vol)


@pytest.mark.parametrize("where,version", [("two-way", 4), ("three-way", 4), ("two-way", 3)])
def test_a_dar_restore_reads_a_small_fraction_of_the_image(tmp_path, where, version):
    with servers(tmp_path, "nas", "other", max_version=version) as [nas, other]:
        before = small_files_and_a_big_one(tmp_path / "nas" / "vol")
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        made = backup(spec, catalog, tmp_path)
        target = nas if where == "two-way" else other
        out = tmp_path / ("nas" if where == "two-way" else "other") / "out" / "d"
        [done] = summaries(restore(made["id"], "/aaa.txt", "/dir/sub/c.txt", "/zzz.txt=renamed/last.txt",
                                   "--to", f"ndmp@{target.host}:/export/out/d", "--json",
                                   catalog=catalog, home=tmp_path))
        assert done["status"] == "done" and done["direct"], done
        assert done["files"] == {"/aaa.txt": True, "/dir/sub/c.txt": True, "/zzz.txt": True}
        after = describe(out)
        files = {p for p, e in after.items() if not e["mode"].startswith("d")}
        assert files == {b"aaa.txt", b"dir/sub/c.txt", b"renamed/last.txt"}, "nothing else is created"
        for old, new in ((b"aaa.txt", b"aaa.txt"), (b"dir/sub/c.txt", b"dir/sub/c.txt"),
                         (b"zzz.txt", b"renamed/last.txt")):
            assert after[new] == before[old], new
        assert made["bytes"] > 24 << 20
        assert 0 < done["bytes_moved"] < made["bytes"] * 0.05, done


def test_a_three_way_backup_restored_onto_a_third_server(tmp_path):
    with servers(tmp_path, "data", "tape", "dest") as [data, tape, dest]:
        vol = build_every_case(tmp_path / "data" / "vol")
        before = describe(vol)
        catalog = tmp_path / "catalog.db"
        made = backup(f"ndmp@{data.host}", catalog, tmp_path, tape=f"ndmp@{tape.host}")
        [done] = summaries(restore(made["id"], "--to", f"ndmp@{dest.host}:/export/out/x",
                                   "--tape", f"ndmp@{tape.host}:vtape0", "--json", catalog=catalog, home=tmp_path))
        assert done["status"] == "done"
        assert differences(before, describe(tmp_path / "dest" / "out" / "x")) == []


def test_unknown_and_failed_backups_are_one_clear_line(tmp_path):
    with servers(tmp_path, "nas") as [nas]:
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        unknown = restore("deadbeef", "--to", f"{spec}:/export/out/u", catalog=catalog, home=tmp_path)
        assert unknown.returncode in (1, 2)
        assert len(unknown.stderr.strip().splitlines()) == 1 and "deadbeef" in unknown.stderr, unknown.stderr
        failed = ndmp("backup", f"{spec}:/no/such", "--tape", f"{spec}:vtape0", "--catalog", str(catalog),
                      home=tmp_path)
        assert failed.returncode == 1
        [row] = backups(tmp_path, catalog)
        refused = restore(row["id"], "--to", f"{spec}:/export/out/u", catalog=catalog, home=tmp_path)
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1 and "failed" in refused.stderr, refused.stderr
        assert not (tmp_path / "nas" / "out" / "u").exists()


@pytest.mark.parametrize("butype", ["dump", "tar"])
def test_as_of_now_restores_the_level_0_then_the_increment(tmp_path, butype):
    with servers(tmp_path, "nas") as [nas]:
        vol = tmp_path / "nas" / "vol"
        (vol / "keep").mkdir()
        (vol / "keep" / "same.txt").write_text("unchanged")
        (vol / "keep" / "doomed.txt").write_text("deleted at level 1")
        (vol / "old-name").mkdir()
        (vol / "old-name" / "inside.txt").write_text("renamed with its directory")
        (vol / "was.txt").write_text("renamed file")
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        backup(spec, catalog, tmp_path, "--butype", butype)
        [level0] = backups(tmp_path, catalog)
        assert level0["env"].get("DUMP_DATE"), level0
        (vol / "keep" / "doomed.txt").unlink()
        (vol / "old-name").rename(vol / "new-name")
        (vol / "was.txt").rename(vol / "is.txt")
        (vol / "keep" / "added.txt").write_text("new at level 1")
        backup(spec, catalog, tmp_path, "--butype", butype, "--level", "1",
               "-E", f"BASE_DATE={level0['env']['DUMP_DATE']}")
        expected = describe(vol)
        result = summaries(restore("--as-of", "now", f"{spec}:/export/data", "--to", f"{spec}:/export/out/t",
                                   "--json", catalog=catalog, home=tmp_path))
        assert [r["backup"] for r in result] == [b["id"] for b in reversed(backups(tmp_path, catalog))]
        assert differences(expected, describe(tmp_path / "nas" / "out" / "t")) == []
        some = summaries(restore("--as-of", "now", f"{spec}:/export/data", "/keep", "--to", f"{spec}:/export/out/k",
                                 "--json", catalog=catalog, home=tmp_path))
        assert len(some) == 2 and all(r["direct"] for r in some), "/keep is in both, by direct access"
        # the increment's deletion in /keep is replayed by DAR too (the server reads the image's
        # labels at its start, which DAR would skip, to know the image is an incremental)
        assert differences(describe(vol / "keep"), describe(tmp_path / "nas" / "out" / "k" / "keep")) == []


def test_a_refused_destination_fails_with_the_servers_reason(tmp_path):
    with servers(tmp_path, "nas") as [nas]:
        (tmp_path / "nas" / "vol" / "f.txt").write_text("x")
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        made = backup(spec, catalog, tmp_path)
        result = restore(made["id"], "--to", f"{spec}:/not/a/volume", "--json", catalog=catalog, home=tmp_path)
        assert result.returncode == 1
        [line] = result.stderr.strip().splitlines()
        assert made["id"] in line and "/not/a/volume" in line, line     # the server's LOG_MESSAGE says why
        ended = summary(result.stdout)
        assert ended["status"] == "failed"
        assert ended["states"] == {"data": "idle", "mover": "idle"}, "read on the job's own sessions"
        assert drive_is_free(nas.host, "vtape0"), "the job let the drive go"


def test_sigint_mid_restore_aborts_both_sides_and_exits_130(tmp_path):
    with servers(tmp_path, "nas") as [nas]:
        with open(tmp_path / "nas" / "vol" / "big.bin", "wb") as f:
            for _ in range(256):
                f.write(os.urandom(1 << 20))
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        made = backup(spec, catalog, tmp_path)
        stopped = stop_mid_job(["restore", made["id"], "--to", f"{spec}:/export/out/s", "--catalog", str(catalog),
                                "--json"], tmp_path, until=file_grows(tmp_path / "nas" / "out" / "s" / "big.bin"))
        assert_interrupted(stopped, {"data": "idle", "mover": "idle"})
        assert drive_is_free(nas.host, "vtape0"), "the job closed the drive"
        shutil.rmtree(tmp_path / "nas" / "vol")


def test_the_cartridge_on_ndmjobs_tape_agent(tmp_path):
    """Another vendor's tape agent (ndmjob's daemon) holds the cartridge: a three-way backup
    onto it, then a whole restore, a selective one read from the start, and one by direct
    access (ndmjob's mover serves only whole records of its size: the reads are on that grid)."""
    from .conftest import NDMJOB, ndmjob_daemon
    if not NDMJOB.exists():
        pytest.skip("ndmjob not installed (apt-get install amanda-common)")
    with servers(tmp_path, "nas") as [nas], ndmjob_daemon(tmp_path) as port:
        vol = build_every_case(tmp_path / "nas" / "vol")
        with open(vol / "big.bin", "wb") as f:        # so direct access has something to skip
            f.write(os.urandom(4 << 20))
        before = describe(vol)
        conf = tmp_path / "ndmp"
        conf.mkdir()
        for name, password in (("nas", PASSWORD), ("jobd", "ndmp")):
            (conf / f"{name}.pw").write_text(password)
            (conf / f"{name}.pw").chmod(0o600)
        (conf / "ndmp.toml").write_text(f'[host.nas]\naddress = "{nas.host}"\npassword_file = "nas.pw"\n'
                                        f'[host.jobd]\naddress = "127.0.0.1"\nport = {port}\n'
                                        'password_file = "jobd.pw"\n')
        cartridge = tmp_path / "jobd.tape"
        cartridge.touch()
        catalog = tmp_path / "catalog.db"
        made = ndmp("backup", "nas:/export/data", "--tape", f"jobd:{cartridge}", "--catalog", str(catalog),
                    "--json", home=tmp_path)
        assert made.returncode == 0, made.stderr
        made = summary(made.stdout)
        defaulted = restore(made["id"], "--to", "nas:/export/out/w", catalog=catalog, home=tmp_path)
        assert defaulted.returncode == 1 and "--tape" in defaulted.stderr, defaulted.stderr   # not on nas
        tape = f"jobd:{cartridge}"
        [whole] = summaries(restore(made["id"], "--to", "nas:/export/out/w", "--tape", tape, "--json",
                                    catalog=catalog, home=tmp_path))
        assert whole["status"] == "done"
        assert differences(before, describe(tmp_path / "nas" / "out" / "w")) == []
        [some] = summaries(restore(made["id"], "/dir/file=renamed", "--no-direct", "--tape", tape,
                                   "--to", "nas:/export/out/s",
                                   "--json", catalog=catalog, home=tmp_path))
        assert some["status"] == "done" and not some["direct"]
        files = {p for p, e in describe(tmp_path / "nas" / "out" / "s").items() if not e["mode"].startswith("d")}
        assert files == {b"renamed"}
        assert (tmp_path / "nas" / "out" / "s" / "renamed").read_bytes() == b"hello\n" * 1000
        # direct access: ndmpd's data server asks for whole records of the mover's size (the DMA
        # says which in NDMPD_RECORD_SIZE), the only reads ndmjob's mover serves
        [dar] = summaries(restore(made["id"], "/dir/file=renamed", "/dir/sub", "--tape", tape,
                                  "--to", "nas:/export/out/dar", "--json", catalog=catalog, home=tmp_path))
        assert dar["status"] == "done" and dar["direct"], dar
        assert dar["files"] == {"/dir/file": True, "/dir/sub": True}, dar
        assert 0 < dar["bytes_moved"] < dar["image_bytes"] * 0.2, dar
        restored = describe(tmp_path / "nas" / "out" / "dar")
        def alone(entry: dict) -> dict:            # a file restored without the rest of its hard links
            return {k: v for k, v in entry.items() if k != "links"}
        assert alone(restored[b"renamed"]) == alone(before[b"dir/file"])
        sub = {p: e for p, e in before.items() if p.startswith(b"dir/sub")}
        assert set(sub) == {p for p in restored if p.startswith(b"dir/sub")}
        assert all(alone(restored[p]) == alone(e) for p, e in sub.items() if e["mode"][0] != "d")
        assert dar["states"] == {"data": "idle", "mover": "idle"}, "read on the job's own sessions"


def test_an_image_in_two_tape_files_is_read_across_them(tmp_path):
    """A backup's image split over two tape files of one cartridge: the restore reads the first
    to its filemark, moves the head to the second and continues there; cataloged as two
    cartridges with no library to load them, it fails naming the one it needs."""
    import asyncio
    import subprocess
    import sys
    from ndmpd.dma.agent import Agent
    from ndmpd.dma.catalog import Media, open_catalog
    from ndmpd.dma.jobs.recover import RecoverFailed, RecoverJob, RecoverRequest
    from ndmpd.wire import C
    from .conftest import REPO
    with servers(tmp_path, "nas") as [nas]:
        vol = tmp_path / "nas" / "vol"
        (vol / "d").mkdir()
        for i in range(6):
            (vol / "d" / f"f{i}.bin").write_bytes(os.urandom(100_000))
        before = describe(vol)
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        made = backup(spec, catalog, tmp_path)
        image = subprocess.run([sys.executable, "-m", "ndmpd", "tape", "extract",
                                str(tmp_path / "nas" / "state" / "vtape0.img"), "0"],
                               cwd=REPO, capture_output=True, timeout=60, check=True).stdout
        record = 64 << 10
        image += bytes(-len(image) % record)
        split = 3 * record
        assert len(image) > split + record

        async def write_two_tape_files() -> None:
            async with Agent.connect(nas.host, 10000, user="ndmp", password=PASSWORD, timeout=10) as agent:
                await agent.call("TAPE_OPEN", device="vtape1", mode=C.TAPE_RDWR_MODE)
                for start, end in ((0, split), (split, len(image))):
                    for at in range(start, end, record):
                        await agent.call("TAPE_WRITE", data_out=image[at:at + record])
                    await agent.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)
                await agent.call("TAPE_CLOSE")
        asyncio.run(write_two_tape_files())
        with open_catalog(catalog) as cat:
            original = cat.get(made["id"])
            def split_backup(second: str):
                made = cat.begin_backup(host=spec, volume="/export/data", butype="tar", level=0)
                cat.add_media(made.id, Media(label="A", file_number=0, first_byte=0, last_byte=split))
                cat.add_media(made.id, Media(label=second, file_number=1, first_byte=split, last_byte=None))
                cat.finish_backup(made.id, "done", bytes=original.bytes, env=original.env)
                return cat.get(made.id)
            one_cartridge, two_cartridges = split_backup("A"), split_backup("B")

        async def restore(spanning, where: str) -> tuple[str, dict[str, str]]:
            request = RecoverRequest(backup=spanning, drive="vtape1", destination=f"/export/out/{where}")
            async with Agent.connect(nas.host, 10000, user="ndmp", password=PASSWORD, timeout=10) as agent:
                job = RecoverJob(agent, agent, request)
                try:
                    return (await job.run()).status, job.states
                except RecoverFailed as exc:
                    return str(exc), job.states
        done, _ = asyncio.run(asyncio.wait_for(restore(one_cartridge, "span"), 60))
        assert done == "done"
        assert differences(before, describe(tmp_path / "nas" / "out" / "span")) == []
        refused, states = asyncio.run(asyncio.wait_for(restore(two_cartridges, "none"), 60))
        assert "cartridge B" in refused and "no library" in refused, refused
        assert states == {"data": "idle", "mover": "idle"}, "read on the job's own session"
        assert drive_is_free(nas.host, "vtape1"), "the job let the drive go"


@pytest.mark.parametrize("where", ["two-way", "three-way"])
def test_an_ndmpv2_restore_whole_and_by_direct_access(tmp_path, where):
    """NDMPv2 has no DATA_CONNECT (the mover's address goes with DATA_START_RECOVER) and its
    nlist entry names the destination path: a v2 backup restores whole and by DAR."""
    with servers(tmp_path, "nas", "other") as [nas, other]:
        before = small_files_and_a_big_one(tmp_path / "nas" / "vol")
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        made = backup(spec, catalog, tmp_path, "--version", "2")
        target = nas if where == "two-way" else other
        out = tmp_path / ("nas" if where == "two-way" else "other") / "out"
        [whole] = summaries(restore(made["id"], "--to", f"ndmp@{target.host}:/export/out/w", "--version", "2",
                                    "--tape", f"{spec}:vtape0", "--json", catalog=catalog, home=tmp_path))
        assert whole["status"] == "done" and not whole["direct"]
        assert differences(before, describe(out / "w")) == []
        [some] = summaries(restore(made["id"], "/dir/sub/c.txt", "/zzz.txt=renamed/last.txt", "--version", "2",
                                   "--to", f"ndmp@{target.host}:/export/out/d", "--tape", f"{spec}:vtape0", "--json",
                                   catalog=catalog, home=tmp_path))
        assert some["status"] == "done" and some["direct"], some
        after = describe(out / "d")
        assert {p for p, e in after.items() if not e["mode"].startswith("d")} == {b"dir/sub/c.txt", b"renamed/last.txt"}
        assert after[b"renamed/last.txt"] == before[b"zzz.txt"] and after[b"dir/sub/c.txt"] == before[b"dir/sub/c.txt"]
        assert 0 < some["bytes_moved"] < made["bytes"] * 0.05, some
