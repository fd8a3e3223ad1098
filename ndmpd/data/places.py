"""Where a restore may write: only inside configured volumes.

A DMA names a destination as a host path (``/srv/data/restore``, which must lie under some
volume's ``path``) or as a path under a volume's name (``/export/data/restore`` for a volume
named ``/export/data``). Both become (volume, path relative to the volume's root); the
restore engine then confines every write to that volume root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import Volume
from ..engine.select import clean_path
from .env import volume_list


class PlaceError(ValueError):
    """A destination outside every volume."""


@dataclass(frozen=True)
class Place:
    volume: Volume
    relative: bytes                 # below the volume root; b"" is the root itself

    @property
    def root(self) -> bytes:
        return os.fsencode(str(self.volume.path))


def _under(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` when it lies inside it (purely textual, ``..`` refused)."""
    root = root.rstrip("/") or "/"
    if path == root:
        return ""
    prefix = root if root.endswith("/") else root + "/"
    if path.startswith(prefix):
        return path[len(prefix):]
    return None


def resolve(destination: str, volumes: tuple[Volume, ...]) -> Place:
    """The volume and relative path a destination names; raises PlaceError otherwise."""
    if ".." in destination.split("/"):
        raise PlaceError(f"destination {destination!r} contains '..'")
    normal = "/" + clean_path(os.fsencode(destination)).decode("utf-8", "surrogateescape") \
        if destination.startswith("/") else destination
    best: tuple[int, Place] | None = None
    for volume in volumes:
        for root in {str(volume.path), str(Path(volume.path).resolve())}:
            rest = _under(normal, root)
            if rest is not None and (best is None or len(root) > best[0]):
                best = (len(root), Place(volume, clean_path(os.fsencode(rest))))
    if best is not None:
        return best[1]
    for volume in volumes:
        name = "/" + volume.name.strip("/") if destination.startswith("/") else volume.name.strip("/")
        rest = _under(normal, name)
        if rest is not None:
            return Place(volume, clean_path(os.fsencode(rest)))
    raise PlaceError(f"restores may only write inside a configured volume; {destination!r} is not "
                     f"inside any of: {volume_list(volumes)}")
