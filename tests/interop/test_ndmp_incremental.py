"""``ndmp backup --incremental`` and ``--level N`` pick their base from the catalog as dump(8)
does, send its DUMP_DATE as BASE_DATE, and the images hold only what changed; ``ndmp find``
answers for a deleted file with the backups that still hold it."""

from __future__ import annotations

import json
import os

import pytest

from .ndmp_cli import backups, ndmp, summary

pytestmark = pytest.mark.interop


def run_backup(server, tmp_path, *flags: str) -> dict:
    spec = f"ndmp@{server.host}"
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--catalog",
                  str(tmp_path / "catalog.db"), "--json", *flags, home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = summary(result.stdout)
    report["stderr"] = result.stderr
    return report


def by_id(tmp_path) -> dict[str, dict]:
    return {b["id"]: b for b in backups(tmp_path, tmp_path / "catalog.db")}


def listing(tmp_path, backup_id: str) -> set[str]:
    from ndmpd.dma.catalog import open_catalog
    with open_catalog(tmp_path / "catalog.db") as cat:
        return {os.fsdecode(e.path) for e in cat.entries(backup_id)}


def test_incremental_twice_after_a_level_0_gives_levels_1_and_2_on_the_right_tokens(server_factory, tmp_path):
    server = server_factory()
    vol = tmp_path / "vol"
    (vol / "dir").mkdir()
    (vol / "dir" / "old.bin").write_bytes(os.urandom(1 << 20))
    (vol / "keep.txt").write_text("unchanged")
    first = run_backup(server, tmp_path, "--incremental")
    assert first["level"] == 0 and first["base"] is None and "level 0" in first["stderr"]

    (vol / "dir" / "new.txt").write_text("added after the level 0")
    one = run_backup(server, tmp_path, "--incremental")
    (vol / "keep.txt").write_text("modified after the level 1")
    two = run_backup(server, tmp_path, "--incremental")
    rows = by_id(tmp_path)
    l0, l1, l2 = rows[first["id"]], rows[one["id"]], rows[two["id"]]
    assert (l1["level"], l1["base_backup"], l2["level"], l2["base_backup"]) == (1, l0["id"], 2, l1["id"])
    assert l0["dump_date"] and l0["dump_date"] == l0["env"]["DUMP_DATE"]     # what the server returned
    assert l1["base_token"] == l0["dump_date"] and l1["env"].get("BASE_DATE") == l0["dump_date"]
    assert l2["base_token"] == l1["dump_date"] and l2["env"].get("BASE_DATE") == l1["dump_date"]
    assert len({l0["dump_date"], l1["dump_date"], l2["dump_date"]}) == 3

    assert "/dir/old.bin" in listing(tmp_path, l0["id"])
    files_of_1 = {p for p in listing(tmp_path, l1["id"]) if not (vol / p.lstrip("/")).is_dir()}
    assert files_of_1 == {"/dir/new.txt"}
    assert l1["bytes"] < l0["bytes"] / 10, "the level 1 holds only the change, not the 1 MiB file"
    files_of_2 = {p for p in listing(tmp_path, l2["id"]) if not (vol / p.lstrip("/")).is_dir()}
    assert files_of_2 == {"/keep.txt"}

    again = run_backup(server, tmp_path, "--level", "1")       # dump semantics: on the level 0, not the 2
    row = by_id(tmp_path)[again["id"]]
    assert (row["level"], row["base_backup"], row["base_token"]) == (1, l0["id"], l0["dump_date"])
    files = {p for p in listing(tmp_path, row["id"]) if not (vol / p.lstrip("/")).is_dir()}
    assert files == {"/dir/new.txt", "/keep.txt"}


def test_a_level_with_nothing_below_it_is_refused_in_one_line_exit_2(server_factory, tmp_path):
    server = server_factory()
    spec = f"ndmp@{server.host}"
    result = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--level", "2", "--catalog",
                  str(tmp_path / "catalog.db"), home=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "below level 2" in result.stderr, result.stderr
    assert backups(tmp_path, tmp_path / "catalog.db") == []


def test_the_users_base_date_wins_over_the_catalogs(server_factory, tmp_path):
    server = server_factory()
    (tmp_path / "vol" / "a.txt").write_text("a")
    l0 = run_backup(server, tmp_path)
    token = by_id(tmp_path)[l0["id"]]["dump_date"]
    (tmp_path / "vol" / "b.txt").write_text("b")
    l1 = run_backup(server, tmp_path, "--incremental")
    mine = run_backup(server, tmp_path, "--level", "2", "-E", f"BASE_DATE={token}")
    row = by_id(tmp_path)[mine["id"]]
    assert row["base_token"] == token and row["base_backup"] is None and row["env"]["BASE_DATE"] == token
    assert "/b.txt" in listing(tmp_path, mine["id"]) and l1["level"] == 1


def test_find_answers_for_a_file_deleted_before_the_level_2_with_the_backups_holding_it(server_factory, tmp_path):
    server = server_factory()
    vol = tmp_path / "vol"
    (vol / "docs").mkdir()
    for name in ("report.txt", "victim.txt", "moved.txt", "edit.txt"):
        (vol / "docs" / name).write_text(name)
    l0 = run_backup(server, tmp_path, "--level", "0")
    (vol / "docs" / "added.txt").write_text("new")
    (vol / "docs" / "edit.txt").write_text("edited once")
    (vol / "docs" / "moved.txt").rename(vol / "docs" / "renamed.txt")
    (vol / "docs" / "victim.txt").write_text("touched, so the level 1 holds it too")
    l1 = run_backup(server, tmp_path, "--incremental")
    (vol / "docs" / "victim.txt").unlink()
    (vol / "docs" / "report.txt").write_text("edited before the level 2")
    l2 = run_backup(server, tmp_path, "--incremental")
    assert (l0["level"], l1["level"], l2["level"]) == (0, 1, 2)
    found = ndmp("find", "**/victim.txt", "--catalog", str(tmp_path / "catalog.db"), "--json", home=tmp_path)
    assert found.returncode == 0, found.stderr
    assert [e["backup"] for e in json.loads(found.stdout)] == [l1["id"], l0["id"]]     # newest first, not the 2
    renamed = ndmp("find", "**/renamed.txt", "--catalog", str(tmp_path / "catalog.db"), "--json", home=tmp_path)
    assert [e["backup"] for e in json.loads(renamed.stdout)][-1] == l1["id"]
    assert l0["id"] not in [e["backup"] for e in json.loads(renamed.stdout)]
