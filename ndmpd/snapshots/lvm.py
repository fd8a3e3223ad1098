"""LVM: a snapshot of the logical volume a volume lives on, mounted read-only under the state dir.

Thin volumes get a thin snapshot (no size needed); classic ones a copy-on-write snapshot of
10% of the origin. Needs device-mapper (``/dev/mapper/control``) and the LVM tools; where
either is missing the snapshotter says so instead of failing half-way.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import Snapshot, SnapshotError, Snapshotter, job_tag, owner_alive
from .commands import find_tool, run
from .mounts import Mount, mount_of, mounts

PREFIX = "ndmpd-snap-"
DM_CONTROL = "/dev/mapper/control"


def lvm_available() -> str | None:
    """None when LVM snapshots can work here, else the reason they cannot."""
    if not os.path.exists(DM_CONTROL):
        return f"device-mapper is not available ({DM_CONTROL} is missing)"
    for tool in ("lvs", "lvcreate", "lvremove"):
        if find_tool(tool) is None:
            return f"the LVM tools are not installed ('{tool}' is missing)"
    return None


def logical_volume(mount: Mount) -> tuple[str, str, str] | None:
    """(vg, lv, segment type) of the LV under a mount, or None when it is not on LVM."""
    major, minor = mount.device
    try:
        with open(f"/sys/dev/block/{major}:{minor}/dm/uuid") as uuid:
            if not uuid.read().startswith("LVM-"):
                return None
    except OSError:
        return None
    out = run(["lvs", "--noheadings", "--separator", "|", "-o", "vg_name,lv_name,segtype",
               f"/dev/dm-{minor}"], "looking up the logical volume")
    vg, lv, segtype = (field.strip() for field in out.strip().split("|"))
    return vg, lv, segtype


class LvmSnapshotter(Snapshotter):
    mode = "lvm"

    def __init__(self, state_dir: Path) -> None:
        self.mount_dir = Path(state_dir) / "snapshots"

    def take(self, volume: Path) -> Snapshot:
        reason = lvm_available()
        if reason:
            raise SnapshotError(f"LVM snapshot of {volume}: {reason}")
        mount = mount_of(volume)
        found = logical_volume(mount)
        if found is None:
            raise SnapshotError(f"{volume} is not on an LVM logical volume (it is on {mount.source})")
        vg, lv, segtype = found
        name = PREFIX + job_tag()
        if segtype == "thin":
            run(["lvcreate", "-s", "-kn", "-n", name, f"{vg}/{lv}"], f"LVM snapshot of {volume}")
        else:
            run(["lvcreate", "-s", "-l", "10%ORIGIN", "-n", name, f"{vg}/{lv}"], f"LVM snapshot of {volume}")
        point = self.mount_dir / name
        snapshot = Snapshot(point / os.path.relpath(os.path.realpath(volume), mount.point), False, self,
                            f"{vg}/{name}")
        try:
            point.mkdir(parents=True, exist_ok=True)
            options = "ro,nouuid" if mount.fstype == "xfs" else "ro"
            run(["mount", "-t", mount.fstype, "-o", options, f"/dev/{vg}/{name}", str(point)],
                f"mounting the snapshot of {volume}")
        except BaseException:
            self.remove(snapshot)
            raise
        return snapshot

    def remove(self, snapshot: Snapshot) -> None:
        vg, name = snapshot.handle.split("/", 1)
        point = self.mount_dir / name
        if any(m.point == str(point) for m in mounts()):
            run(["umount", str(point)], f"unmounting snapshot {snapshot.handle}")
        if point.is_dir():
            point.rmdir()
        if os.path.exists(f"/dev/{vg}/{name}"):
            run(["lvremove", "-f", snapshot.handle], f"removing snapshot {snapshot.handle}")

    def remove_stale(self, volume: Path) -> list[str]:
        if lvm_available():
            return []
        out = run(["lvs", "--noheadings", "--separator", "|", "-o", "vg_name,lv_name"], "listing snapshots")
        removed = []
        for line in out.splitlines():
            if "|" not in line:
                continue
            vg, lv = (field.strip() for field in line.split("|"))
            if lv.startswith(PREFIX) and not owner_alive(lv[len(PREFIX):]):
                self.remove(Snapshot(self.mount_dir / lv, False, self, f"{vg}/{lv}"))
                removed.append(f"{vg}/{lv}")
        return removed
