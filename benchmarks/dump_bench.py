"""Dump and restore against GNU tar, on the same trees in the same run.

Builds (once, then reuses) a large-file tree (4 x 512 MiB) and a small-file tree (100,000
files of 0-40 KB in 200 directories), then over several rounds, rotating the order, times

    ndmpd dump TREE --snapshot none | cat >/dev/null   vs   tar -cf - TREE | cat >/dev/null
    ndmpd restore OUT < STREAM                         vs   tar -xf STREAM -C OUT

and prints the median time ratio and ndmpd's peak RSS. Targets (issue 4): dump large
<= 1.1x, small <= 1.3x, restore <= 1.5x, peak RSS <= 150 MiB.

    python benchmarks/dump_bench.py [--dir /var/tmp/ndmpd-bench] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

NDMPD = [sys.executable, "-m", "ndmpd"]
TARGETS = {("dump", "large"): 1.1, ("dump", "small"): 1.3, ("restore", "large"): 1.5, ("restore", "small"): 1.5}
RSS_LIMIT_MIB = 150


def build_large(root: Path) -> None:
    if (root / ".complete").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(64 << 20))
    for n in range(4):
        with open(root / f"big{n}", "wb") as out:
            for i in range(8):
                block[:8] = (n * 8 + i).to_bytes(8, "little")
                out.write(block)
    (root / ".complete").touch()


def build_small(root: Path) -> None:
    if (root / ".complete").exists():
        return
    rnd = random.Random(4)
    blob = os.urandom(1 << 20)
    for d in range(200):
        folder = root / f"d{d:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(500):
            size = rnd.randint(0, 40_000)
            start = rnd.randint(0, len(blob) - size)
            (folder / f"f{f:04d}").write_bytes(blob[start:start + size])
    (root / ".complete").touch()


TIME = shutil.which("time") and "/usr/bin/time"


def timed(argv: list[str], stdin=None, stdout=None, cwd=None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one process, its output optionally through cat.

    RSS comes from /usr/bin/time (a forked child's rusage starts from the parent's peak)."""
    rss_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"ndmpd-bench-rss-{os.getpid()}"
    if TIME and os.path.exists(TIME):
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


def bench_dump(tree: Path) -> dict:
    return {"tar": lambda: timed(["tar", "-cf", "-", tree.name], stdout="cat", cwd=tree.parent),
            "ndmpd": lambda: timed(NDMPD + ["dump", str(tree), "--snapshot", "none"], stdout="cat")}


def bench_restore(stream: Path, work: Path) -> dict:
    def fresh(name: str) -> Path:
        for old in ("tar-out", "ndmpd-out"):    # both: every run starts with the same free memory
            shutil.rmtree(work / old, ignore_errors=True)
        out = work / name
        out.mkdir()
        subprocess.run(["sync"], check=False)
        return out

    def tar_x():
        out = fresh("tar-out")
        with open(stream, "rb") as source:
            return timed(["tar", "-xf", "-", "-C", str(out)], stdin=source)

    def ndmpd_x():
        out = fresh("ndmpd-out")
        with open(stream, "rb") as source:
            return timed(NDMPD + ["restore", str(out)], stdin=source)
    return {"tar": tar_x, "ndmpd": ndmpd_x}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/ndmpd-bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["large", "small"])
    parser.add_argument("--restore-dir", type=Path, default=Path("/dev/shm") if os.path.isdir("/dev/shm") else None,
                        help="where restores write (default /dev/shm: the disk's writeback would "
                             "otherwise decide both times)")
    parser.add_argument("--verbose", action="store_true", help="print every timed run")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    trees = {"large": args.dir / "large", "small": args.dir / "small"}
    print("building trees (once) ...", file=sys.stderr)
    build_large(trees["large"])
    build_small(trees["small"])
    failed = False
    print(f"{'case':16} {'tar s':>8} {'ndmpd s':>8} {'ratio':>6} {'target':>6} {'ndmpd RSS':>10}")
    for kind, tree in trees.items():
        if args.only and kind != args.only:
            continue
        stream = args.dir / f"{kind}.tar"
        with open(stream, "wb") as out:
            subprocess.run(NDMPD + ["dump", str(tree), "--snapshot", "none"], stdout=out, check=True)
        restore_dir = args.restore_dir or args.dir
        for job, runners in (("dump", bench_dump(tree)), ("restore", bench_restore(stream, restore_dir))):
            times: dict[str, list[float]] = {"tar": [], "ndmpd": []}
            rss = 0
            order = ["tar", "ndmpd"]
            for name in order:      # warm-up, not timed: a VM's first touch of guest memory
                runners[name]()     # (tmpfs pages for the restored tree) costs the host, not us
            for _ in range(args.rounds):
                for name in order:
                    seconds, peak = runners[name]()
                    times[name].append(seconds)
                    if args.verbose:
                        print(f"  {job} {kind} {name}: {seconds:.2f} s", file=sys.stderr)
                    if name == "ndmpd":
                        rss = max(rss, peak)
                order.reverse()
            tar_s, ours = statistics.median(times["tar"]), statistics.median(times["ndmpd"])
            ratio = ours / tar_s
            target = TARGETS[(job, kind)]
            ok = ratio <= target and rss / 1024 <= RSS_LIMIT_MIB
            failed |= not ok
            print(f"{job + ' ' + kind:16} {tar_s:8.2f} {ours:8.2f} {ratio:6.2f} {target:6.1f} "
                  f"{rss / 1024:7.0f} MiB {'ok' if ok else 'MISSED'}", flush=True)
        stream.unlink()
    for name in ("tar-out", "ndmpd-out"):
        shutil.rmtree((args.restore_dir or args.dir) / name, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
