"""The catalog answers what the `ndmp` commands ask: backups by volume, short ids, ls, find,
DAR lookups, as-of chains and prune; it survives a crash mid-backup and serves readers while a
backup writes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter

import pytest

from ndmpd.dma.catalog import (AmbiguousBackup, CatalogError, Media, UnknownBackup, default_path,
                               open_catalog)
from ndmpd.dma.catalog_sqlite import SCHEMA_VERSION

from .catalog_helpers import file_posts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cat(tmp_path):
    c = open_catalog(tmp_path / "catalog.db")
    yield c
    c.close()


def backup_with(cat, paths, *, volume="/vol", level=0, started=1000.0, status="done", host="nas"):
    b = cat.begin_backup(host=host, volume=volume, butype="tar", level=level, started=started)
    with cat.history(b.id) as fh:
        for post in file_posts(paths):
            fh.post(*post)
    cat.finish_backup(b.id, status, bytes=512 * len(paths), env={"LEVEL": str(level)}, ended=started + 1)
    return b.id


def test_default_path_follows_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "ndmp" / "catalog.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "share" / "ndmp" / "catalog.db"
    with open_catalog() as c:                    # created with its directory on first use
        c.begin_backup(host="h", volume="/v", butype="tar", level=0)
    assert (tmp_path / "home" / ".local" / "share" / "ndmp" / "catalog.db").exists()


def test_schema_is_versioned_wal_and_reopens_with_its_data(tmp_path):
    path = tmp_path / "catalog.db"
    with open_catalog(path) as c:
        short = backup_with(c, [b"/", b"/a"])
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with open_catalog(path) as c:
        assert c.get(short).entries == 2 and c.get(short).env == {"LEVEL": "0"}
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CatalogError, match="newer"):
        open_catalog(path)


def test_a_schema_2_catalog_gains_the_media_library_and_drive_and_keeps_its_rows(tmp_path):
    from ndmpd.dma.catalog_sqlite import _MIGRATIONS, connect
    path = tmp_path / "catalog.db"
    conn = connect(path)
    for version in (1, 2):                                   # a catalog an older ndmp made
        conn.executescript(_MIGRATIONS[version])
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO backups (id, host, volume, butype, level, started, status) "
                 "VALUES ('00dd', 'h', '/v', 'tar', 0, 1.0, 'done')")
    conn.execute("INSERT INTO media VALUES (1, 1, NULL, 'T1', 1, 0, 0, 10)")
    conn.close()
    with open_catalog(path) as c:
        assert c.get("00dd").media == [Media(barcode="T1", slot=1, file_number=0, first_byte=0, last_byte=10)]
        new = c.begin_backup(host="h", volume="/v", butype="tar", level=0)
        c.add_media(new.id, Media(barcode="T2", slot=2, file_number=0, library="nas:vlib0", drive="nas:ltape0"))
        [m] = c.get(new.id).media
        assert (m.library, m.drive) == ("nas:vlib0", "nas:ltape0")


def test_backup_record_media_and_list_newest_first(cat):
    old = backup_with(cat, [b"/"], started=100.0)
    other = backup_with(cat, [b"/"], volume="/other", started=150.0)
    new = cat.begin_backup(host="nas", volume="/vol", butype="dump", level=1, base_token="100", started=200.0)
    cat.add_media(new.id, Media(label="A0001", barcode="A0001L6", slot=1, file_number=0, first_byte=0,
                                last_byte=1000))
    cat.add_media(new.id, Media(label="A0002", slot=2, file_number=0, first_byte=1000))
    assert [b.id for b in cat.backups(volume="/vol")] == [new.id, old]
    assert [b.id for b in cat.backups()] == [new.id, other, old]
    running = cat.get(new.id)
    assert running.status == "running" and running.ended is None and running.base_token == "100"
    assert [m.label for m in running.media] == ["A0001", "A0002"] and running.media[1].last_byte is None
    done = cat.finish_backup(new.id, "interrupted", halt_reason="aborted by SIGINT", bytes=1500,
                             env={"DUMP_DATE": "200"}, dump_date="200")
    assert (done.status, done.halt_reason, done.bytes, done.dump_date) == ("interrupted", "aborted by SIGINT",
                                                                          1500, "200")
    with pytest.raises(ValueError):
        cat.finish_backup(new.id, "fine")


def test_short_ids_take_unique_prefixes_and_name_ambiguous_ones(cat):
    ids = [cat.begin_backup(host="h", volume="/v", butype="tar", level=0).id for _ in range(17)]
    assert all(len(i) == 8 for i in ids) and len(set(ids)) == 17
    first, count = Counter(i[0] for i in ids).most_common(1)[0]
    assert count >= 2                              # 17 ids, 16 hex digits
    with pytest.raises(AmbiguousBackup) as ambiguous:
        cat.get(first)
    assert sorted(ambiguous.value.candidates) == sorted(i for i in ids if i.startswith(first))
    for i in ids:
        assert cat.get(i).id == i
        unique = next(i[:n] for n in range(1, 9) if sum(j.startswith(i[:n]) for j in ids) == 1)
        assert cat.get(unique.upper()).id == i
    for bad in ("zz", "", "00000000x", "'; drop table backups; --"):
        with pytest.raises(UnknownBackup):
            cat.get(bad)


def test_ls_lists_direct_children_and_lookup_gives_fh_info(cat):
    short = backup_with(cat, [b"/", b"/a/", b"/a/one", b"/a/two", b"/a/sub/", b"/a/sub/deep", b"/b", b"/ab"])
    assert [e.path for e in cat.ls(short, "/")] == [b"/a", b"/ab", b"/b"]
    assert [e.path for e in cat.ls(short[:5], "a")] == [b"/a/one", b"/a/sub", b"/a/two"]
    assert [e.path for e in cat.ls(short, "/a/sub/")] == [b"/a/sub/deep"]
    assert cat.ls(short, "/nothing") == []
    deep = cat.lookup(short, "/a/sub/deep")
    assert (deep.fh_info, deep.size, deep.inode) == (512 * 5, 10, 1005)
    assert cat.lookup(short, "/").fh_info == 0
    assert cat.lookup(short, "/a/missing") is None


def test_find_globs_match_paths_and_names_newest_first(cat):
    paths = [b"/", b"/docs/", b"/docs/report.txt", b"/docs/old report.txt", b"/docs/a\nb.txt",
             b"/docs/caf\xc3\xa9.txt", b"/docs/raw\xff.txt", b"/src/", b"/src/report.txt", b"/src/x.py",
             b"/src/deep/", b"/src/deep/report.txt"]
    old = backup_with(cat, paths, started=100.0)
    new = backup_with(cat, paths[:3], started=200.0)

    def found(glob):
        return [(e.backup, e.path) for e in cat.find(glob)]

    assert found("report.txt") == [(new, b"/docs/report.txt"), (old, b"/docs/report.txt"),
                                   (old, b"/src/report.txt"), (old, b"/src/deep/report.txt")]   # by dir
    assert found("/src/*.txt") == [(old, b"/src/report.txt")]          # * stays in one directory
    assert found("/src/**.txt") == [(old, b"/src/report.txt"), (old, b"/src/deep/report.txt")]
    assert found("/docs/old *") == [(old, b"/docs/old report.txt")]
    assert found("a?b.txt") == [(old, b"/docs/a\nb.txt")]              # a newline is one character
    assert found("caf?.txt") == [(old, b"/docs/caf\xc3\xa9.txt")]      # é is one character
    assert found(os.fsdecode(b"raw\xff.txt")) == [(old, b"/docs/raw\xff.txt")]   # non-UTF-8 bytes
    assert found(b"raw?.txt") == [(old, b"/docs/raw\xff.txt")]
    assert found("[rx]*.py") == [(old, b"/src/x.py")]
    assert found("/s*/report.txt") == [(old, b"/src/report.txt")]
    assert found("*.md") == []
    assert len(cat.find("*", limit=3)) == 3


def test_a_file_deleted_later_is_found_in_the_backups_that_hold_it(cat):
    l0 = backup_with(cat, [b"/", b"/keep", b"/gone"], level=0, started=100.0)
    l1 = backup_with(cat, [b"/", b"/keep", b"/gone"], level=1, started=200.0)
    backup_with(cat, [b"/", b"/keep"], level=2, started=300.0)
    assert [e.backup for e in cat.find("gone")] == [l1, l0]


def test_as_of_chain_is_the_level_0_and_the_increments_on_it_in_order(cat):
    l0 = backup_with(cat, [b"/"], level=0, started=100.0)
    l1 = backup_with(cat, [b"/"], level=1, started=200.0)
    l2 = backup_with(cat, [b"/"], level=2, started=300.0)
    l1b = backup_with(cat, [b"/"], level=1, started=400.0)
    backup_with(cat, [b"/"], level=2, started=450.0, status="failed")
    backup_with(cat, [b"/"], volume="/other", level=0, started=420.0)
    backup_with(cat, [b"/"], host="nas2", level=0, started=430.0)
    ids = lambda chain: [b.id for b in chain]      # noqa: E731
    assert ids(cat.chain("nas", "/vol", as_of=350.0)) == [l0, l1, l2]
    assert ids(cat.chain("nas", "/vol", as_of=300.0)) == [l0, l1, l2]
    assert ids(cat.chain("nas", "/vol")) == [l0, l1b]          # the failed level 2 does not count
    assert ids(cat.chain("nas", "/vol", as_of=150.0)) == [l0]
    with pytest.raises(CatalogError, match="no level-0"):
        cat.chain("nas", "/vol", as_of=50.0)
    l0b = backup_with(cat, [b"/"], level=0, started=500.0)
    assert ids(cat.chain("nas", "/vol")) == [l0b]


def test_prune_keeps_what_kept_backups_need_and_returns_the_media_it_frees(cat):
    l0 = backup_with(cat, [b"/", b"/a"], level=0, started=100.0)
    cat.add_media(l0, Media(label="T1", slot=1))
    l1 = backup_with(cat, [b"/", b"/a"], level=1, started=200.0)
    failed = backup_with(cat, [b"/"], level=1, started=250.0, status="failed")
    l2 = backup_with(cat, [b"/", b"/a"], level=2, started=300.0)
    other = backup_with(cat, [b"/"], volume="/other", started=50.0)
    running = cat.begin_backup(host="nas", volume="/vol", butype="tar", level=0, started=10.0).id
    assert [b.id for b in cat.prune(keep_last=1)] == [failed]   # l2 needs l1 and l0
    l0b = backup_with(cat, [b"/", b"/b"], level=0, started=400.0)
    removed = cat.prune(keep_last=1)
    assert sorted(b.id for b in removed) == sorted([l0, l1, l2])
    assert [m.label for b in removed if b.id == l0 for m in b.media] == ["T1"]
    assert {b.id for b in cat.backups()} == {l0b, other, running}
    assert cat.find("a") == []                          # their files went with them
    with pytest.raises(UnknownBackup):
        cat.ls(l0, "/")
    assert [b.id for b in cat.prune(older_than=100.0, now=500.0)] == [other]
    with pytest.raises(ValueError):
        cat.prune()


CRASHER = textwrap.dedent("""
    import os, signal, sqlite3, sys, time
    sys.path.insert(0, sys.argv[2])
    from ndmpd.dma.catalog import open_catalog
    from ndmpd.dma.catalog_sqlite import SqliteFileWriter
    from ndmpd.dma.catalog_history import HistoryRecorder
    from tests.catalog_helpers import file_posts
    cat = open_catalog(sys.argv[1])
    b = cat.begin_backup(host="nas", volume="/vol", butype="tar", level=0)
    print(b.id, flush=True)
    recorder = HistoryRecorder(SqliteFileWriter(cat.path, 1), batch_rows=1000).start()
    posts = file_posts([b"/f%d" % i for i in range(300_000)], batch=500)
    for post in posts:
        recorder.post(*post)
    watch = sqlite3.connect(sys.argv[1])
    while watch.execute("SELECT entries FROM backups").fetchone()[0] < 20_000:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)          # mid-stream: the worker is between or inside batches
