"""``ndmp prune`` as a user runs it on a catalog: keep-last and older-than per host:volume,
never a base a kept increment needs, and the media it frees reported and marked reusable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from ndmpd.dma.catalog import Media, open_catalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ndmp(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home), "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "ndmpd.dma", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


def add(cat, *, level: int, days_ago: float, barcode: str | None = None, volume: str = "/vol",
        status: str = "done") -> str:
    started = time.time() - days_ago * 86400
    b = cat.begin_backup(host="nas", volume=volume, butype="tar", level=level, started=started)
    if barcode:
        cat.add_media(b.id, Media(label=None, barcode=barcode, slot=1, file_number=0, first_byte=0, last_byte=10))
    cat.finish_backup(b.id, status, bytes=10, ended=started + 60)
    return b.id


def prune(home, catalog, *args: str) -> dict:
    result = ndmp("prune", *args, "--catalog", str(catalog), "--json", home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_keep_last_keeps_the_chain_of_what_it_keeps_and_frees_whole_cartridges(tmp_path):
    path = tmp_path / "catalog.db"
    with open_catalog(path) as cat:
        old0 = add(cat, level=0, days_ago=10, barcode="TAPE01")
        new0 = add(cat, level=0, days_ago=5, barcode="TAPE02")
        inc1 = add(cat, level=1, days_ago=4, barcode="TAPE02")      # shares TAPE02 with its base
        inc2 = add(cat, level=2, days_ago=3, barcode="TAPE03")
        other = add(cat, level=0, days_ago=20, barcode="TAPE09", volume="/other")
    report = prune(tmp_path, path, "--keep-last", "1")
    assert [b["id"] for b in report["removed"]] == [old0]        # inc2 needs inc1 and new0: kept
    assert report["reusable"] == ["TAPE01"]
    with open_catalog(path) as cat:
        assert {b.id for b in cat.backups()} == {new0, inc1, inc2, other}   # /other keeps its one backup
        assert cat.reusable_media() == {"TAPE01"}
    report = prune(tmp_path, path, "--keep-last", "1")
    assert report == {"removed": [], "reusable": []}


def test_older_than_removes_by_age_but_not_a_base_a_young_increment_needs(tmp_path):
    path = tmp_path / "catalog.db"
    with open_catalog(path) as cat:
        base = add(cat, level=0, days_ago=40, barcode="TAPE01")
        inc = add(cat, level=1, days_ago=2, barcode="TAPE02")
        lone = add(cat, level=0, days_ago=45, barcode="TAPE05", volume="/other")
        failed = add(cat, level=0, days_ago=35, barcode="TAPE06", volume="/other", status="failed")
        young = add(cat, level=0, days_ago=1, volume="/other")
    report = prune(tmp_path, path, "--older-than", "30d")
    assert sorted(b["id"] for b in report["removed"]) == sorted([lone, failed])
    assert report["reusable"] == ["TAPE05", "TAPE06"]
    with open_catalog(path) as cat:
        assert {b.id for b in cat.backups()} == {base, inc, young}
    text = ndmp("prune", "--older-than", "3d", "--catalog", str(path), home=tmp_path)
    assert text.returncode == 0 and "nothing to prune" in text.stdout      # base is old but inc needs it
    report = prune(tmp_path, path, "--older-than", "36h")                 # inc too old now: both go
    assert sorted(b["id"] for b in report["removed"]) == sorted([base, inc])
    assert report["reusable"] == ["TAPE01", "TAPE02"]


def test_prune_usage_errors_are_one_line_and_status_2(tmp_path):
    for args in ((), ("--older-than", "30 days"), ("--keep-last", "0")):
        result = ndmp("prune", *args, "--catalog", str(tmp_path / "c.db"), home=tmp_path)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr


def test_a_pruned_copy_frees_no_medium(tmp_path):
    path = tmp_path / "catalog.db"
    with open_catalog(path) as cat:
        ids = []
        for days_ago in (3, 2):
            c = cat.begin_backup(host="nas", volume="/vol", butype="tar", level=0, kind="copy",
                                 destination="nas2:/mirror", started=time.time() - days_ago * 86400)
            cat.add_media(c.id, Media(label="nas2:/mirror", first_byte=0, last_byte=10))
            cat.finish_backup(c.id, "done", bytes=10)
            ids.append(c.id)
    report = prune(tmp_path, path, "--keep-last", "1")
    assert [b["id"] for b in report["removed"]] == [ids[0]] and report["reusable"] == []
