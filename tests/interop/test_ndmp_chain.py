"""A whole incremental chain as an admin runs it: a level 0 of the tricky tree, changes, ``ndmp
backup --incremental`` twice (levels 1 and 2), more changes and a level 3; then ``ndmp restore
--as-of`` the level 2's time gives exactly the tree the level 2 saw (deletions and renames of
both increments replayed, the level 3 left out), and ``ndmp find`` answers for a file deleted
before the level 2 with the backups that still hold it."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time

import pytest

from tests.engine_helpers import build_every_case
from tests.trees import describe, differences

from .conftest import servers
from .ndmp_cli import backups, ndmp
from .test_ndmp_restore import backup, restore, summaries

pytestmark = pytest.mark.interop


def change_for_level_1(vol) -> None:
    (vol / "chain" / "doomed.txt").write_text("modified for the level 1, deleted before the level 2")
    (vol / "chain" / "moved-dir").mkdir()
    (vol / "chain" / "moved-dir" / "inside.txt").write_text("renamed with its directory at level 2")
    (vol / "dir" / "file").write_bytes(b"modified for the level 1")
    (vol / "zero").unlink()
    (vol / "added-1.bin").write_bytes(os.urandom(200_000))


def change_for_level_2(vol) -> None:
    (vol / "chain" / "doomed.txt").unlink()
    (vol / "chain" / "moved-dir").rename(vol / "chain" / "renamed-dir")
    (vol / "added-1.bin").rename(vol / "renamed-1.bin")
    (vol / "added-2.txt").write_text("new at level 2")
    (vol / "dir" / "file").write_bytes(b"modified again for the level 2")


def change_for_level_3(vol) -> None:
    (vol / "renamed-1.bin").unlink()
    (vol / "after-2.txt").write_text("only the level 3 has me")
    shutil.rmtree(vol / "chain")


@pytest.mark.parametrize("butype", ["tar", "dump"])
def test_as_of_the_level_2_restores_exactly_the_tree_it_saw(tmp_path, butype):
    with servers(tmp_path, "nas") as [nas]:
        vol = tmp_path / "nas" / "vol"
        build_every_case(vol)
        (vol / "chain").mkdir()
        (vol / "chain" / "doomed.txt").write_text("in the level 0")
        catalog, spec = tmp_path / "catalog.db", f"ndmp@{nas.host}"
        level0 = backup(spec, catalog, tmp_path, "--butype", butype, "--incremental")
        change_for_level_1(vol)
        level1 = backup(spec, catalog, tmp_path, "--butype", butype, "--incremental")
        change_for_level_2(vol)
        level2 = backup(spec, catalog, tmp_path, "--butype", butype, "--incremental")
        at_level_2 = describe(vol)
        time.sleep(1.1)                                   # WHEN has second precision
        when = datetime.datetime.now().isoformat(timespec="seconds")
        time.sleep(1.1)
        change_for_level_3(vol)
        level3 = backup(spec, catalog, tmp_path, "--butype", butype, "--incremental")
        assert [b["level"] for b in (level0, level1, level2, level3)] == [0, 1, 2, 3]

        result = summaries(restore("--as-of", when, f"{spec}:/export/data", "--to", f"{spec}:/export/out/l2",
                                   "--json", catalog=catalog, home=tmp_path))
        assert [r["backup"] for r in result] == [level0["id"], level1["id"], level2["id"]], "in order, no level 3"
        assert all(r["status"] == "done" for r in result)
        assert differences(at_level_2, describe(tmp_path / "nas" / "out" / "l2")) == []

        found = ndmp("find", "**/doomed.txt", "--catalog", str(catalog), "--json", home=tmp_path)
        assert found.returncode == 0, found.stderr
        holders = [e["backup"] for e in json.loads(found.stdout)]
        assert holders == [level1["id"], level0["id"]], "newest first; not the level 2 or 3"
        rows = {b["id"]: b for b in backups(tmp_path, catalog)}
        assert rows[level2["id"]]["base_backup"] == level1["id"]