""")


def test_a_crash_mid_backup_leaves_whole_batches_and_the_backup_running(tmp_path):
    path = tmp_path / "catalog.db"
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(path), ROOT], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    short = proc.stdout.strip()
    with open_catalog(path) as c:
        b = c.get(short)
        assert b.status == "running"
        rows = sum(1 for _ in c.entries(short))
        assert rows == b.entries and rows % 1000 == 0 and 20_000 <= rows < 300_000
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_readers_query_while_a_backup_writes(tmp_path):
    path = tmp_path / "catalog.db"
    with open_catalog(path) as writer_cat:
        done = backup_with(writer_cat, [b"/", b"/x.txt"], started=1.0)
        b = writer_cat.begin_backup(host="nas", volume="/vol", butype="tar", level=1)
        posts = file_posts([b"/"] + [b"/d%d/f%d.txt" % (i % 100, i) for i in range(150_000)], batch=1000)
        recorder = writer_cat.history(b.id)
        recorder.start()

        def produce():
            for post in posts:
                recorder.post(*post)
            recorder.finish()
        producer = threading.Thread(target=produce)
        producer.start()
        seen = []
        with open_catalog(path) as reader:        # another connection, as another `ndmp` process
            while producer.is_alive():
                seen.append(reader.get(b.id).entries)
                assert [e.path for e in reader.find("x.txt")] == [b"/x.txt"]
                assert len(reader.ls(done, "/")) == 1
            producer.join()
            final = reader.get(b.id).entries
        assert seen == sorted(seen) and any(0 < s < final for s in seen)
        assert final == 150_001


def test_a_lower_level_replaces_a_higher_one_in_the_chain_as_dump_does(cat):
    l0 = backup_with(cat, [b"/"], level=0, started=100.0)
    l2 = backup_with(cat, [b"/"], level=2, started=200.0)
    l1 = backup_with(cat, [b"/"], level=1, started=300.0)       # based on the level 0, not the 2
    l3 = backup_with(cat, [b"/"], level=3, started=400.0)
    l2b = backup_with(cat, [b"/"], level=2, started=500.0)      # based on the 1: replaces the 3
    ids = lambda chain: [b.id for b in chain]      # noqa: E731
    assert ids(cat.chain("nas", "/vol", as_of=250.0)) == [l0, l2]
    assert ids(cat.chain("nas", "/vol", as_of=350.0)) == [l0, l1]
    assert ids(cat.chain("nas", "/vol", as_of=450.0)) == [l0, l1, l3]
    assert ids(cat.chain("nas", "/vol")) == [l0, l1, l2b]


def test_the_base_of_an_incremental_is_the_newest_done_backup_below_its_level(cat):
    assert cat.newest_done("nas", "/vol") is None
    l0 = backup_with(cat, [b"/"], level=0, started=100.0)
    l1 = backup_with(cat, [b"/"], level=1, started=200.0)
    l2 = backup_with(cat, [b"/"], level=2, started=300.0)
    backup_with(cat, [b"/"], level=3, started=400.0, status="failed")
    assert cat.newest_done("nas", "/vol").id == l2                  # --incremental: level 3 on the 2
    assert cat.newest_done("nas", "/vol", below_level=2).id == l1
    assert cat.newest_done("nas", "/vol", below_level=1).id == l0
    assert cat.newest_done("nas", "/vol", below_level=0) is None
    assert cat.newest_done("nas", "/other") is None


def test_copies_are_chains_of_their_own_and_stay_out_of_restore_chains(cat):
    l0 = backup_with(cat, [b"/"], level=0, started=100.0)
    c = cat.begin_backup(host="nas", volume="/vol", butype="tar", level=0, started=200.0, kind="copy",
                         destination="nas2:/copy")
    cat.finish_backup(c.id, "done", dump_date="42")
    inc = cat.begin_backup(host="nas", volume="/vol", butype="tar", level=1, started=300.0, kind="copy",
                           destination="nas2:/copy", base_token="42", base_backup=c.id)
    cat.finish_backup(inc.id, "done")
    got = cat.get(inc.id)
    assert (got.kind, got.destination, got.base_token, got.base_backup) == ("copy", "nas2:/copy", "42", c.id)
    assert [b.id for b in cat.chain("nas", "/vol")] == [l0]
    assert cat.newest_done("nas", "/vol").id == l0
    assert cat.newest_done("nas", "/vol", kind="copy", destination="nas2:/copy").id == inc.id
    assert cat.newest_done("nas", "/vol", kind="copy", destination="nas2:/copy", below_level=1).id == c.id
    assert cat.newest_done("nas", "/vol", kind="copy", destination="nas3:/copy") is None


def test_a_version_1_catalog_is_migrated_keeping_its_backups(tmp_path):
    from ndmpd.dma import catalog_sqlite
    path = tmp_path / "catalog.db"
    conn = catalog_sqlite.connect(path)
    conn.executescript(catalog_sqlite._MIGRATIONS[1] + "PRAGMA user_version = 1;")
    conn.execute("INSERT INTO backups (id, host, volume, butype, level, started, status) "
                 "VALUES ('0badcafe', 'nas', '/vol', 'tar', 0, 1.0, 'done')")
    conn.close()
    with open_catalog(path) as c:
        old = c.get("0badcafe")
        assert (old.kind, old.destination, old.base_backup) == ("backup", None, None)
        assert [b.id for b in c.chain("nas", "/vol")] == ["0badcafe"]
