"""Running the snapshot tools (btrfs-progs, LVM, mount) with errors that say what failed."""

from __future__ import annotations

import os

from .base import SnapshotError

TIMEOUT = 300


def find_tool(name: str) -> str | None:
    """Where a tool is, looking in the sbin directories too (LVM lives there; PATH may omit them)."""
    import shutil                 # here: a dump's start-up goes without it
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def run(argv: list[str], what: str) -> str:
    """Run a tool; its stdout, or SnapshotError carrying its stderr."""
    import subprocess               # here: a dump without a snapshot starts without it
    tool = find_tool(argv[0])
    if tool is None:
        raise SnapshotError(f"{what}: the '{argv[0]}' command is not installed")
    try:
        done = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"{what}: '{' '.join(argv)}' did not finish in {TIMEOUT} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise SnapshotError(f"{what}: {detail[-1] if detail else f'exit status {done.returncode}'}")
    return done.stdout
