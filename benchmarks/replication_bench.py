#!/usr/bin/env python3
"""Replication lag and bytes per update against tree size, for both paths of ``ndmp replicate``.

For each path and tree size: two real ndmpd servers on loopback, a master volume of N files
(tests/replication_load.py's tree), an initial ``ndmp replicate run --once``, then
``ndmp replicate run --every 2s`` while a writer makes RATE changes per second (creates,
overwrites, appends, renames, deletes, chmod, xattrs, new directories, pair swaps) for SECONDS;
the lag is sampled from ``ndmp replicate status --json`` every 0.5 s and each update's bytes
(``last_bytes``) recorded. Paths:

    btrfs   master volume = a btrfs subvolume (butype btrfs: btrfs send -p the last held snapshot)
    dump    master volume = a tmpfs (butype dump: the engine's lean token incrementals, a tree walk)
    journal the same with ``journal = true``: the fanotify change journal names the changed
            directories, so the dump walks only those

The replica is a ``replica = true`` volume on its own btrfs in both cases. Needs root
(loop devices, mounts) and btrfs-progs; images go to --dir, or /dev/shm when that disk is full.

    python benchmarks/replication_bench.py [--sizes 10000,100000] [--huge] [--paths btrfs,dump,journal]
                                           [--seconds 60] [--rate 100] [--every 2s] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop.conftest import PASSWORD, servers                     # noqa: E402
from tests.replication_load import build_tree                            # noqa: E402
from tests.replication_rig import LoadResult, loop_btrfs, run_load, sh, tmpfs   # noqa: E402

VOLUME = '\n[[volume]]\nname = "{name}"\npath = "{path}"\n{more}'


def one_run(work: Path, path: str, files: int, seconds: float, rate: float, every: str) -> LoadResult:
    """One path at one size, in ``work`` (removed by the caller)."""
    room = max(1 << 30, files * 3000)
    with contextlib.ExitStack() as stack:
        replica_mnt = stack.enter_context(loop_btrfs(work, "replica-fs", size=max(4 << 30, room * 4), room=room))
        (replica_mnt / "replica").mkdir()
        if path == "btrfs":
            master_mnt = stack.enter_context(loop_btrfs(work, "master-fs", size=max(4 << 30, room * 4), room=room))
            sh("btrfs", "subvolume", "create", master_mnt / "vol")
            master_path = master_mnt / "vol"
        else:
            master_path = stack.enter_context(tmpfs(work / "master-tmpfs", size=f"{max(2, room * 2 >> 30)}g"))
        tree = build_tree(master_path, files)
        master, replica = stack.enter_context(servers(work, "m", "r", extra={
            "m": VOLUME.format(name="/export/master", path=master_path,
                               more="journal = true\n" if path == "journal" else ""),
            "r": VOLUME.format(name="/export/replica", path=replica_mnt / "replica", more="replica = true\n")}))
        return run_load(name=f"bench-{path}", master=f"ndmp@{master.host}:10000:/export/master",
                        replica=f"ndmp@{replica.host}:10000:/export/replica", password=PASSWORD,
                        home=work / "home", tree=tree, replica_path=replica_mnt / "replica", pinner=None,
                        seconds=seconds, rate=rate, every=every)


def row(path: str, files: int, result: LoadResult) -> str:
    sizes = sorted(result.lag.updates.values())
    per_update = f"{statistics.median(sizes) / 1024:,.0f} KiB" if sizes else "-"
    lag = result.lag
    return (f"{path:<7} {files:>10,} {result.initial_seconds:>9.1f} {lag.p50:>7.2f} {lag.p95:>7.2f} {lag.max:>7.2f} "
            f"{per_update:>12} {len(sizes):>8} {result.writer.rate:>8.1f}"
            + ("" if not result.final_differences else "  NOT IDENTICAL at the end"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="tree sizes, comma-separated")
    parser.add_argument("--huge", action="store_true", help="add 1,000,000 files (outside CI: minutes, GBs of RAM)")
    parser.add_argument("--paths", default="btrfs,dump,journal", help="btrfs, dump and/or journal")
    parser.add_argument("--seconds", type=float, default=60, help="writer duration per run")
    parser.add_argument("--rate", type=float, default=100, help="changes per second")
    parser.add_argument("--every", default="2s", help="replicate run --every")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([1_000_000] if args.huge else [])
    paths = [p for p in args.paths.split(",") if p]
    if set(paths) - {"btrfs", "dump", "journal"}:
        parser.error("--paths takes btrfs, dump and/or journal")
    print(f"{args.rate:g} changes/s for {args.seconds:g} s per run, replicate run --every {args.every}")
    print(f"{'path':<7} {'files':>10} {'initial s':>9} {'p50 s':>7} {'p95 s':>7} {'max s':>7} "
          f"{'bytes/update':>12} {'updates':>8} {'writes/s':>8}")
    failed = False
    for path in paths:
        for files in sizes:
            with tempfile.TemporaryDirectory(dir=args.dir, prefix="replication-bench-") as work:
                try:
                    result = one_run(Path(work), path, files, args.seconds, args.rate, args.every)
                except (RuntimeError, OSError) as e:
                    print(f"{path:<7} {files:>10,}  failed: {e}")
                    failed = True
                    continue
            print(row(path, files, result), flush=True)
            failed |= bool(result.final_differences)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
