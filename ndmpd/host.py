"""Facts about this host that CONFIG reports: identity, mounted filesystems, their usage."""

from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostIdentity:
    hostname: str
    os_type: str
    os_vers: str
    hostid: str


def host_identity() -> HostIdentity:
    """Hostname, kernel name and release, and a stable host id (from /etc/machine-id)."""
    uname = os.uname()
    try:
        hostid = Path("/etc/machine-id").read_text().strip()[:8]
    except OSError:
        hostid = ""
    if not hostid:
        hostid = f"{zlib.crc32(socket.gethostname().encode()):08x}"
    return HostIdentity(socket.gethostname(), uname.sysname, uname.release, hostid)


@dataclass(frozen=True)
class Mount:
    mount_point: Path
    fs_type: str
    device: str


@dataclass(frozen=True)
class FsUsage:
    total_size: int
    used_size: int
    avail_size: int
    total_inodes: int
    used_inodes: int


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_of(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> Mount | None:
    """The mount holding ``path`` (longest mount point that is a prefix of its real path)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        point = _unescape(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(str(best.mount_point))):
            best = Mount(Path(point), tail[0], _unescape(tail[1]))
    return best


def fs_usage(path: Path) -> FsUsage:
    """Space and inode figures from statvfs (raises OSError when the path is unavailable)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return FsUsage(total, used, st.f_bavail * st.f_frsize, st.f_files, st.f_files - st.f_ffree)
