"""Codec throughput for file history batches: FH_ADD_FILE and FH_ADD_NODE, encode and decode.

Prints entries/s each way for the generated codec, and for reference the same FH_ADD_NODE
layout declared with ``construct`` (when installed), measured in the same run.
Target (issue 2): >= 250,000 entries/s each way on a 2-core machine.

    python benchmarks/codec_bench.py [--entries 1000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import time

from ndmpd.wire import protocol

TARGET = 250_000


def make_batches(n: int):
    t = protocol(4).types
    files, nodes = [], []
    for i in range(n):
        stat = t.file_stat(0, 0, 4, 1700000000 + i, 1700000000, 1700000000, 1000, 1000, 0o100644, 4096 + i, 1)
        files.append(t.file(names=[t.file_name(0, unix_name=f"/export/data/dir{i // 100:04d}/file{i:07d}.dat")],
                            stats=[stat], node=1000 + i, fh_info=512 * i))
        nodes.append(t.node(stats=[stat], node=1000 + i, fh_info=512 * i))
    return t.fh_add_file_post(files=files), t.fh_add_node_post(nodes=nodes)


def best_rate(fn, n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def construct_reference(n: int, rounds: int) -> tuple[float, float] | None:
    try:
        from construct import Int32sb, Int32ub, Int64ub, PrefixedArray, Struct
    except ImportError:
        return None
    stat = Struct("unsupported" / Int32ub, "fs_type" / Int32sb, "ftype" / Int32sb, "mtime" / Int32ub,
                  "atime" / Int32ub, "ctime" / Int32ub, "owner" / Int32ub, "group" / Int32ub,
                  "fattr" / Int32ub, "size" / Int64ub, "links" / Int32ub)
    node = Struct("stats" / PrefixedArray(Int32ub, stat), "node" / Int64ub, "fh_info" / Int64ub)
    post = Struct("nodes" / PrefixedArray(Int32ub, node)).compile()
    value = {"nodes": [{"stats": [dict(unsupported=0, fs_type=0, ftype=4, mtime=1, atime=1, ctime=1, owner=0,
                                       group=0, fattr=0o100644, size=i, links=1)], "node": i, "fh_info": i}
                       for i in range(n)]}
    data = post.build(value)
    return best_rate(lambda: post.build(value), n, rounds), best_rate(lambda: post.parse(data), n, rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000, help="entries per FH post")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    n, rounds = args.entries, args.rounds
    codec = protocol(4).codec
    file_post, node_post = make_batches(n)
    ok = True
    for label, type_name, value in (("FH_ADD_FILE", "ndmp4_fh_add_file_post", file_post),
                                    ("FH_ADD_NODE", "ndmp4_fh_add_node_post", node_post)):
        data = codec.encode(type_name, value)
        assert codec.decode(type_name, data)[0] == value
        enc = best_rate(lambda: codec.encode(type_name, value), n, rounds)
        dec = best_rate(lambda: codec.decode(type_name, data), n, rounds)
        ok &= enc >= TARGET and dec >= TARGET
        print(f"{label}: encode {enc:>12,.0f} entries/s   decode {dec:>12,.0f} entries/s   "
              f"({len(data) / n:.0f} bytes/entry, target {TARGET:,})")
    ref = construct_reference(n, max(3, rounds // 5))
    if ref:
        print(f"construct (compiled) FH_ADD_NODE, same run: encode {ref[0]:,.0f}/s decode {ref[1]:,.0f}/s")
    print("PASS" if ok else "BELOW TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
