"""Which level a backup or copy runs at, and which earlier one it is based on, from the catalog.

As dump(8) does: ``--level N`` (N > 0) builds on the newest successful backup of the same
host:volume with a level below N; ``--incremental`` is one level above the newest successful
backup (a level 0 when there is none). The base's DUMP_DATE token becomes the new backup's
BASE_DATE, so the server sends what changed since then. Copies are chains of their own, one
per destination: a copy builds only on an earlier copy to the same place.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import Backup, Catalog


class NoBase(Exception):
    """An incremental was asked for and the catalog has nothing to base it on (a usage error)."""


@dataclass(frozen=True)
class LevelPlan:
    level: int
    base: Backup | None = None      # the backup this one builds on (None: a level 0)
    note: str | None = None         # what the user should be told (e.g. "no base: a level 0")

    @property
    def base_token(self) -> str | None:
        """The BASE_DATE to send: the base's DUMP_DATE token."""
        return self.base.dump_date if self.base is not None else None


def plan_level(catalog: Catalog, host: str, volume: str, *, level: int | None, incremental: bool,
               kind: str = "backup", destination: str | None = None) -> LevelPlan:
    """The level and base for a new backup (or copy to ``destination``) of host:volume."""
    what = f"{host}:{volume}" + (f" to {destination}" if destination else "")
    noun = "copy" if kind == "copy" else "backup"
    if incremental:
        newest = catalog.newest_done(host, volume, kind=kind, destination=destination)
        if newest is None:
            return LevelPlan(0, None, f"no earlier {noun} of {what} in the catalog: this one is a level 0")
        return LevelPlan(newest.level + 1, newest)
    if not level:
        return LevelPlan(0)
    if level < 0:
        raise NoBase(f"--level {level}: a level is 0 or more")
    base = catalog.newest_done(host, volume, below_level=level, kind=kind, destination=destination)
    if base is None:
        raise NoBase(f"--level {level}: no successful {noun} of {what} below level {level} in the catalog "
                     f"to base it on (run a level 0 first)")
    return LevelPlan(level, base)
