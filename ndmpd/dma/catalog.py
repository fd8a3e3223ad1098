"""The DMA's catalog: what was backed up, where it lies on media, and which files it holds.

Jobs and commands talk to the :class:`Catalog` interface only, so a server database can be
added later beside :class:`~ndmpd.dma.catalog_sqlite.SqliteCatalog` (the default, at
:func:`default_path`). File history reaches it through
:class:`~ndmpd.dma.catalog_history.HistoryRecorder`, which writes in batches off the
control path.

Paths are bytes, as NDMP carries them (a name is any bytes but ``/`` and NUL): stored as
BLOBs, relative to the backed-up volume with a leading ``/`` (the volume itself is ``/``).
Commands take ``str`` paths and globs and encode them with ``os.fsencode`` (UTF-8,
surrogateescape), so a name that is not UTF-8 round-trips.

A **reusable** medium is a cartridge (by barcode) that ``prune`` freed: every backup with a
part on it was removed, so nothing the catalog still knows needs what it holds. Prune marks
it (``mark_reusable``); a spanning backup may then overwrite it, and writing a new part on
it takes it out of :meth:`Catalog.reusable_media` again (``media_in_use`` wins).

Example::

    with open_catalog() as cat:
        b = cat.begin_backup(host="nas1", volume="/vol", butype="tar", level=0)
        with cat.history(b.id) as fh:              # fed from the client's FH_* posts
            fh.post(C.FH_ADD_FILE, body)
        cat.finish_backup(b.id, "done", bytes=image_bytes, env=env)
        for e in cat.ls(b.id, "/"):
            print(e.path, e.size)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .catalog_history import HistoryRecorder
    from .catalog_replication import Replica, Replication, ReplicaUpdate

STATUSES = ("running", "done", "failed", "interrupted")
KINDS = ("backup", "copy")          # to media, or data to data (``ndmp copy``) into a directory


class CatalogError(Exception):
    """A catalog request that cannot be answered (the message says why, for one clear line)."""


class UnknownBackup(CatalogError):
    """No backup has this id or id prefix."""


class AmbiguousBackup(CatalogError):
    """Several backups start with this id prefix (``candidates`` lists them)."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        super().__init__(f"backup id {prefix!r} is ambiguous: {', '.join(candidates)}")
        self.candidates = candidates


@dataclass(slots=True)
class Media:
    """Where (part of) a backup's image lies: one tape file, or its byte range on a cartridge."""

    label: str | None = None
    barcode: str | None = None
    slot: int | None = None
    file_number: int | None = None
    first_byte: int = 0             # image offset of this part's first byte
    last_byte: int | None = None    # image offset one past this part's last byte; None: to the end
    library: str | None = None      # ``HOST:CHANGER`` of the library the cartridge was loaded from
    drive: str | None = None        # ``HOST:DRIVE`` it was written in (where a restore reads it by default)


@dataclass(slots=True)
class Backup:
    """One backup as the catalog knows it (times are Unix seconds)."""

    id: str
    host: str
    volume: str
    butype: str
    level: int
    started: float
    status: str = "running"
    ended: float | None = None
    bytes: int = 0
    base_token: str | None = None   # what an incremental is based on (e.g. BASE_DATE)
    dump_date: str | None = None    # what the server returned for the next incremental (DUMP_DATE)
    env: dict[str, str] = field(default_factory=dict)
    halt_reason: str | None = None
    entries: int = 0
    media: list[Media] = field(default_factory=list)
    kind: str = "backup"            # "copy": data to data, no media; ``destination`` says where
    destination: str | None = None  # a copy's HOST:DIR
    base_backup: str | None = None  # the id of the backup an incremental is based on


@dataclass(slots=True)
class FileEntry:
    """One file of a backup's history."""

    backup: str
    path: bytes
    inode: int | None
    size: int | None
    mode: int | None                # st_mode: the type bits and the permissions
    mtime: int | None
    fh_info: int | None             # the server's offset for DAR


