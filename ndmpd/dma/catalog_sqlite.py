"""The catalog in one SQLite file (stdlib ``sqlite3``, WAL: readers never wait for a backup).

File history rows are keyed (backup, dir, name) in a WITHOUT ROWID table, so ``ls`` and DAR
lookups are one index range, and ``find`` with a literal path head (``/home/alice/*``) one
range per backup; ``name`` has its own index, so ``find report*`` reads only that range. (An
index on ``dir`` alone would serve path heads too, but it halved the insert rate.) History is written by
:class:`~ndmpd.dma.catalog_history.HistoryRecorder` through :class:`SqliteFileWriter` on its
own connection, in a child process (:mod:`.catalog_writer`: the insert runs beside the DMA).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from .catalog import (KINDS, STATUSES, AmbiguousBackup, Backup, CatalogError, FileEntry, Media, UnknownBackup,
                      as_path, join_path, split_path)
from .catalog_glob import compile_glob
from .catalog_replication import MIGRATION as REPLICATION_MIGRATION, SqliteReplications
from .catalog_history import HistoryRecorder
from .catalog_writer import ProcessFileWriter

SCHEMA_VERSION = 5
BUSY_TIMEOUT_MS = 30_000
WRITER_CACHE_KIB = 128 * 1024

_MIGRATIONS = {
    1: """
CREATE TABLE backups (
    n           INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    host        TEXT NOT NULL,
    volume      TEXT NOT NULL,
    butype      TEXT NOT NULL,
    level       INTEGER NOT NULL,
    base_token  TEXT,
    dump_date   TEXT,
    env         TEXT NOT NULL DEFAULT '{}',
    started     REAL NOT NULL,
    ended       REAL,
    bytes       INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
    halt_reason TEXT,
    entries     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX backups_by_volume ON backups (host, volume, started);
CREATE TABLE media (
    backup      INTEGER NOT NULL REFERENCES backups (n) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    label       TEXT,
    barcode     TEXT,
    slot        INTEGER,
    file_number INTEGER,
    first_byte  INTEGER NOT NULL DEFAULT 0,
    last_byte   INTEGER,
    PRIMARY KEY (backup, seq)
);
CREATE TABLE files (
    backup      INTEGER NOT NULL REFERENCES backups (n) ON DELETE CASCADE,
    dir         BLOB NOT NULL,
    name        BLOB NOT NULL,
    inode       INTEGER,
    size        INTEGER,
    mode        INTEGER,
    mtime       INTEGER,
    fh_info     INTEGER,
    PRIMARY KEY (backup, dir, name)
) WITHOUT ROWID;
CREATE INDEX files_by_name ON files (name);
""",
    2: """
CREATE TABLE reusable_media (
    barcode     TEXT PRIMARY KEY,
    since       REAL NOT NULL
);
""",
    3: """
ALTER TABLE media ADD COLUMN library TEXT;
ALTER TABLE media ADD COLUMN drive TEXT;
""",
    # copies (data to data, no tape) beside backups; an incremental names the backup it is based on
    4: """
ALTER TABLE backups ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup' CHECK (kind IN ('backup', 'copy'));
ALTER TABLE backups ADD COLUMN destination TEXT;
ALTER TABLE backups ADD COLUMN base_backup TEXT;
""",
    # ndmp replicate: replications, their replicas and the history of updates (catalog_replication.py)
    5: REPLICATION_MIGRATION,
}

_BACKUP_COLUMNS = ("n, id, host, volume, butype, level, base_token, dump_date, env, started, ended, bytes, "
                   "status, halt_reason, entries, kind, destination, base_backup")


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the settings every user of the file needs (WAL, foreign keys, waits)."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, one ``user_version`` step per transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CatalogError(f"catalog schema {version} is newer than this ndmp ({SCHEMA_VERSION})")
    while version < SCHEMA_VERSION:
        version += 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] < version:   # not done by another process
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _next_after(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _range(column: str, prefix: bytes) -> tuple[str, list[bytes]]:
    after = _next_after(prefix)
    if after is None:
        return f"{column} >= ?", [prefix]
    return f"({column} >= ? AND {column} < ?)", [prefix, after]


class SqliteFileWriter:
    """Inserts one backup's history rows in big transactions (used from the recorder's thread)."""

    def __init__(self, path: Path, backup_n: int) -> None:
        self._path = path
        self._n = int(backup_n)
        self._conn: sqlite3.Connection | None = None

    def write(self, rows: list[tuple]) -> None:
        """Rows (dir, name, inode, size, mode, mtime, fh_info), all or none of them."""
        if self._conn is None:
            self._conn = connect(self._path)
            # index pages of a big backup stay in memory instead of being re-read (2x the rate)
            self._conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            # every row names this writer's own backup, which exists: checking that parent for
            # each row cost 15% of the insert rate (deleting a backup still cascades: its
            # connection has the checks on)
            self._conn.execute("PRAGMA foreign_keys = OFF")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(f"INSERT OR REPLACE INTO files VALUES ({self._n}, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("UPDATE backups SET entries = entries + ? WHERE n = ?", (len(rows), self._n))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Set the backup's entry count to the rows it holds (batches count re-sent entries too)."""
        if self._conn is not None:
            self._conn.execute("UPDATE backups SET entries = (SELECT count(*) FROM files WHERE backup = ?) "
                               "WHERE n = ?", (self._n, self._n))
            self._conn.close()
            self._conn = None


