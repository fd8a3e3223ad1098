"""Backups on one tape append: wherever a restore, a label check or a dead backup left the head,
the next ``ndmp backup`` writes after the last tape file, so every image the catalog names is
still there and restores identically."""

from __future__ import annotations

import asyncio

import pytest

from ndmpd.dma.agent import Agent
from ndmpd.wire import C
from tests.trees import describe, differences

from .conftest import PASSWORD, servers
from .ndmp_cli import backups
from .test_ndmp_restore import backup, restore, summaries

pytestmark = pytest.mark.interop


def write_a_file_without_its_filemark(host: str) -> None:
    """What a backup that died mid-image leaves: records after the last filemark."""
    async def write() -> None:
        async with Agent.connect(host, user="ndmp", password=PASSWORD) as agent:
            await agent.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
            await agent.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
            await agent.call("TAPE_MTIO", tape_op=C.MTIO_FSF, count=0x7FFFFFFF)
            await agent.call("TAPE_WRITE", data_out=b"half an image " * 4096)
            await agent.call("TAPE_CLOSE")
    asyncio.run(write())


def test_each_backup_appends_after_the_last_tape_file_and_all_restore(tmp_path):
    with servers(tmp_path, "nas") as [nas]:
        vol = tmp_path / "nas" / "vol"
        (vol / "one.txt").write_text("first backup")
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        first = backup(spec, catalog, tmp_path)
        tree_one = describe(vol)
        # a restore reads the tape and leaves its head inside file 0
        summaries(restore(first["id"], "--to", f"{spec}:/export/out/r0", "--json", catalog=catalog, home=tmp_path))
        (vol / "two.txt").write_text("second backup")
        second = backup(spec, catalog, tmp_path)
        tree_two = describe(vol)
        write_a_file_without_its_filemark(nas.host)
        (vol / "three.txt").write_text("third backup, after a dead one")
        third = backup(spec, catalog, tmp_path)
        tree_three = describe(vol)

        files = {b["id"]: b["media"][0]["file_number"] for b in backups(tmp_path, catalog)}
        assert [files[b["id"]] for b in (first, second, third)] == [0, 1, 3], files   # file 2: the dead one
        for made, tree, where in ((first, tree_one, "a"), (second, tree_two, "b"), (third, tree_three, "c")):
            [done] = summaries(restore(made["id"], "--to", f"{spec}:/export/out/{where}", "--json",
                                       catalog=catalog, home=tmp_path))
            assert done["status"] == "done"
            assert differences(tree, describe(tmp_path / "nas" / "out" / where)) == [], made["id"]
