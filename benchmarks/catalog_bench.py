"""Catalog: the history recorder's insert rate, then ``ls``/``find``/DAR lookup latency on it.

Records ``--entries`` file history entries (FH_ADD_FILE bodies as the DMA decodes them, 1,000
per post, a tree of 1,000 directories; or the same tree as dump's DIR + NODE history) into a fresh catalog through
:class:`~ndmpd.dma.catalog_history.HistoryRecorder`, timed from the first post to the end of
``finish()`` (the bodies are decoded beforehand: the client's work, not the catalog's).
Then times the lookups the ``ndmp`` commands make, each the median of ``--rounds``.
Targets (issue 17): >= 200,000 entries/s, lookups <= 50 ms.

    python benchmarks/catalog_bench.py [--entries 1000000] [--rounds 7] [--history tar|dump] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ndmpd.data.fh_wire import FhWire
from ndmpd.dma.catalog import open_catalog
from ndmpd.wire import REQUEST, protocol

INSERT_TARGET = 200_000
LOOKUP_TARGET_MS = 50.0
PER_POST = 1000


def tar_posts(entries: int) -> list[tuple[int, bytes]]:
    """FH_ADD_FILE posts (message code, encoded body) in a backup's order (a directory, then
    its files): /dNNNN directories of 999 files each, f<global number>.dat, so every name is unique."""
    wire, posts, batch = FhWire(4), [], []
    for i in range(entries):
        d, k = divmod(i, 1000)
        if k == 0:
            batch.append(wire.file(b"/d%04d" % d, 0o40755, 0, 0, 0, 1_700_000_000, 0, 0, 2, 10 + d, 512 * i))
        else:
            batch.append(wire.file(b"/d%04d/f%07d.dat" % (d, i), 0o100644, 1000, 1000, 4096 + i, 1_700_000_000 + i,
                                   0, 0, 1, 100_000 + i, 512 * i))
        if len(batch) == PER_POST:
            posts.append(wire.post("file", batch))
            batch = []
    if batch:
        posts.append(wire.post("file", batch))
    return posts


def dump_posts(entries: int) -> list[tuple[int, bytes]]:
    """The same tree as FH_ADD_DIR then FH_ADD_NODE posts (the dump butype's history, as ndmpd
    sends it: each batch's directory entries, then their nodes), encoded."""
    wire = FhWire(4)
    posts: list[tuple[int, bytes]] = []
    dirs = [wire.dir(b".", 2, 2), wire.dir(b"d0000", 10, 2)]
    nodes = [wire.node(0o40755, 0, 0, 0, 1, 1, 1, 2, 2, 0), wire.node(0o40755, 0, 0, 0, 1, 1, 1, 2, 10, 512)]

    def flush() -> None:
        for kind, batch in (("dir", dirs), ("node", nodes)):
            posts.append(wire.post(kind, batch))
            batch.clear()
    for i in range(2, entries):
        d, k = divmod(i, 1000)
        if k == 0:
            dirs.append(wire.dir(b"d%04d" % d, 10 + d, 2))
            nodes.append(wire.node(0o40755, 0, 0, 0, 1, 1, 1, 2, 10 + d, 512 * i))
        else:
            dirs.append(wire.dir(b"f%07d.dat" % i, 100_000 + i, 10 + d))
            nodes.append(wire.node(0o100644, 1000, 1000, 4096 + i, 1_700_000_000 + i, 0, 0, 1, 100_000 + i, 512 * i))
        if len(nodes) == PER_POST:
            flush()
    if nodes:
        flush()
    return posts


def _decoded(posts: list[tuple[int, bytes]]) -> list[tuple[int, object]]:
    v4 = protocol(4)
    return [(code, v4.decode_body(code, REQUEST, body, 0)) for code, body in posts]


def make_posts(entries: int) -> list[tuple[int, object]]:
    """Decoded FH_ADD_FILE posts (tar_posts), as the DMA's recorder decodes them."""
    return _decoded(tar_posts(entries))


def make_dump_posts(entries: int) -> list[tuple[int, object]]:
    """Decoded FH_ADD_DIR/FH_ADD_NODE posts (dump_posts)."""
    return _decoded(dump_posts(entries))


def median_ms(fn, rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--history", choices=("tar", "dump"), default="tar",
                        help="FH_ADD_FILE paths (tar) or FH_ADD_DIR + FH_ADD_NODE (dump)")
    parser.add_argument("--keep", type=Path, help="build the catalog in this directory and keep it")
    args = parser.parse_args()
    n = args.entries
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "catalog.db"
    path.unlink(missing_ok=True)
    print(f"building {n:,} decoded entries ...", file=sys.stderr)
    posts = make_posts(n) if args.history == "tar" else make_dump_posts(n)
    ok = True
    with open_catalog(path) as cat:
        older = cat.begin_backup(host="bench", volume="/vol", butype="tar", level=0, started=1.0)
        with cat.history(older.id) as fh:           # a small earlier backup, so find spans two
            for post in posts[:5]:
                fh.post(*post)
        cat.finish_backup(older.id, "done")
        backup = cat.begin_backup(host="bench", volume="/vol", butype="tar", level=0)
        recorder = cat.history(backup.id)
        start = time.perf_counter()
        recorder.start()
        for post in posts:
            recorder.post(*post)
        posted = time.perf_counter() - start
        rows = recorder.finish()
        elapsed = time.perf_counter() - start
        cat.finish_backup(backup.id, "done")
        rate = rows / elapsed
        ok &= rate >= INSERT_TARGET and rows == n
        print(f"insert: {rows:,} entries in {elapsed:.2f} s = {rate:,.0f} entries/s (target {INSERT_TARGET:,}); "
              f"the control path's share (posting): {posted * 1000:.0f} ms; "
              f"catalog {path.stat().st_size / 1e6:.0f} MB")
        short = backup.id[:4]
        lookups = [
            ("backups --volume /vol", lambda: cat.backups(volume="/vol")),
            ("ls BACKUP /", lambda: cat.ls(short, "/")),
            ("ls BACKUP /d0500", lambda: cat.ls(short, "/d0500")),
            ("DAR lookup of one path", lambda: cat.lookup(short, "/d0500/f0500500.dat")),
            ("find f0500500.dat (name)", lambda: cat.find("f0500500.dat")),
            ("find /d0500/*.dat (prefix)", lambda: cat.find("/d0500/*.dat")),
            ("find f05005*.dat (name prefix)", lambda: cat.find("f05005*.dat")),
            ("find /d05*/f0500*.dat (path prefix)", lambda: cat.find("/d05*/f0500*.dat")),
            ("find *.dat --limit 100 (full scan)", lambda: cat.find("*.dat", limit=100)),
            ("find *500500.dat (full scan)", lambda: cat.find("*500500.dat")),
        ]
        for label, fn in lookups:
            ms, result = median_ms(fn, args.rounds)
            indexed = "full scan" not in label
            if indexed:
                ok &= ms <= LOOKUP_TARGET_MS
            count = len(result) if isinstance(result, list) else int(result is not None)
            print(f"{label:<40} {ms:>9.2f} ms  ({count} results{'' if indexed else ', not an index lookup'})")
    print("PASS" if ok else "BELOW TARGET")
    if not args.keep:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