class SqliteCatalog(SqliteReplications):
    """:class:`~ndmpd.dma.catalog.Catalog` in a SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(path)
        migrate(self._conn)

    def __enter__(self) -> "SqliteCatalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------ backups

    def begin_backup(self, *, host: str, volume: str, butype: str, level: int,
                     base_token: str | None = None, started: float | None = None, kind: str = "backup",
                     destination: str | None = None, base_backup: str | None = None) -> Backup:
        """A new backup (``kind`` backup, or copy to ``destination``), status ``running``, with a
        fresh 8-character id; ``base_backup`` is the id of the backup an incremental builds on."""
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {KINDS}")
        started = time.time() if started is None else started
        for _ in range(100):
            short = secrets.token_hex(4)
            try:
                self._conn.execute(
                    "INSERT INTO backups (id, host, volume, butype, level, base_token, started, status, kind, "
                    "destination, base_backup) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                    (short, host, volume, butype, level, base_token, started, kind, destination, base_backup))
            except sqlite3.IntegrityError:
                continue                                  # an id already taken: draw again
            return self.get(short)
        raise CatalogError("could not draw a free backup id")

    def finish_backup(self, backup_id: str, status: str, *, bytes: int | None = None,
                      env: dict[str, str] | None = None, dump_date: str | None = None,
                      halt_reason: str | None = None, ended: float | None = None) -> Backup:
        """Record how a backup ended (``status``: done, failed or interrupted)."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        n = self._n(backup_id)
        self._conn.execute(
            "UPDATE backups SET status = ?, ended = ?, bytes = COALESCE(?, bytes), env = COALESCE(?, env), "
            "dump_date = COALESCE(?, dump_date), halt_reason = COALESCE(?, halt_reason) WHERE n = ?",
            (status, time.time() if ended is None else ended, bytes,
             json.dumps(env, sort_keys=True) if env is not None else None, dump_date, halt_reason, n))
        return self.get(backup_id)

    def add_media(self, backup_id: str, media: Media) -> None:
        """One more medium of a backup, after those already recorded."""
        n = self._n(backup_id)
        self._conn.execute(
            "INSERT INTO media (backup, seq, label, barcode, slot, file_number, first_byte, last_byte, library, "
            "drive) VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM media WHERE backup = ?), ?, ?, ?, ?, ?, ?, ?, ?)",
            (n, n, media.label, media.barcode, media.slot, media.file_number, media.first_byte, media.last_byte,
             media.library, media.drive))

    def history(self, backup_id: str) -> HistoryRecorder:
        """A recorder for this backup's FH_* posts (start it with ``with`` or :meth:`start`)."""
        return HistoryRecorder(ProcessFileWriter(self.path, self._n(backup_id)))

    def _n(self, backup_id: str) -> int:
        return self._resolve(backup_id)[0]

    def _resolve(self, backup_id: str) -> tuple[int, str]:
        """The row of a full id or a unique prefix of one."""
        prefix = backup_id.strip().lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise UnknownBackup(f"no backup {backup_id!r}")
        rows = self._conn.execute("SELECT n, id FROM backups WHERE id >= ? AND id < ? ORDER BY id LIMIT 10",
                                  (prefix, prefix + "g")).fetchall()
        if not rows:
            raise UnknownBackup(f"no backup {backup_id!r}")
        exact = [r for r in rows if r[1] == prefix]
        if exact:
            return exact[0]
        if len(rows) > 1:
            raise AmbiguousBackup(backup_id, [r[1] for r in rows])
        return rows[0]

    def _backup(self, row: tuple) -> Backup:
        (n, short, host, volume, butype, level, base, dump_date, env, started, ended, size, status, halt,
         entries, kind, destination, base_backup) = row
        media = [Media(*m) for m in self._conn.execute(
            "SELECT label, barcode, slot, file_number, first_byte, last_byte, library, drive FROM media WHERE backup = ? "
            "ORDER BY seq", (n,))]
        return Backup(short, host, volume, butype, level, started, status, ended, size, base, dump_date,
                      json.loads(env), halt, entries, media, kind, destination, base_backup)

    def get(self, backup_id: str) -> Backup:
        n = self._n(backup_id)
        return self._backup(self._conn.execute(f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE n = ?",
                                               (n,)).fetchone())

    def backups(self, volume: str | None = None, host: str | None = None) -> list[Backup]:
        """Backups, newest first, of one volume and/or host if given."""
        where, args = [], []
        if volume is not None:
            where.append("volume = ?")
            args.append(volume)
        if host is not None:
            where.append("host = ?")
            args.append(host)
        sql = f"SELECT {_BACKUP_COLUMNS} FROM backups"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._backup(r) for r in self._conn.execute(sql + " ORDER BY started DESC, n DESC", args)]

    # ------------------------------------------------------------ files

    def ls(self, backup_id: str, path: str | bytes = "/") -> list[FileEntry]:
        """The direct children of ``path`` in a backup, by name."""
        short = self._resolve(backup_id)
        directory = as_path(path)
        rows = self._conn.execute(
            "SELECT name, inode, size, mode, mtime, fh_info FROM files WHERE backup = ? AND dir = ? ORDER BY name",
            (short[0], directory))
        return [FileEntry(short[1], join_path(directory, name), *rest) for name, *rest in rows]

    def lookup(self, backup_id: str, path: str | bytes) -> FileEntry | None:
        """One path of a backup (its fh_info drives DAR), or None."""
        short = self._resolve(backup_id)
        stored = as_path(path)
        row = self._conn.execute(
            "SELECT inode, size, mode, mtime, fh_info FROM files WHERE backup = ? AND dir = ? AND name = ?",
            (short[0], *split_path(stored))).fetchone()
        return FileEntry(short[1], stored, *row) if row else None

    def find(self, glob: str | bytes, limit: int | None = None) -> list[FileEntry]:
        """Files matching ``glob`` (see :mod:`.catalog_glob`) in every backup, newest backup first."""
        g = compile_glob(glob)
        where, args = [], []
        if g.whole:
            parent, _, partial = g.head.rpartition(b"/")
            parent = parent or b"/"
            if g.head != b"/":                     # one primary-key range per backup
                in_parent, a1 = _range("f.name", partial)
                below, a2 = _range("f.dir", join_path(parent, partial))
                where.append(f"f.backup IN (SELECT n FROM backups) AND ((f.dir = ? AND {in_parent}) OR {below})")
                args += [parent, *a1, *a2]
            if g.name_head:
                clause, a = _range("f.name", g.name_head)
                where.append(clause)
                args += a
        elif g.head:
            clause, a = _range("f.name", g.head)
            where.append(clause)
            args += a
        if g.tail:
            where.append("substr(f.name, ?) = ?")
            args += [-len(g.tail), g.tail]
        if g.exact and g.head == os.fsencode(glob):  # no wildcard: one name
            where.append("f.name = ?")
            args.append(g.head)
        elif g.exact:
            where.append("length(f.name) >= ?")
            args.append(len(g.head) + len(g.tail))
        else:
            where.append("ndmp_glob(f.dir, f.name)")
        self._conn.create_function("ndmp_glob", 2, lambda d, name: g.matches(join_path(d, name), name),
                                   deterministic=True)
        sql = ("SELECT b.id, f.dir, f.name, f.inode, f.size, f.mode, f.mtime, f.fh_info FROM files f "
               "JOIN backups b ON b.n = f.backup WHERE " + " AND ".join(where) +
               " ORDER BY b.started DESC, b.n DESC, f.dir, f.name")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [FileEntry(short, join_path(d, name), *rest) for short, d, name, *rest in self._conn.execute(sql, args)]

    # ------------------------------------------------------------ chains and pruning

    def chain(self, host: str, volume: str, as_of: float | None = None) -> list[Backup]:
        """The backups a restore as of ``as_of`` (default now) applies, in order: the level 0,
        then each increment on top of the one before (a level-N backup is based on the newest
        earlier backup of a lower level). Only successful backups to media count (not copies)."""
        as_of = time.time() if as_of is None else as_of
        rows = self._conn.execute(
            f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE host = ? AND volume = ? AND status = 'done' "
            "AND kind = 'backup' AND started <= ? ORDER BY started DESC, n DESC", (host, volume, as_of)).fetchall()
        out: list[tuple] = []
        for row in rows:
            if not out or row[5] < out[-1][5]:
                out.append(row)
                if row[5] == 0:
                    break
        if not out or out[-1][5] != 0:
            raise CatalogError(f"no level-0 backup of {host}:{volume} at or before "
                               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(as_of))}")
        return [self._backup(r) for r in reversed(out)]

    def newest_done(self, host: str, volume: str, *, below_level: int | None = None, kind: str = "backup",
                    destination: str | None = None) -> Backup | None:
        """The newest successful backup (or copy to ``destination``) of host:volume, of a level
        below ``below_level`` if given: what an incremental is based on (dump(8) semantics)."""
        sql = (f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE host = ? AND volume = ? AND status = 'done' "
               "AND kind = ? AND destination IS ?")
        args: list = [host, volume, kind, destination]
        if below_level is not None:
            sql += " AND level < ?"
            args.append(below_level)
        row = self._conn.execute(sql + " ORDER BY started DESC, n DESC LIMIT 1", args).fetchone()
        return self._backup(row) if row else None

    def _chain_rows(self, done: list[tuple], index: int) -> set[int]:
        """The ``n`` of every backup the restore of ``done[index]`` needs (``done`` newest first)."""
        need, level = {done[index][0]}, done[index][5]
        for row in done[index + 1:]:
            if level == 0:
                break
            if row[5] < level:
                need.add(row[0])
                level = row[5]
        return need

    def prune(self, *, keep_last: int | None = None, older_than: float | None = None,
              now: float | None = None) -> list[Backup]:
        """Remove, per host and volume, the backups beyond the newest ``keep_last`` successful ones
        and/or those started more than ``older_than`` seconds ago; never a running backup, nor
        one a kept backup's chain needs. Returns what was removed (with its media, to reuse)."""
        if keep_last is None and older_than is None:
            raise ValueError("prune needs keep_last or older_than")
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        now = time.time() if now is None else now
        removed: list[Backup] = []
        chains = self._conn.execute("SELECT DISTINCT host, volume, kind, destination FROM backups").fetchall()
        for host, volume, kind, destination in chains:        # copies to each place are a chain of their own
            rows = self._conn.execute(
                f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE host = ? AND volume = ? AND kind = ? "
                "AND destination IS ? ORDER BY started DESC, n DESC", (host, volume, kind, destination)).fetchall()
            done = [r for r in rows if r[12] == "done"]
            keep: set[int] = set()
            for i, row in enumerate(done):
                too_many = keep_last is not None and i >= keep_last
                too_old = older_than is not None and row[9] < now - older_than
                if not (too_many or too_old):
                    keep |= self._chain_rows(done, i)
            newest_kept = max((r[9] for r in rows if r[0] in keep), default=None)
            for row in rows:
                if row[0] in keep or row[12] == "running":
                    continue
                if row[12] != "done":            # failed or interrupted: go with the backups around them
                    too_old = older_than is not None and row[9] < now - older_than
                    if not (too_old or (keep_last is not None and newest_kept is not None
                                        and row[9] < newest_kept)):
                        continue
                removed.append(self._backup(row))
        if removed:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("DELETE FROM backups WHERE id = ?", [(b.id,) for b in removed])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return removed

    # ------------------------------------------------------------ media reuse

    def media_in_use(self) -> set[str]:
        """The barcode (else label) of every medium a backup still in the catalog has a part on."""
        return {name for (name,) in self._conn.execute(
            "SELECT DISTINCT COALESCE(barcode, label) FROM media WHERE COALESCE(barcode, label) IS NOT NULL")}

    def mark_reusable(self, barcodes: Iterable[str], since: float | None = None) -> None:
        """Remember that these cartridges hold only pruned backups: a job may overwrite them."""
        when = time.time() if since is None else since
        self._conn.executemany("INSERT OR REPLACE INTO reusable_media VALUES (?, ?)",
                               [(b, when) for b in barcodes])

    def reusable_media(self) -> set[str]:
        """The cartridges marked reusable and not written to since (no backup has a part on them)."""
        return {b for (b,) in self._conn.execute("SELECT barcode FROM reusable_media")} - self.media_in_use()

    def entries(self, backup_id: str) -> Iterable[FileEntry]:
        """Every file of a backup, by path (a whole listing, for ``ls -R`` or a restore plan)."""
        short = self._resolve(backup_id)
        for d, name, *rest in self._conn.execute(
                "SELECT dir, name, inode, size, mode, mtime, fh_info FROM files WHERE backup = ? "
                "ORDER BY dir, name", (short[0],)):
            yield FileEntry(short[1], join_path(d, name), *rest)
