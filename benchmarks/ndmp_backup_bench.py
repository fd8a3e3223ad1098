#!/usr/bin/env python3
"""A two-way NDMP backup driven by a real DMA, against GNU tar writing the same tree to the same disk.

Starts an ndmpd server on 127.0.0.N:10000 whose volumes are the benchmark trees of
dump_bench.py (100,000 files of 0-40 KB; 2 x 512 MiB) and whose tape is a virtual cartridge
in CARTRIDGE_DIR, then over several rounds, rotating the order, times

    ndmjob -c -D AGENT -f vtape0 -B tar -C VOLUME [-I INDEX]   (LOCAL mover, file history on)
    tar -cf CARTRIDGE_DIR/x.tar TREE

and prints both medians and their ratio, then the CPU seconds each took (the server's with its
read-ahead helpers, against tar's; on a shared host this ratio moves far less than the
wall-clock one). Targets (issue 19): the small tree <= 0.6x cold and
<= 1.2x warm; (issue 5) the large tree <= 1.3x warm. Both outputs are removed before every
run, so each starts with the same free space and page cache pressure. ``--cold`` adds the
cold rows: caches are dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``, root only)
before every timed run, ours and tar's alike.

ndmpd makes a cartridge durable at each filemark (fdatasync, as a drive flushes its buffer
on WFM), which plain ``tar -cf`` never does; the disk's speed is then part of our time and
not of tar's. ``--durable`` adds a column, ``tar -cf x.tar TREE && sync``, the same
work as ours.

    python benchmarks/ndmp_backup_bench.py [--dir /var/tmp/ndmpd-bench] [--rounds 3] [--cold] [--no-index]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dump_bench import DROP_CACHES, Table, build_large, build_small, drop_caches, tree_paths   # noqa: E402
from tests.server_process import ServerProcess, free_loopback_address   # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NDMJOB = REPO.parent / "shared" / "tools" / "ndmjob"
if not NDMJOB.exists():
    NDMJOB = Path("/usr/lib/amanda/ndmjob")
PASSWORD = "bench-pw"
TARGETS = {"backup small cold": 0.6, "backup small warm": 1.2, "backup large warm": 1.3}


def server_config(work: Path, host: str, log_level: str, rest: str) -> Path:
    """``work``/ndmpd.toml: a benchmark server on ``host`` (user ndmp, PASSWORD, state in
    ``work``/state) with ``rest`` (its volumes and tapes) after it."""
    config = work / "ndmpd.toml"
    config.write_text(f"""
[server]
listen = ["{host}:10000"]
state_dir = "{work / 'state'}"
auth = ["md5", "text"]
log_level = "{log_level}"

[[user]]
name = "ndmp"
password = "{PASSWORD}"
{rest}""")
    config.chmod(0o600)
    (work / "state").mkdir(exist_ok=True)
    return config


def write_config(work: Path, host: str, trees: dict[str, Path], cartridge: Path) -> Path:
    volumes = "".join(f'\n[[volume]]\nname = "/bench/{kind}"\npath = "{tree}"\nsnapshot = "none"\n'
                      for kind, tree in trees.items())
    return server_config(work, host, "warning", f"""{volumes}
[[tape]]
name = "vtape0"
path = "{cartridge}"
capacity = "64GiB"
""")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process so far, with that of the children it
    has waited for (the dump's read-ahead helpers), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children so far (tar's, once it has run)."""
    usage = os.times()
    return usage.children_user + usage.children_system


