"""Dump and restore against GNU tar, on the same trees in the same run (issue 19's figures).

Builds (once, then reuses) a small-file tree (``--files``, default 100,000 files of 0-40 KB,
500 a directory), a large-file tree (``--large-files``, default 2 x 512 MiB) and, with
``--huge``, a tree of 1,000,000 tiny files; then over several rounds, rotating the order, times

    ndmpd dump TREE --snapshot none | cat >/dev/null   vs   tar -cf - TREE | cat >/dev/null
    ndmpd restore OUT < STREAM                         vs   tar -xf - -C OUT < STREAM

and prints one row per work with both medians, their ratio and the issue's target:

    dump small cold <= 0.5x    dump small warm <= 1.3x    dump large cold, warm <= 1.0x
    restore small (warm; cold with --cold) <= 1.0x
    peak RSS of dump and restore, 1M files (--huge) <= 150 MiB

``--workers N`` runs ``ndmpd restore --workers N`` (its writer processes; 0: inline), and
``--only restore`` times the restore rows alone.

``--cold`` adds the cold rows: caches are dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``,
root only) before every single timed command, ours and tar's alike. Without it the rows are
warm: one untimed run of each first, so both read from the page cache.

    python benchmarks/dump_bench.py [--dir /var/tmp/ndmpd-bench] [--rounds 5] [--cold] [--huge]
                                    [--only large|small|restore|huge] [--workers N]
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

NDMPD = [sys.executable, "-m", "ndmpd"]
TARGETS = {"dump small cold": 0.5, "dump small warm": 1.3, "dump large cold": 1.0, "dump large warm": 1.0,
           "restore small": 1.0, "restore small cold": 1.0}
RSS_LIMIT_MIB = 150
SMALL_PER_DIR = 500
HUGE_FILES = 1_000_000
DROP_CACHES = "/proc/sys/vm/drop_caches"


def build_large(root: Path, files: int = 2) -> None:
    """``files`` files of 512 MiB of random data (each 64 MiB block told apart by its first bytes)."""
    if (root / ".complete").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(64 << 20))
    for n in range(files):
        with open(root / f"big{n}", "wb") as out:
            for i in range(8):
                block[:8] = (n * 8 + i).to_bytes(8, "little")
                out.write(block)
    (root / ".complete").touch()


def build_small(root: Path, files: int = 100_000) -> None:
    """``files`` files of 0-40 KB, 500 a directory; a smaller tree is the start of a bigger one."""
    if (root / ".complete").exists():
        return
    rnd = random.Random(4)
    blob = os.urandom(1 << 20)
    for d in range((files + SMALL_PER_DIR - 1) // SMALL_PER_DIR):
        folder = root / f"d{d:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(min(SMALL_PER_DIR, files - d * SMALL_PER_DIR)):
            size = rnd.randint(0, 40_000)
            start = rnd.randint(0, len(blob) - size)
            (folder / f"f{f:04d}").write_bytes(blob[start:start + size])
    (root / ".complete").touch()


def build_huge(root: Path, files: int = HUGE_FILES) -> None:
    """``files`` files of 0-64 bytes, 1,000 a directory: the per-file memory of a walk, not its I/O."""
    if (root / ".complete").exists():
        return
    for d in range((files + 999) // 1000):
        folder = root / f"d{d:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(min(1000, files - d * 1000)):
            fd = os.open(folder / f"f{f:03d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"x" * ((d + f) % 65))
            os.close(fd)
    (root / ".complete").touch()


def tree_paths(base: Path, files: int, large_files: int) -> dict[str, Path]:
    """Where each tree lives: the 100k tree is ``small`` (shared with the other benchmarks)."""
    small = base / ("small" if files == 100_000 else f"small-{files}")
    large = base / ("large" if large_files == 4 else f"large-{large_files}x512")
    return {"small": small, "large": large, "huge": base / "huge"}


def byte_compile() -> None:
    """Compile ndmpd's modules once, as pip does for an installed package: this checkout may
    run with PYTHONDONTWRITEBYTECODE (CI sets it), which would compile every module at every
    start of a timed ``ndmpd`` (40-60 ms of a 2 s dump measured here); Python still reads the
    .pyc files it finds."""
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "ndmpd"), quiet=1)


def drop_caches() -> None:
    """Write dirty pages, then drop the page cache, dentries and inodes (everyone's)."""
    os.sync()
    with open(DROP_CACHES, "w") as knob:
        knob.write("3\n")


TIME = "/usr/bin/time"


def timed(argv: list[str], stdin=None, stdout=None, cwd=None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one process, its output optionally through cat.

    RSS comes from /usr/bin/time (a forked child's rusage starts from the parent's peak)."""
    rss_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"ndmpd-bench-rss-{os.getpid()}"
    if os.path.exists(TIME):
        argv = [TIME, "-o", str(rss_file), "-f", "%M"] + argv
    start = time.perf_counter()
    if stdout == "cat":
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        proc = subprocess.Popen(argv, stdin=stdin, stdout=cat.stdin, stderr=subprocess.DEVNULL, cwd=cwd)
        cat.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cat.wait()
    else:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    if os.environ.get("BENCH_CPU"):
        print(f"    user {usage.ru_utime:.2f} sys {usage.ru_stime:.2f}", file=sys.stderr)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed with status {proc.returncode}")
    try:
        peak = int(rss_file.read_text().split()[-1])
        rss_file.unlink()
    except (OSError, ValueError, IndexError):
        peak = usage.ru_maxrss
    return elapsed, peak


Runner = Callable[[], tuple[float, int]]


def bench_dump(tree: Path) -> dict[str, Runner]:
    return {"tar": lambda: timed(["tar", "-cf", "-", tree.name], stdout="cat", cwd=tree.parent),
            "ndmpd": lambda: timed(NDMPD + ["dump", str(tree), "--snapshot", "none"], stdout="cat")}


def bench_restore(stream: Path, work: Path, workers: int | None = None) -> dict[str, Runner]:
    """tar -xf against ndmpd restore (with ``--workers`` when given), each into a fresh directory."""
    extra = ["--workers", str(workers)] if workers is not None else []

    def fresh(name: str) -> Path:
        for old in ("tar-out", "ndmpd-out"):    # both: every run starts with the same free memory
            shutil.rmtree(work / old, ignore_errors=True)
        out = work / name
        out.mkdir(parents=True)
        os.sync()
        return out

    def tar_x():
        out = fresh("tar-out")
        with open(stream, "rb") as source:
            return timed(["tar", "-xf", "-", "-C", str(out)], stdin=source)

    def ndmpd_x():
        out = fresh("ndmpd-out")
        with open(stream, "rb") as source:
            return timed(NDMPD + ["restore", str(out)] + extra, stdin=source)
    return {"tar": tar_x, "ndmpd": ndmpd_x}


def measure(runners: dict[str, Runner], rounds: int, cold: bool, label: str, verbose: bool,
            warm_up: bool = True) -> dict[str, tuple[float, int]]:
    """Median seconds and peak RSS (KiB) of each runner over ``rounds``, the order reversed each
    round; warm: after one untimed run of each, cold: caches dropped before every run."""
    order = list(runners)
    if not cold and warm_up:
        for name in order:          # warm-up, not timed: the page cache, and a VM's first touch
            runners[name]()         # of guest memory (tmpfs pages of a restore) costs the host
    times: dict[str, list[float]] = {name: [] for name in order}
    peaks: dict[str, int] = {name: 0 for name in order}
    for _ in range(rounds):
        for name in order:
            if cold:
                drop_caches()
            seconds, peak = runners[name]()
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
            if verbose:
                print(f"  {label} {name}: {seconds:.2f} s, {peak / 1024:.0f} MiB", file=sys.stderr)
        order.reverse()
    return {name: (statistics.median(times[name]), peaks[name]) for name in runners}


class Table:
    """The printed rows: work, ours, tar, ratio, target, ok."""

    def __init__(self, targets: dict[str, float] = TARGETS) -> None:
        self.targets = targets
        self.failed = False
        print(f"{'work':22} {'ours':>10} {'tar':>10} {'ratio':>6} {'target':>9} ok", flush=True)

    def ratio(self, work: str, result: dict[str, tuple[float, int]]) -> None:
        ours, tar = result["ndmpd"][0], result["tar"][0]
        ratio, target = ours / tar, self.targets[work]
        self._row(work, f"{ours:8.2f} s", f"{tar:8.2f} s", f"{ratio:6.2f}", f"<= {target:.1f}x", ratio <= target)

    def rss(self, work: str, result: dict[str, tuple[float, int]]) -> None:
        ours, tar = result["ndmpd"][1] / 1024, result["tar"][1] / 1024
        self._row(work, f"{ours:6.0f} MiB", f"{tar:6.0f} MiB", f"{'-':>6}", f"<= {RSS_LIMIT_MIB} MiB",
                  ours <= RSS_LIMIT_MIB)

    def _row(self, work: str, ours: str, tar: str, ratio: str, target: str, ok: bool) -> None:
        self.failed |= not ok
        print(f"{work:22} {ours:>10} {tar:>10} {ratio} {target:>9} {'ok' if ok else 'MISSED'}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/ndmpd-bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=100_000, help="files in the small tree (default 100,000)")
    parser.add_argument("--large-files", type=int, default=2, help="512 MiB files in the large tree (default 2)")
    parser.add_argument("--only", choices=["large", "small", "restore", "huge"],
                        help="one tree's rows (huge: implies --huge; restore: the small tree's restore rows)")
    parser.add_argument("--cold", action="store_true",
                        help="also the cold rows: drop caches before every timed command (root only)")
    parser.add_argument("--huge", action="store_true",
                        help="peak RSS of dump and restore of 1M tiny files (builds the tree once; not for CI)")
    parser.add_argument("--restore-dir", type=Path, default=Path("/dev/shm") if os.path.isdir("/dev/shm") else None,
                        help="where restores write (default /dev/shm: the disk's writeback would "
                             "otherwise decide both times)")
    parser.add_argument("--workers", type=int, default=None,
                        help="ndmpd restore --workers N (writer processes; default: ndmpd's own default)")
    parser.add_argument("--verbose", action="store_true", help="print every timed run")
    args = parser.parse_args()
    args.huge |= args.only == "huge"
    if args.cold and (os.geteuid() != 0 or not os.access(DROP_CACHES, os.W_OK)):
        raise SystemExit(f"--cold drops the page cache through {DROP_CACHES}: run as root")
    args.dir.mkdir(parents=True, exist_ok=True)
    trees = tree_paths(args.dir, args.files, args.large_files)
    restore_dir = args.restore_dir or args.dir
    print("building trees (once) ...", file=sys.stderr)
    byte_compile()
    if args.only in (None, "small", "restore"):
        build_small(trees["small"], args.files)
    if args.only in (None, "large"):
        build_large(trees["large"], args.large_files)
    if args.huge:
        build_huge(trees["huge"])
    table = Table()
    modes = [True, False] if args.cold else [False]
    for kind in ("small", "large"):
        if args.only and kind != args.only:
            continue
        for cold in modes:
            work = f"dump {kind} {'cold' if cold else 'warm'}"
            table.ratio(work, measure(bench_dump(trees[kind]), args.rounds, cold, work, args.verbose))
    if args.only in (None, "small", "restore"):
        stream = args.dir / "small.tar"
        with open(stream, "wb") as out:
            subprocess.run(NDMPD + ["dump", str(trees["small"]), "--snapshot", "none"], stdout=out,
                           stderr=subprocess.DEVNULL, check=True)
        for cold in modes:      # cold: the stream is read from the disk, not the page cache
            work = "restore small cold" if cold else "restore small"
            table.ratio(work, measure(bench_restore(stream, restore_dir, args.workers), args.rounds, cold, work,
                                      args.verbose))
        stream.unlink()
    if args.huge:
        # one run each: RSS, not time; the restore goes to disk (1M tmpfs files would take GiBs of RAM)
        table.rss("dump 1M files RSS", measure(bench_dump(trees["huge"]), 1, False, "dump huge", args.verbose,
                                               warm_up=False))
        stream = args.dir / "huge.tar"
        with open(stream, "wb") as out:
            subprocess.run(NDMPD + ["dump", str(trees["huge"]), "--snapshot", "none"], stdout=out,
                           stderr=subprocess.DEVNULL, check=True)
        huge_out = args.dir / "huge-restore"
        table.rss("restore 1M files RSS", measure(bench_restore(stream, huge_out, args.workers), 1, False,
                                                  "restore huge",
                                                  args.verbose, warm_up=False))
        stream.unlink()
        shutil.rmtree(huge_out, ignore_errors=True)
    for name in ("tar-out", "ndmpd-out"):
        shutil.rmtree(restore_dir / name, ignore_errors=True)
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