class Catalog(Protocol):
    """What jobs and commands need from a catalog."""

    def begin_backup(self, *, host: str, volume: str, butype: str, level: int,
                     base_token: str | None = None, started: float | None = None, kind: str = "backup",
                     destination: str | None = None, base_backup: str | None = None) -> Backup: ...

    def finish_backup(self, backup_id: str, status: str, *, bytes: int | None = None,
                      env: dict[str, str] | None = None, dump_date: str | None = None,
                      halt_reason: str | None = None, ended: float | None = None) -> Backup: ...

    def add_media(self, backup_id: str, media: Media) -> None: ...

    def history(self, backup_id: str) -> HistoryRecorder: ...

    def get(self, backup_id: str) -> Backup: ...

    def backups(self, volume: str | None = None, host: str | None = None) -> list[Backup]: ...

    def ls(self, backup_id: str, path: str | bytes = "/") -> list[FileEntry]: ...

    def lookup(self, backup_id: str, path: str | bytes) -> FileEntry | None: ...

    def entries(self, backup_id: str) -> Iterable[FileEntry]: ...

    def find(self, glob: str | bytes, limit: int | None = None) -> list[FileEntry]: ...

    def chain(self, host: str, volume: str, as_of: float | None = None) -> list[Backup]: ...

    def newest_done(self, host: str, volume: str, *, below_level: int | None = None, kind: str = "backup",
                    destination: str | None = None) -> Backup | None: ...

    def prune(self, *, keep_last: int | None = None, older_than: float | None = None,
              now: float | None = None) -> list[Backup]: ...

    def media_in_use(self) -> set[str]: ...

    def mark_reusable(self, barcodes: Iterable[str], since: float | None = None) -> None: ...

    def reusable_media(self) -> set[str]: ...

    # ndmp replicate (catalog_replication.py)

    def create_replication(self, name: str, *, master_host: str, master_volume: str, master_id: str,
                           butype: str, replicas: list[tuple[str, str]], created: float | None = None
                           ) -> Replication: ...

    def replication(self, name: str) -> Replication: ...

    def replications(self) -> list[Replication]: ...

    def set_replication_state(self, name: str, state: str) -> None: ...

    def record_replica_update(self, name: str, host: str, volume: str, *, started: float, ended: float,
                              outcome: str, bytes: int | None = None, base_id: str | None = None,
                              state_id: str | None = None, state_time: float | None = None,
                              error: str | None = None) -> Replica: ...

    def replica_updates(self, name: str, host: str | None = None, volume: str | None = None,
                        limit: int | None = None) -> list[ReplicaUpdate]: ...

    def reverse_replication(self, name: str, *, new_master_host: str, new_master_volume: str,
                            new_master_id: str, state_id: str | None, state_time: float | None
                            ) -> Replication: ...

    def close(self) -> None: ...


def media_dict(m: Media) -> dict:
    """A media row for ``--json``: label and file_number always; barcode, slot and the byte
    range when a library wrote it."""
    out = {"label": m.label, "file_number": m.file_number}
    if m.barcode is not None:
        out.update(barcode=m.barcode, slot=m.slot, first_byte=m.first_byte, last_byte=m.last_byte)
        if m.library is not None:
            out.update(library=m.library, drive=m.drive)
    return out


def default_path() -> Path:
    """``$XDG_DATA_HOME/ndmp/catalog.db``, else ``~/.local/share/ndmp/catalog.db``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "ndmp" / "catalog.db"


def open_catalog(path: str | os.PathLike | None = None) -> "Catalog":
    """The SQLite catalog at ``path`` (or :func:`default_path`), created on first use."""
    from .catalog_sqlite import SqliteCatalog
    return SqliteCatalog(Path(path) if path is not None else default_path())


def as_path(path: str | bytes) -> bytes:
    """A user's path as the catalog stores it: bytes, one leading ``/``, no trailing ``/``."""
    raw = os.fsencode(path)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    return b"/" + b"/".join(parts)


def split_path(path: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of a stored path; the root is (b"", b"")."""
    if path == b"/":
        return b"", b""
    parent, _, name = path.rpartition(b"/")
    return parent or b"/", name


def join_path(parent: bytes, name: bytes) -> bytes:
    """The inverse of :func:`split_path`."""
    if not parent:
        return b"/"
    return (parent if parent != b"/" else b"") + b"/" + name
