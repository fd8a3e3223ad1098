#!/usr/bin/env python3
"""Amanda's ``ndmp:`` device (Debian's Amanda::Device) writing one file into an ndmpd server
process, against ``cat FILE > copy && sync`` on the same disk in the same run.

Three client runs: 32 KiB blocks as Amanda ships (no TCP_NODELAY, requests sent in xdrrec's
4000-byte fragments), the same with TCP_NODELAY forced on by an LD_PRELOAD shim
(benchmarks/tools/nodelay.c, compiled into a temp dir), and 1 MiB blocks (the device's
``block_size`` property). Each is timed from the first block to the data being on disk
(file mark written, then ``sync``), as ``cat`` is. Target (issue 16): stock 32 KiB within 4x
of the same client with TCP_NODELAY.

    python benchmarks/amanda_device_bench.py [--size 1GiB] [--rounds 1] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.mover_bench import make_data, run_rotated, time_cat    # noqa: E402
from benchmarks.ndmp_backup_bench import PASSWORD, server_config       # noqa: E402
from ndmpd.config import parse_size                                  # noqa: E402
from tests.interop.amanda import AmandaPeer, amanda_missing          # noqa: E402
from tests.server_process import ServerProcess, free_loopback_address  # noqa: E402

SHIM = Path(__file__).resolve().parent / "tools" / "nodelay.c"
SLOWEST = 200e3                 # bytes/s a run may take before it is abandoned (0.7 MB/s was seen)

WRITE_ONE_FILE = """
use Time::HiRes qw( time );
my $dev = open_device("vtape0");
my $refused = $dev->property_set("block_size", $ENV{BENCH_BLOCK} + 0);       # undef when it took
die "block_size: $refused" if defined $refused;
$dev->start($ACCESS_WRITE, "BENCH", "20261202000000") or die "start: " . $dev->error_or_status();
open(my $data, "<", $ENV{BENCH_DATA}) or die "$ENV{BENCH_DATA}: $!";
my $start = time;
$dev->start_file(dump_header("/bench")) or die "start_file: " . $dev->error_or_status();
run_xfer(Amanda::Xfer::Source::Fd->new(fileno($data)), Amanda::Xfer::Dest::Device->new($dev, 0));
$dev->finish() or die "finish: " . $dev->error_or_status();
system("sync") == 0 or die "sync failed";
say_json(seconds => sprintf("%.6f", time - $start));
"""


def build_shim(tmp: Path) -> Path:
    """The NODELAY shim as a shared object in ``tmp``."""
    shared = tmp / "nodelay.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shared), str(SHIM), "-ldl"], check=True)
    return shared


def write_config(work: Path, host: str, size: int) -> Path:
    """One virtual drive with room for the file, on ``work``'s disk; info logging, as in service."""
    return server_config(work, host, "info", f"""
[[tape]]
name = "vtape0"
path = "{work / 'state' / 'vtape0.img'}"
capacity = {size + (256 << 20)}
""")


def time_amanda(peer: AmandaPeer, data: Path, block: int, preload: Path | None) -> float:
    env = {"BENCH_DATA": str(data), "BENCH_BLOCK": str(block)}
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    done = peer.perl(WRITE_ONE_FILE, timeout=120 + data.stat().st_size / SLOWEST, env=env)
    (result,) = peer.results(done)
    return float(result["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="where the data and the cartridge go (default: a temp dir)")
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    size -= size % (32 << 10)                   # whole blocks: the device pads the last one
    missing = amanda_missing() or (None if shutil.which("cc") else "no C compiler (cc) for the NODELAY shim")
    host = free_loopback_address()
    if missing or host is None:
        sys.exit(f"amanda_device_bench: {missing or 'no free 127.0.0.N:10000'}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        data = work / "data"
        make_data(data, size)
        shim = build_shim(work)
        server = ServerProcess(host, write_config(work, host, size), work / "ndmpd.log", PASSWORD)
        peer = AmandaPeer(host, PASSWORD, work)
        runs = {"cat FILE > copy && sync": lambda: time_cat(data, work, sync=True),
                "Amanda 32 KiB stock": lambda: time_amanda(peer, data, 32 << 10, None),
                "Amanda 32 KiB NODELAY": lambda: time_amanda(peer, data, 32 << 10, shim),
                "Amanda 1 MiB stock": lambda: time_amanda(peer, data, 1 << 20, None)}
        try:
            results = run_rotated(runs, args.rounds)
        finally:
            server.stop()
    mb = size / 1e6
    median = {name: statistics.median(times) for name, times in results.items()}
    cat = median["cat FILE > copy && sync"]
    print(f"data {size} bytes, {args.rounds} round(s) (median)")
    for name, t in median.items():
        print(f"{name:24} {mb / t:8.1f} MB/s   ratio vs cat {cat / t:.2f}")
    slowdown = median["Amanda 32 KiB stock"] / median["Amanda 32 KiB NODELAY"]
    print(f"stock 32 KiB takes {slowdown:.2f}x as long as with TCP_NODELAY (target <= 4)")


if __name__ == "__main__":
    main()
