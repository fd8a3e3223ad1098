"""A level-1 dump after 100 of N files changed, against GNU tar's listed incremental, same run.

Builds (once, then reuses) a tree of N small files (0-4 KB, 500 per directory), takes a
level 0 of it with both tools (``tar -g SNAP``; ``ndmpd dump --level 0 --update`` with a
state directory of its own), changes 100 files spread over the tree, then over several
rounds, alternating the order, times

    ndmpd dump VOLUME --config CONF --level 1 | cat >/dev/null
    tar -g COPY-OF-SNAP -cf - -C TREE . | cat >/dev/null       (a fresh copy of the level-0 snapfile)

and prints the medians and their ratio, then each side's CPU seconds (user + system of the
command and its cat; steadier than wall-clock on a shared host). Neither run records anything, so every round
dumps the same changes. Target (issue 19): ratio <= 1.3 with a warm page cache; ``--cold``
drops the caches before every timed run (root), as a real backup window finds them.

    python benchmarks/incremental_bench.py [--dir /var/tmp/ndmpd-bench] [--files 100000] [--rounds 5] [--cold]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

NDMPD = [sys.executable, "-m", "ndmpd"]
TARGET = 1.3
CHANGED = 100
PER_DIR = 500


def build(root: Path, files: int) -> None:
    """N files of 0-4 KB, PER_DIR to a directory (once: a marker says it is complete)."""
    if (root / ".complete").exists():
        return
    rnd = random.Random(19)
    blob = os.urandom(1 << 16)
    for n in range(files):
        folder = root / f"d{n // PER_DIR:04d}"
        if n % PER_DIR == 0:
            folder.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(0, 4000)
        start = rnd.randint(0, len(blob) - size)
        (folder / f"f{n % PER_DIR:04d}").write_bytes(blob[start:start + size])
    (root / ".complete").touch()


def change(root: Path, files: int, count: int = CHANGED) -> None:
    """Append to ``count`` files spread evenly over the tree (their mtime and ctime move)."""
    step = max(files // count, 1)
    for n in range(0, min(files, step * count), step):
        with open(root / f"d{n // PER_DIR:04d}" / f"f{n % PER_DIR:04d}", "ab") as out:
            out.write(b"changed\n")


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as knob:
        knob.write("3\n")


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children so far (getrusage: microseconds, where
    os.times counts 10 ms ticks, a twentieth of a level 1)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_to_cat(argv: list[str], cwd: Path | None = None, cpu: list[float] | None = None) -> float:
    """Wall seconds of ``argv | cat >/dev/null`` (the stream through a pipe, as a backup reads
    it); the CPU seconds of both go to ``cpu``."""
    before = children_cpu()
    start = time.perf_counter()
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(argv, stdout=cat.stdin, stderr=subprocess.DEVNULL, cwd=cwd)
    cat.stdin.close()
    proc.wait()
    cat.wait()
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(children_cpu() - before)
    if proc.returncode not in (0, 1):          # tar says 1 for "file changed as we read it"
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {' '.join(argv)}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/ndmpd-bench"))
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every timed run (root)")
    parser.add_argument("--verbose", action="store_true", help="print every timed run")
    args = parser.parse_args()
    if args.cold and os.geteuid() != 0:
        raise SystemExit("--cold drops the page cache: run as root")
    base = args.dir / f"incremental-{args.files}"
    tree, work = base / "tree", base / "work"
    build(tree, args.files)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    config = work / "ndmpd.toml"
    config.write_text(f'[server]\nstate_dir = "{work / "state"}"\nauth = ["none"]\n\n'
                      f'[[volume]]\nname = "bench"\npath = "{tree}"\nsnapshot = "none"\n')
    snap0 = work / "tar.snar"
    subprocess.run(["tar", "-g", str(snap0), "-cf", "/dev/null", "-C", str(tree), "."], check=True)
    with open(os.devnull, "wb") as null:
        subprocess.run(NDMPD + ["dump", "bench", "--config", str(config), "--level", "0", "--update"],
                       stdout=null, stderr=subprocess.DEVNULL, check=True)
    time.sleep(0.05)                     # the changes come strictly after both level 0s
    change(tree, args.files)

    cpu: dict[str, list[float]] = {"tar": [], "ndmpd": []}

    def tar_level1() -> float:
        copy = work / "tar-copy.snar"
        shutil.copyfile(snap0, copy)
        return timed_to_cat(["tar", "-g", str(copy), "-cf", "-", "-C", str(tree), "."], cpu=cpu["tar"])

    def ndmpd_level1() -> float:
        return timed_to_cat(NDMPD + ["dump", "bench", "--config", str(config), "--level", "1"], cpu=cpu["ndmpd"])

    runs: dict[str, list[float]] = {"tar": [], "ndmpd": []}
    tools = [("tar", tar_level1), ("ndmpd", ndmpd_level1)]
    if not args.cold:
        tar_level1(), ndmpd_level1()      # warm the page cache (inodes, directories) for both
    for round_ in range(args.rounds):
        for name, run in (tools if round_ % 2 == 0 else tools[::-1]):
            if args.cold:
                drop_caches()
            seconds = run()
            runs[name].append(seconds)
            if args.verbose:
                print(f"  round {round_ + 1} {name}: {seconds:.3f} s")
    tar_s, ours = statistics.median(runs["tar"]), statistics.median(runs["ndmpd"])
    ratio = ours / tar_s
    cache = "cold" if args.cold else "warm"
    print(f"level 1, {CHANGED} of {args.files} files changed, {cache}: tar {tar_s:.3f} s, ndmpd {ours:.3f} s, "
          f"ratio {ratio:.2f} (target <= {TARGET}) {'OK' if ratio <= TARGET else 'MISSED'}")
    timed_cpu = {name: spent[-args.rounds:] for name, spent in cpu.items()}     # not the warm-up's
    ours, theirs = statistics.median(timed_cpu["ndmpd"]), statistics.median(timed_cpu["tar"])
    print(f"  wall s: tar {min(runs['tar']):.3f}-{max(runs['tar']):.3f}, "
          f"ndmpd {min(runs['ndmpd']):.3f}-{max(runs['ndmpd']):.3f}; CPU s: tar {min(timed_cpu['tar']):.3f}-"
          f"{max(timed_cpu['tar']):.3f}, ndmpd {min(timed_cpu['ndmpd']):.3f}-{max(timed_cpu['ndmpd']):.3f}: "
          f"ratio {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
