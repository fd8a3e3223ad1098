"""What incrementals are measured against: the dump-dates record and dump-date tokens.

Like dump(8)'s /etc/dumpdates, the state directory keeps, per volume and level, the date
of the last dump made with UPDATE; a level-N dump takes everything changed since the most
recent dump of a lower level (any number of levels: no cap at 9). A token (NDMP's
DUMP_DATE out, BASE_DATE in) is that date in nanoseconds. Each recorded dump also keeps
its directory index (inode -> path, and each directory's stamp: dirid.py), so the next
incremental can tell a new directory, whose contents must all go into the incremental, and a
renamed one, which a rename record moves (renames.py), from one that only changed; the stamp
keeps a new directory that got a deleted one's inode number from passing for it.

An index file ``DATE.idx2`` is a run of entries (inode, stamp, path length, path). One written
before stamps, ``DATE.idx`` (inode, path length, path), is still read, with no stamps: its
directories compare by number alone, as they did. (A new name, so that an older ndmpd finds
no index rather than misreading one: it then takes renamed directories whole, by ctime.)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import dirid

_INDEX_ENTRY = struct.Struct("<QI")             # .idx: inode, path length; then the path
_INDEX_ENTRY_2 = struct.Struct("<QBqI")         # .idx2: inode, stamp kind (0: none), stamp value, length
_KEEP_INDEXES = 32


@dataclass(frozen=True)
class Base:
    """What an incremental dump is taken against."""

    level: int
    since_ns: int | None                   # None: a full dump
    known_dirs: dict[int, bytes] | None    # None: no index (renamed directories dumped whole by ctime)
    note: str = ""                         # why, for the log
    known_stamps: dict[int, int] | None = None   # dir inode -> its stamp at the base (dirid.py)


def parse_token(token: str) -> int:
    """A BASE_DATE/DUMP_DATE token as nanoseconds (plain seconds are accepted too)."""
    value = int(token.strip(), 0)
    if value < 0:
        raise ValueError("negative dump date")
    return value * 1_000_000_000 if value < 10 ** 12 else value


def make_token(date_ns: int) -> str:
    return str(date_ns)


class DumpDates:
    """The dump-dates record and directory indexes under a state directory."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "dumpdates.json"
        self.index_dir = self.dir / "dirindex"
        self.holds_path = self.dir / "holds.json"       # {key: {hold name: [dates]}}

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "dumpdates.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text()) if self.path.exists() else {}
            except (OSError, ValueError):
                data = {}
            yield data

    def levels(self, key: str) -> dict[int, int]:
        """level -> date (ns) of the last recorded dump of each level for ``key``."""
        with self._locked() as data:
            return {int(level): int(date) for level, date in data.get(key, {}).items()}

    def base_for(self, key: str, level: int) -> Base:
        """The base of a level-``level`` dump of ``key``: the latest recorded lower level."""
        if level <= 0:
            return Base(0, None, None, "level 0: full dump")
        lower = [(date, lvl) for lvl, date in self.levels(key).items() if lvl < level]
        if not lower:
            return Base(level, None, None,
                        f"no dump of a level below {level} is recorded for {key}; taking a full dump")
        date, base_level = max(lower)
        paths, stamps = self.load_stamped_index(key, date)
        return Base(level, date, paths, f"changes since the level {base_level} dump", stamps)

    def base_from_token(self, key: str, token: str, level: int = 1) -> Base:
        date = parse_token(token)
        paths, stamps = self.load_stamped_index(key, date)
        return Base(level, date, paths, f"changes since dump date {token}", stamps)

    def record(self, key: str, level: int, date_ns: int, dir_index: dict[int, bytes],
               stamps: dict[int, int] | None = None) -> int | None:
        """Remember a finished dump (UPDATE=y); higher levels stay (they no longer act as bases).
        Returns the date it replaced at that level (for :meth:`revert`)."""
        self.save_index(key, date_ns, dir_index, stamps)
        with self._locked() as data:
            previous = data.setdefault(key, {}).get(str(level))
            data[key][str(level)] = date_ns
            self._write(self.path, data)
            referenced = self._referenced(data, None, key)
        self._prune(key, referenced)
        return previous

    # -- holds: the bases a replica still needs ----------------------------------------------

    def hold(self, key: str, name: str, date_ns: int, dir_index: dict[int, bytes], base_ns: int | None,
             stamps: dict[int, int] | None = None) -> None:
        """Keep this dump's index under the hold ``name`` (a replica's relationship) with the
        base it was taken against, and drop every other date of that hold: like a btrfs hold,
        a hold keeps at most {the base the replica has acknowledged, the newest}. Held indexes
        outlive the usual pruning, and holds never touch the dump-dates record of levels."""
        self.save_index(key, date_ns, dir_index, stamps)
        with self._locked() as data:
            holds = self._holds()
            holds.setdefault(key, {})[name] = sorted({date_ns} | ({base_ns} if base_ns is not None else set()))
            self._write(self.holds_path, holds)
            referenced = self._referenced(data, holds, key)
        self._prune(key, referenced)

    def release(self, key: str, name: str) -> bool:
        """Forget the hold ``name`` (its indexes go with the next prune); False if there was none."""
        with self._locked() as data:
            holds = self._holds()
            found = holds.get(key, {}).pop(name, None) is not None
            if found:
                self._write(self.holds_path, holds)
            referenced = self._referenced(data, holds, key)
        self._prune(key, referenced)
        return found

    def unhold(self, key: str, name: str, date_ns: int) -> None:
        """Take ``date_ns`` back out of the hold (its image never reached the peer)."""
        with self._locked():
            holds = self._holds()
            dates = holds.get(key, {}).get(name)
            if dates and date_ns in dates:
                dates.remove(date_ns)
                self._write(self.holds_path, holds)

    def held(self, key: str) -> dict[str, list[int]]:
        """hold name -> the dates it keeps, for ``key``."""
        with self._locked():
            return {name: list(dates) for name, dates in self._holds().get(key, {}).items()}

    def _holds(self) -> dict:
        try:
            return json.loads(self.holds_path.read_text()) if self.holds_path.exists() else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _write(path: Path, data: dict) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def _referenced(self, data: dict, holds: dict | None, key: str) -> set[int]:
        """Dates whose index must stay: the recorded levels' and every hold's."""
        holds = self._holds() if holds is None else holds
        return ({int(d) for d in data.get(key, {}).values()}
                | {int(d) for dates in holds.get(key, {}).values() for d in dates})

    def revert(self, key: str, level: int, date_ns: int, previous: int | None) -> None:
        """Take back :meth:`record` of ``date_ns`` (its image never reached the medium), unless
        a later dump has been recorded at that level since."""
        with self._locked() as data:
            dates = data.get(key, {})
            if dates.get(str(level)) != date_ns:
                return
            if previous is None:
                del dates[str(level)]
                if not dates:
                    del data[key]
            else:
                dates[str(level)] = previous
            self._write(self.path, data)

    # -- directory indexes ------------------------------------------------------------------

    def _index_path(self, key: str, date_ns: int, suffix: str = ".idx2") -> Path:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return self.index_dir / digest / f"{date_ns}{suffix}"

    def save_index(self, key: str, date_ns: int, dir_index: dict[int, bytes],
                   stamps: dict[int, int] | None = None) -> None:
        """Write the index with each directory's stamp (kind 0 where there is none)."""
        path = self._index_path(key, date_ns)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        stamps = stamps or {}
        pack, none = _INDEX_ENTRY_2.pack, (0, 0)
        with open(tmp, "wb") as out:
            for ino, rel in dir_index.items():
                stamp = stamps.get(ino)
                kind, value = dirid.split(stamp) if stamp is not None else none
                out.write(pack(ino, kind, value, len(rel)) + rel)
        os.replace(tmp, path)

    def load_index(self, key: str, date_ns: int) -> dict[int, bytes] | None:
        """The index's inode -> path; None when there is none."""
        return self.load_stamped_index(key, date_ns)[0]

    def load_stamped_index(self, key: str, date_ns: int) -> tuple[dict[int, bytes] | None,
                                                                  dict[int, int] | None]:
        """(inode -> path, inode -> stamp) of the index; the stamps None for an index written
        before them, both None when there is no index."""
        try:
            return _read_2(self._index_path(key, date_ns).read_bytes())
        except FileNotFoundError:
            pass
        except OSError:
            return None, None
        try:
            return _read_1(self._index_path(key, date_ns, ".idx").read_bytes()), None
        except OSError:
            return None, None

    def _prune(self, key: str, referenced: set[int]) -> None:
        folder = self._index_path(key, 0).parent
        files = {int(p.stem): p for suffix in ("*.idx", "*.idx2") for p in folder.glob(suffix)}
        for date in sorted(files, reverse=True)[_KEEP_INDEXES:]:
            if date not in referenced:
                files[date].unlink(missing_ok=True)


def _read_1(raw: bytes) -> dict[int, bytes]:
    """An index written before stamps: (inode, length, path) entries."""
    index, pos = {}, 0
    while pos + _INDEX_ENTRY.size <= len(raw):
        ino, length = _INDEX_ENTRY.unpack_from(raw, pos)
        pos += _INDEX_ENTRY.size
        index[ino] = raw[pos:pos + length]
        pos += length
    return index


def _read_2(raw: bytes) -> tuple[dict[int, bytes], dict[int, int]]:
    """An index with stamps: (inode, stamp kind, stamp value, length, path) entries."""
    index: dict[int, bytes] = {}
    stamps: dict[int, int] = {}
    pos = 0
    unpack, size, join = _INDEX_ENTRY_2.unpack_from, _INDEX_ENTRY_2.size, dirid.join
    while pos + size <= len(raw):
        ino, kind, value, length = unpack(raw, pos)
        pos += size
        index[ino] = raw[pos:pos + length]
        pos += length
        if kind:
            stamp = join(kind, value)
            if stamp is not None:
                stamps[ino] = stamp
    return index, stamps
