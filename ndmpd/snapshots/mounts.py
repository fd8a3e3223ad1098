"""Which mount a path lives on (from /proc/self/mountinfo)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    point: str          # where it is mounted
    fstype: str
    source: str         # the device (or what the file system calls its source)
    device: tuple[int, int]
    root: str           # the part of the file system mounted there


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    found = []
    with open(mountinfo) as table:
        for line in table:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            major, minor = (int(n) for n in fields[2].split(":"))
            found.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1]), (major, minor),
                               _unescape(fields[3])))
    return found


def mount_of(path: str | os.PathLike, table: list[Mount] | None = None) -> Mount:
    """The innermost mount holding ``path``."""
    real = os.path.realpath(path)
    best = None
    for mount in table if table is not None else mounts():
        point = mount.point.rstrip("/") or "/"
        if real == point or real.startswith(point.rstrip("/") + "/") or point == "/":
            if best is None or len(point) >= len(best.point.rstrip("/") or "/"):
                best = mount
    if best is None:
        raise FileNotFoundError(f"no mount holds {path}")
    return best
