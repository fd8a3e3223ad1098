"""``ndmp replicate`` from a non-btrfs master whose volume has ``journal = true``: the real
``ndmpd serve`` watches it with fanotify, its updates list only the directories that changed,
and the btrfs replica stays identical to the master through creates, deletes, renames of
files and directories, chmods and xattrs."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from tests.loopfs import btrfs_subvolume, tmpfs_mount

from .conftest import servers
from .ndmp_cli import ndmp
from .test_ndmp_replicate import MASTER, REPLICA, errors, master_tree, run_once, same, target, volume_table

pytestmark = pytest.mark.interop


def test_journal_driven_updates_from_a_tmpfs_master_keep_the_replica_identical(tmp_path):
    home, catalog = tmp_path / "home", tmp_path / "home" / "catalog.db"
    home.mkdir()
    with tmpfs_mount(tmp_path, size=128 << 20) as plain, btrfs_subvolume(tmp_path, size=512 << 20) as vol:
        btrfs = vol.parent
        (btrfs / "r1").mkdir()
        extra = {"m": volume_table(MASTER, plain, False) + "journal = true\n",
                 "r1": volume_table(REPLICA, btrfs / "r1" / "rep", True)}
        with servers(tmp_path, "m", "r1", extra=extra) as (m, r1):
            data = master_tree(plain)
            created = ndmp("replicate", "create", "web", target(m, MASTER), target(r1, REPLICA), "--json",
                           "--catalog", str(catalog), home=home)
            assert created.returncode == 0 and json.loads(created.stdout)["butype"] == "dump", created.stderr
            code, updates, err = run_once(home, catalog)
            assert code == 0, errors(err, updates)
            replica_data = btrfs / "r1" / "rep" / "data"
            same(data, replica_data)
            changes = [
                lambda: (data / "dir" / "file").write_bytes(b"changed\n"),
                lambda: os.rename(data / "zero", data / "renamed"),
                lambda: (data / "new" / "deep").mkdir(parents=True),
                lambda: (data / "new" / "deep" / "f").write_text("new file"),
                lambda: os.chmod(data / "dir", 0o750),
                lambda: os.setxattr(data / "renamed", "user.note", b"journal"),
                lambda: os.rename(data / "new", data / "dir" / "moved"),
                lambda: shutil.rmtree(data / "dir" / "moved" / "deep"),
            ]
            for change in changes:
                change()
                time.sleep(0.05)
                code, updates, err = run_once(home, catalog)
                assert code == 0, errors(err, updates)
                assert not updates[target(r1, REPLICA)]["full"]
                same(data, replica_data)
        log = m.log.read_text()
    assert "change journal watching" in log, log[-2000:]
    assert log.count("cannot prove the changes since the base; walking") == 1, "dir/file has 3 links: walked"
    assert log.count("changed directories") == len(changes) - 1, "every other update used the journal"