def timed(argv: list[str], cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout + done.stderr


def measure(runners: dict[str, Callable[[bool], float]], rounds: int, cold: bool, label: str,
            verbose: bool) -> dict[str, float]:
    """Median seconds of each runner over ``rounds``, the order reversed each round; warm:
    after one untimed run of each, cold: caches dropped before every run."""
    order = list(runners)
    if not cold:
        for name in order:                  # warm-up, not timed (page cache, VM first touch)
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        for name in order:
            seconds = runners[name](cold)
            times[name].append(seconds)
            if verbose:
                print(f"  {label} {name}: {seconds:.2f} s", file=sys.stderr)
        order.reverse()
    return {name: statistics.median(times[name]) for name in runners}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/ndmpd-bench"))
    parser.add_argument("--cartridge-dir", type=Path, help="where the cartridge and x.tar go (default: DIR)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["large", "small"])
    parser.add_argument("--cold", action="store_true",
                        help="also the cold rows of the small tree: drop caches before every timed run (root only)")
    parser.add_argument("--no-index", action="store_true", help="HIST=n: no -I file history index")
    parser.add_argument("--verbose", action="store_true", help="print every timed run")
    parser.add_argument("--durable", action="store_true", help="also time tar followed by sync")
    args = parser.parse_args()
    if not os.access(NDMJOB, os.X_OK):
        raise SystemExit("ndmjob not installed (apt-get install amanda-common)")
    if args.cold and (os.geteuid() != 0 or not os.access(DROP_CACHES, os.W_OK)):
        raise SystemExit(f"--cold drops the page cache through {DROP_CACHES}: run as root")
    args.dir.mkdir(parents=True, exist_ok=True)
    carts = args.cartridge_dir or args.dir
    carts.mkdir(parents=True, exist_ok=True)
    paths = tree_paths(args.dir, 100_000, 2)
    trees = {kind: paths[kind] for kind in ("small", "large") if args.only in (None, kind)}
    print("building trees (once) ...", file=sys.stderr)
    if "large" in trees:
        build_large(trees["large"], 2)
    if "small" in trees:
        build_small(trees["small"])
    cartridge, tar_out = carts / "bench-vtape0.img", carts / "x.tar"
    work = Path(tempfile.mkdtemp(prefix="ndmpd-bench-"))
    host = free_loopback_address()
    if host is None:
        raise SystemExit("no free 127.0.0.N:10000")
    server = ServerProcess(host, write_config(work, host, trees, cartridge), work / "ndmpd.log", PASSWORD)
    agent = server.agent("4")
    table = Table(TARGETS)
    try:
        for kind, tree in trees.items():
            index = work / "backup.idx"

            def fresh(cold: bool) -> None:
                for old in (cartridge, tar_out, index):
                    old.unlink(missing_ok=True)
                if cold:
                    drop_caches()
                else:
                    os.sync()

            cpu: dict[str, list[float]] = {"tar": [], "ndmpd": []}

            def run_tar(cold: bool = False) -> float:
                fresh(cold)
                before = children_cpu()
                seconds, out = timed(["tar", "-cf", str(tar_out), tree.name], cwd=tree.parent)
                cpu["tar"].append(children_cpu() - before)
                return seconds

            def run_tar_sync(cold: bool = False) -> float:
                fresh(cold)
                seconds, out = timed(["sh", "-c", f"tar -cf '{tar_out}' '{tree.name}' && sync"], cwd=tree.parent)
                return seconds

            def run_ndmp(cold: bool = False) -> float:
                fresh(cold)
                argv = [str(NDMJOB), "-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", f"/bench/{kind}"]
                if not args.no_index:
                    argv += ["-I", str(index)]
                before = cpu_seconds(server.proc.pid)
                seconds, out = timed(argv)
                if "Operation ended OKAY" not in out:
                    raise SystemExit(f"backup of {kind} failed:\n{out[-3000:]}")
                cpu["ndmpd"].append(cpu_seconds(server.proc.pid) - before)
                if args.verbose:
                    print(f"    server CPU {cpu['ndmpd'][-1]:.2f} s", file=sys.stderr)
                return seconds
            runners = {"tar": run_tar, "ndmpd": run_ndmp}
            if args.durable:
                runners["tar+sync"] = run_tar_sync
            for cold in ([True, False] if args.cold and kind == "small" else [False]):
                work_name = f"backup {kind} {'cold' if cold else 'warm'}"
                for spent in cpu.values():
                    spent.clear()
                result = measure(runners, args.rounds, cold, work_name, args.verbose)
                table.ratio(work_name, {name: (seconds, 0) for name, seconds in result.items()})
                timed_cpu = {name: spent[-args.rounds:] for name, spent in cpu.items()}    # not the warm-up's
                ours, theirs = (statistics.median(timed_cpu[name]) for name in ("ndmpd", "tar"))
                print(f"{'':22} CPU s: server {min(timed_cpu['ndmpd']):.2f}-{max(timed_cpu['ndmpd']):.2f} "
                      f"(median {ours:.2f}), tar {min(timed_cpu['tar']):.2f}-{max(timed_cpu['tar']):.2f} "
                      f"(median {theirs:.2f}): ratio {ours / theirs:.2f}", flush=True)
                if args.durable:
                    print(f"{'':22} tar+sync {result['tar+sync']:.2f} s: ratio "
                          f"{result['ndmpd'] / result['tar+sync']:.2f}", flush=True)
    finally:
        server.stop()
        for old in (cartridge, tar_out):
            old.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
