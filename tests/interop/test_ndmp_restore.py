"""``ndmp restore`` as a user runs it against real ndmpd processes: a backup made with ``ndmp
backup``, then restored whole, by direct access (some files, one renamed), three-way onto
another server, and as of a time through a level 0 and its increment. Identity is judged by
``tests/trees.py`` (contents, holes, links, modes, owners, ns times, xattrs, ACLs)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.engine_helpers import build_every_case
from tests.server_process import ServerProcess
from tests.trees import describe, differences

from .conftest import PASSWORD, free_loopback_address, write_config
from .test_ndmp_backup import backups, ndmp

pytestmark = pytest.mark.interop

OUT_VOLUME = """
[[volume]]
name = "/export/out"
path = "{path}"
"""


@contextlib.contextmanager
def servers(tmp_path: Path, *sides: str, max_version: int = 4):
    """One ndmpd per side (its root tmp_path/SIDE: vol/ is /export/data, out/ is /export/out)."""
    started = []
    try:
        for side in sides:
            root = tmp_path / side
            (root / "out").mkdir(parents=True)
            host = free_loopback_address()
            config = write_config(root, host, ["md5", "text"], extra=OUT_VOLUME.format(path=root / "out"),
                                  server_extra=f"max_version = {max_version}")
            started.append(ServerProcess(host, config, root / "ndmpd.log", PASSWORD))
        yield started
    finally:
        for server in started:
            server.stop()


def backup(spec: str, catalog: Path, home: Path, *extra: str, tape: str | None = None) -> dict:
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{tape or spec}:vtape0", "--catalog", str(catalog),
                  "--json", *extra, home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def restore(*args: str, catalog: Path, home: Path):
    return ndmp("restore", *args, "--catalog", str(catalog), home=home)


def summaries(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


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
