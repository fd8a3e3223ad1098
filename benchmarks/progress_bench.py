#!/usr/bin/env python3
"""Does the progress bar cost the backup anything? ``ndmp backup`` of the same tree with the
bar on a pseudo-terminal, with ``--json`` lines on a pipe, and plain on a pipe.

Starts one ndmpd on 127.0.0.N:10000 whose volume holds (by default) 1 GiB of incompressible
files and 30,000 small files (the small ones make the backup long enough for the bar to redraw, and
file history flows into the catalog), then over several rounds, rotating the order, times
each mode end to end (process start to exit) and prints the medians and the bar's ratio to
``--json``. Goal: within ±10 % (the bar polls DATA_GET_STATE every 0.5 s, --json every 2 s).

    python benchmarks/progress_bench.py [--dir /var/tmp/ndmp-progress-bench] [--rounds 3] [--gib 1] [--files 30000]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ndmp_backup_bench import PASSWORD, server_config                  # noqa: E402
from tests.server_process import ServerProcess, free_loopback_address   # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def build(vol: Path, gib: int, files: int) -> None:
    chunk = os.urandom(1 << 20)
    for n in range(gib * 4):
        with open(vol / f"big{n}.bin", "wb") as f:
            for i in range(256):
                f.write(chunk[i:] + chunk[:i])
    for d in range(files // 1000):
        (vol / f"d{d}").mkdir()
        for i in range(1000):
            (vol / f"d{d}" / f"f{i}").write_bytes(b"x" * (i * 7 % 4096))


def config(root: Path, host: str) -> Path:
    return server_config(root, host, "info", f"""
[[volume]]
name = "/bench"
path = "{root / 'vol'}"

[[tape]]
name = "vtape0"
path = "{root / 'state' / 'vtape0.img'}"
""")


def run(mode: str, host: str, root: Path) -> float:
    args = [sys.executable, "-m", "ndmpd.dma", "backup", f"ndmp@{host}:/bench", "--tape", f"ndmp@{host}:vtape0",
            "--catalog", str(root / "catalog.db")]
    env = {**os.environ, "NDMP_PASSWORD": PASSWORD}
    (root / "state" / "vtape0.img").unlink(missing_ok=True)
    start = time.monotonic()
    if mode == "bar":
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        os.close(slave)
        try:
            while True:
                try:
                    if not os.read(master, 65536):
                        break
                except OSError:
                    break
        finally:
            os.close(master)
        status = proc.wait(timeout=600)
    else:
        extra = ["--json"] if mode == "json" else []
        status = subprocess.run(args + extra, cwd=REPO, env=env, capture_output=True, timeout=600).returncode
    elapsed = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"{mode}: ndmp backup exited {status}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/var/tmp/ndmp-progress-bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gib", type=int, default=1, help="GiB of large files (default 1)")
    parser.add_argument("--files", type=int, default=30_000, help="small files (default 30,000)")
    opts = parser.parse_args()
    root = Path(opts.dir)
    shutil.rmtree(root, ignore_errors=True)
    (root / "vol").mkdir(parents=True)
    build(root / "vol", opts.gib, opts.files)
    host = free_loopback_address()
    if host is None:
        raise SystemExit("no free 127.0.0.N:10000")
    server = ServerProcess(host, config(root, host), root / "ndmpd.log", PASSWORD)
    modes = ["bar", "json", "plain"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for r in range(opts.rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:
                times[mode].append(run(mode, host, root))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    for m in modes:
        print(f"{m:6} median {med[m]:.2f} s  ({', '.join(f'{t:.2f}' for t in times[m])})")
    print(f"bar / json = {med['bar'] / med['json']:.3f}   bar / plain = {med['bar'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
