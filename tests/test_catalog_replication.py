"""The catalog's replication record (schema 5): a schema-4 catalog migrates keeping its
backups, and create / record / reverse / delete keep what ``ndmp replicate status`` shows."""

from __future__ import annotations

import pytest

from ndmpd.dma.catalog import CatalogError, open_catalog
from ndmpd.dma.catalog_replication import ReplicationExists, UnknownReplication, hold_name
from ndmpd.dma.catalog_sqlite import _MIGRATIONS, SCHEMA_VERSION, connect


def make(cat, name="web", replicas=(("r1", "rep"), ("r2", "rep"))):
    return cat.create_replication(name, master_host="m", master_volume="vol", master_id="btrfs:u-1",
                                  butype="btrfs", replicas=list(replicas), created=100.0)


def test_a_schema_4_catalog_migrates_to_5_keeping_its_backups(tmp_path):
    path = tmp_path / "catalog.db"
    conn = connect(path)
    for version in range(1, 5):
        conn.executescript(_MIGRATIONS[version])
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO backups (id, host, volume, butype, level, started, status, kind, destination) "
                 "VALUES ('c0ffee00', 'nas', '/v', 'tar', 0, 1.0, 'done', 'copy', 'nas2:/d')")
    conn.close()
    with open_catalog(path) as c:
        assert c.get("c0ffee00").destination == "nas2:/d"
        assert c.replications() == []
        make(c)
        assert [r.name for r in c.replications()] == ["web"]
    conn = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()


def test_create_gives_each_replica_a_stable_hold_and_refuses_a_second_of_one_name(tmp_path):
    with open_catalog(tmp_path / "c.db") as c:
        rep = make(c)
        assert rep.master == "m:vol" and rep.state == "active" and rep.butype == "btrfs"
        assert [(r.target, r.hold) for r in rep.replicas] == [("r1:rep", "ndmp-web-0"), ("r2:rep", "ndmp-web-1")]
        assert all(r.state_id is None and r.lag() is None for r in rep.replicas)
        with pytest.raises(ReplicationExists, match="already exists"):
            make(c)
        with pytest.raises(CatalogError, match="none may be the master"):
            make(c, "other", [("m", "vol")])
        with pytest.raises(CatalogError, match="named once"):
            make(c, "other", [("r1", "rep"), ("r1", "rep")])
        with pytest.raises(CatalogError, match="replication name"):
            make(c, "bad name/")
        with pytest.raises(UnknownReplication):
            c.replication("nope")
    assert hold_name("web", 3) == "ndmp-web-3"


def test_a_done_update_moves_the_state_a_failed_one_keeps_it_and_says_why(tmp_path):
    with open_catalog(tmp_path / "c.db") as c:
        make(c)
        r = c.record_replica_update("web", "r1", "rep", started=200.0, ended=201.5, outcome="done", bytes=4096,
                                    base_id=None, state_id="s-1", state_time=199.0)
        assert (r.state_id, r.state_time, r.last_bytes, r.last_seconds, r.updates, r.failures) == \
            ("s-1", 199.0, 4096, 1.5, 1, 0)
        assert r.lag(now=205.0) == 6.0
        r = c.record_replica_update("web", "r1", "rep", started=210.0, ended=211.0, outcome="failed",
                                    base_id="s-1", error="connection refused")
        assert (r.state_id, r.last_error, r.updates, r.failures, r.last_bytes) == \
            ("s-1", "connection refused", 1, 1, 4096)
        r = c.record_replica_update("web", "r1", "rep", started=220.0, ended=220.2, outcome="done", bytes=10,
                                    base_id="s-1", state_id="s-2", state_time=219.9)
        assert (r.state_id, r.last_error, r.updates) == ("s-2", None, 2)
        other = c.replication("web").replica("r2:rep")
        assert other.updates == 0 and other.state_id is None
        history = c.replica_updates("web", "r1", "rep")
        assert [(u.outcome, u.base_id, u.state_id) for u in history] == \
            [("done", "s-1", "s-2"), ("failed", "s-1", None), ("done", None, "s-1")]
        assert len(c.replica_updates("web", limit=1)) == 1


def test_reverse_makes_the_promoted_replica_the_master_and_delete_forgets(tmp_path):
    with open_catalog(tmp_path / "c.db") as c:
        make(c)
        c.set_replication_state("web", "promoted")
        rep = c.reverse_replication("web", new_master_host="r1", new_master_volume="rep",
                                    new_master_id="btrfs:u-2", state_id="s-9", state_time=300.0)
        assert (rep.master, rep.master_id, rep.state) == ("r1:rep", "btrfs:u-2", "active")
        [back] = rep.replicas
        assert (back.target, back.hold, back.state_id, back.demote) == ("m:vol", "ndmp-web-0", "s-9", True)
        back = c.record_replica_update("web", "m", "vol", started=1.0, ended=2.0, outcome="done",
                                       state_id="s-10", state_time=1.0)
        assert not back.demote
        c.set_replication_state("web", "deleted")
        assert c.replications() == []
        with pytest.raises(UnknownReplication):
            c.replication("web")
        make(c)                                  # the name is free again
