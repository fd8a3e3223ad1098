"""The catalog's record of ``ndmp replicate``: replications (one master volume, its replicas)
and the history of their updates (schema 5 of :mod:`.catalog_sqlite`).

The record is what the DMA last saw, never the truth about a replica: an update always asks
the replica's server for its current state (``NDMPD_REPLICA_STATE``) and bases the stream on
that. The catalog keeps it for ``status`` (lag = now - ``state_time``, the master snapshot's
time) and for the base a reversed replication's first update must name.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field

from .catalog import CatalogError

REPLICATION_STATES = ("active", "promoted", "deleted")
OUTCOMES = ("done", "failed", "interrupted")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")          # ndmp-NAME-N must stay a valid hold name (80)

MIGRATION = """
CREATE TABLE replications (
    name          TEXT PRIMARY KEY,
    master_host   TEXT NOT NULL,
    master_volume TEXT NOT NULL,
    master_id     TEXT NOT NULL,
    butype        TEXT NOT NULL,
    created       REAL NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'promoted', 'deleted'))
);
CREATE TABLE replicas (
    replication   TEXT NOT NULL REFERENCES replications (name) ON DELETE CASCADE,
    host          TEXT NOT NULL,
    volume        TEXT NOT NULL,
    hold          TEXT NOT NULL,
    state_id      TEXT,
    state_time    REAL,
    last_start    REAL,
    last_end      REAL,
    last_bytes    INTEGER,
    last_seconds  REAL,
    last_error    TEXT,
    updates       INTEGER NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,
    demote        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (replication, host, volume)
);
CREATE TABLE replica_updates (
    replication   TEXT NOT NULL REFERENCES replications (name) ON DELETE CASCADE,
    host          TEXT NOT NULL,
    volume        TEXT NOT NULL,
    started       REAL NOT NULL,
    ended         REAL,
    bytes         INTEGER,
    base_id       TEXT,
    state_id      TEXT,
    outcome       TEXT NOT NULL CHECK (outcome IN ('done', 'failed', 'interrupted')),
    error         TEXT
);
CREATE INDEX replica_updates_by_replica ON replica_updates (replication, host, volume, started);
"""


class UnknownReplication(CatalogError):
    """No replication of this name (or it was deleted)."""


class ReplicationExists(CatalogError):
    """``create`` with a name already in use."""


@dataclass(slots=True)
class Replica:
    """One replica of a replication as the catalog last recorded it (times: Unix seconds)."""

    replication: str
    host: str
    volume: str
    hold: str                       # the master's hold keeping this replica's base snapshot
    state_id: str | None = None     # the master snapshot (UUID or dump token) it equals
    state_time: float | None = None  # when that snapshot was taken on the master
    last_start: float | None = None
    last_end: float | None = None
    last_bytes: int | None = None
    last_seconds: float | None = None
    last_error: str | None = None   # None once an update succeeds again
    updates: int = 0
    failures: int = 0
    demote: bool = False            # the next update must carry NDMPD_DEMOTE (after promote --reverse)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.volume}"

    def lag(self, now: float | None = None) -> float | None:
        """How far behind the master this replica is: now - the time of the snapshot it equals."""
        if self.state_time is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.state_time)


@dataclass(slots=True)
class Replication:
    """A master volume and its replicas."""

    name: str
    master_host: str
    master_volume: str
    master_id: str                  # the master's NDMPD_VOLUME_ID when created (or reversed)
    butype: str                     # btrfs or dump
    created: float
    state: str = "active"
    replicas: list[Replica] = field(default_factory=list)

    @property
    def master(self) -> str:
        return f"{self.master_host}:{self.master_volume}"

    def replica(self, target: str) -> Replica:
        """The replica ``HOST:VOLUME`` names (UnknownReplication otherwise)."""
        for r in self.replicas:
            if r.target == target:
                return r
        raise UnknownReplication(f"{target} is not a replica of {self.name} "
                                 f"(its replicas: {', '.join(r.target for r in self.replicas)})")


@dataclass(slots=True)
class ReplicaUpdate:
    """One update of one replica, done or not."""

    replication: str
    host: str
    volume: str
    started: float
    ended: float | None
    bytes: int | None
    base_id: str | None
    state_id: str | None
    outcome: str
    error: str | None


def hold_name(replication: str, index: int) -> str:
    """The master's hold for replica ``index`` (0-based, as created): stable for its life."""
    return f"ndmp-{replication}-{index}"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise CatalogError(f"replication name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
    return name


_REPLICA_COLUMNS = ("replication, host, volume, hold, state_id, state_time, last_start, last_end, last_bytes, "
                    "last_seconds, last_error, updates, failures, demote")


class SqliteReplications:
    """The replication half of :class:`~ndmpd.dma.catalog_sqlite.SqliteCatalog` (a mixin on
    its ``_conn``)."""

    _conn: sqlite3.Connection

    def _transaction(self, *statements: tuple[str, tuple]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                self._conn.execute(sql, args)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def create_replication(self, name: str, *, master_host: str, master_volume: str, master_id: str,
                           butype: str, replicas: list[tuple[str, str]], created: float | None = None
                           ) -> Replication:
        """A new active replication; ``replicas`` as (host, volume), each given its hold. A
        deleted one of the same name is replaced."""
        check_name(name)
        if not replicas:
            raise CatalogError("a replication needs at least one replica")
        targets = [(h, v) for h, v in replicas]
        if len(set(targets)) != len(targets) or (master_host, master_volume) in targets:
            raise CatalogError("each replica must be named once, and none may be the master")
        row = self._conn.execute("SELECT state FROM replications WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] != "deleted":
            raise ReplicationExists(f"replication {name!r} already exists (ndmp replicate delete {name} first)")
        statements = [("DELETE FROM replications WHERE name = ?", (name,)),
                      ("INSERT INTO replications VALUES (?, ?, ?, ?, ?, ?, 'active')",
                       (name, master_host, master_volume, master_id, butype,
                        time.time() if created is None else created))]
        statements += [("INSERT INTO replicas (replication, host, volume, hold) VALUES (?, ?, ?, ?)",
                        (name, host, volume, hold_name(name, i))) for i, (host, volume) in enumerate(targets)]
        self._transaction(*statements)
        return self.replication(name)

    def replication(self, name: str) -> Replication:
        """The replication ``name`` with its replicas (UnknownReplication if none or deleted)."""
        row = self._conn.execute("SELECT name, master_host, master_volume, master_id, butype, created, state "
                                 "FROM replications WHERE name = ? AND state != 'deleted'", (name,)).fetchone()
        if row is None:
            raise UnknownReplication(f"no replication {name!r}")
        replicas = [Replica(*r[:13], demote=bool(r[13])) for r in self._conn.execute(
            f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE replication = ? ORDER BY hold", (name,))]
        return Replication(*row, replicas=replicas)

    def replications(self) -> list[Replication]:
        """Every replication not deleted, by name."""
        return [self.replication(n) for (n,) in self._conn.execute(
            "SELECT name FROM replications WHERE state != 'deleted' ORDER BY name")]

    def set_replication_state(self, name: str, state: str) -> None:
        """active, promoted (cut over: no more updates) or deleted (forgotten, history kept)."""
        if state not in REPLICATION_STATES:
            raise ValueError(f"state {state!r} is not one of {REPLICATION_STATES}")
        self.replication(name)
        self._conn.execute("UPDATE replications SET state = ? WHERE name = ?", (state, name))

    def record_replica_update(self, name: str, host: str, volume: str, *, started: float, ended: float,
                              outcome: str, bytes: int | None = None, base_id: str | None = None,
                              state_id: str | None = None, state_time: float | None = None,
                              error: str | None = None) -> Replica:
        """One update's end: its history row, and the replica's record (its new state when done;
        the error and one more failure otherwise, the state untouched)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {OUTCOMES}")
        key = (name, host, volume)
        history = ("INSERT INTO replica_updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (*key, started, ended, bytes, base_id, state_id, outcome, error))
        if outcome == "done":
            update = ("UPDATE replicas SET state_id = ?, state_time = ?, last_start = ?, last_end = ?, "
                      "last_bytes = ?, last_seconds = ?, last_error = NULL, updates = updates + 1, demote = 0 "
                      "WHERE replication = ? AND host = ? AND volume = ?",
                      (state_id, state_time, started, ended, bytes, round(ended - started, 3), *key))
        else:
            update = ("UPDATE replicas SET last_start = ?, last_end = ?, last_error = ?, failures = failures + 1 "
                      "WHERE replication = ? AND host = ? AND volume = ?", (started, ended, error, *key))
        self._transaction(history, update)
        return self.replication(name).replica(f"{host}:{volume}")

    def replica_updates(self, name: str, host: str | None = None, volume: str | None = None,
                        limit: int | None = None) -> list[ReplicaUpdate]:
        """The update history of a replication (of one replica if given), newest first."""
        sql, args = ("SELECT replication, host, volume, started, ended, bytes, base_id, state_id, outcome, error "
                     "FROM replica_updates WHERE replication = ?"), [name]
        if host is not None:
            sql += " AND host = ? AND volume = ?"
            args += [host, volume]
        sql += " ORDER BY started DESC, rowid DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [ReplicaUpdate(*r) for r in self._conn.execute(sql, args)]

    def reverse_replication(self, name: str, *, new_master_host: str, new_master_volume: str,
                            new_master_id: str, state_id: str | None, state_time: float | None) -> Replication:
        """After ``promote --reverse``: the promoted replica is the master, the old master its one
        replica (at ``state_id``, its first update marked to demote it); other replicas leave
        the relationship (their data stays, read-only)."""
        old = self.replication(name)
        old.replica(f"{new_master_host}:{new_master_volume}")
        self._transaction(
            ("DELETE FROM replicas WHERE replication = ?", (name,)),
            ("UPDATE replications SET master_host = ?, master_volume = ?, master_id = ?, state = 'active' "
             "WHERE name = ?", (new_master_host, new_master_volume, new_master_id, name)),
            ("INSERT INTO replicas (replication, host, volume, hold, state_id, state_time, demote) "
             "VALUES (?, ?, ?, ?, ?, ?, 1)",
             (name, old.master_host, old.master_volume, hold_name(name, 0), state_id, state_time)))
        return self.replication(name)
