#!/usr/bin/env python3
"""The S3 cartridge index as tape files pile up, against a real SeaweedFS started for the run.

Writes --files tape files (one small record and a filemark each) through a virtual drive and,
at each checkpoint (default 1,000 and 10,000 files), prints for the bounded index (a base
object plus a tail of at most TAIL_LIMIT entries) against the whole index rewritten at every
filemark (the version-1 cost, measured in the same run on a second cartridge):

- the index object's bytes (what one filemark PUTs);
- the index bytes PUT per filemark on average (index objects and bases);
- filemark latency (segment PUT and index switch, compactions included) over the files
  since the previous checkpoint: median, 95th percentile and max.

    python benchmarks/s3_index_bench.py [--files 10000] [--checkpoints 1000,10000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ndmpd.devices.s3_layout import TAIL_LIMIT                  # noqa: E402
from ndmpd.devices.s3_medium import S3Store                     # noqa: E402
from ndmpd.devices.virtual_tape import VirtualTape              # noqa: E402
from benchmarks.s3_cartridge_bench import seaweed_store        # noqa: E402

RECORD = b"r" * 4096


def run(store: S3Store, files: int, checkpoints: list[int], tail_limit: int, label: str) -> dict[int, tuple]:
    """{checkpoint: (index object bytes, p50, p95, max filemark seconds, index bytes PUT per
    filemark)} for one cartridge written with ``tail_limit`` (huge: the whole-index layout),
    each checkpoint printed as it is reached (a 10,000-file run takes tens of minutes)."""
    tape = VirtualTape("bench", store.cartridge(f"IDX{os.urandom(3).hex()}"), 64 << 30)
    tape.open(write=True)
    medium = tape.cart.medium
    medium.tail_limit = tail_limit
    latencies: list[float] = []
    out = {}
    for n in range(1, files + 1):
        tape.write_record(RECORD)
        start = time.perf_counter()
        tape.write_filemarks(1)
        latencies.append(time.perf_counter() - start)
        if n in checkpoints:
            index_put = medium.index_put / n
            out[n] = (medium.index_bytes, statistics.median(latencies), statistics.quantiles(latencies, n=20)[-1],
                      max(latencies), index_put)
            latencies = []
            print(f"  {label}: {n:6d} tape files, index object {out[n][0]:,} B, index bytes PUT per filemark "
                  f"{index_put:,.0f}, filemark p50 {out[n][1] * 1e3:.1f} ms", flush=True)
    tape.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--checkpoints", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    with seaweed_store() as (_, config):
        store = S3Store(config)
        for round_ in range(args.rounds):
            bounded = run(store, args.files, checkpoints, TAIL_LIMIT, "bounded")
            whole = run(store, args.files, checkpoints, 1 << 62, "whole")
            for n in checkpoints:
                b, w = bounded[n], whole[n]
                print(f"round {round_ + 1}, {n:6d} tape files: index object {b[0]:,} B (whole {w[0]:,} B, "
                      f"ratio {b[0] / w[0]:.3f}); index bytes PUT per filemark {b[4]:,.0f} (whole {w[4]:,.0f}, "
                      f"ratio {b[4] / w[4]:.3f}); filemark p50/p95/max {b[1] * 1e3:.1f}/{b[2] * 1e3:.1f}/"
                      f"{b[3] * 1e3:.0f} ms (whole {w[1] * 1e3:.1f}/{w[2] * 1e3:.1f}/{w[3] * 1e3:.0f} ms, "
                      f"p50 ratio {b[1] / w[1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
