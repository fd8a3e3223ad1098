#!/usr/bin/env python3
"""What one file-level replication update costs on the master, against tree size: the lean
incremental (NDMPD_HOLD + BASE_DATE: dumpdirs only of changed directories) beside the token
incremental that lists every directory (what a tape level 1 writes), for the same CHANGES
changes of a tree of N files (tests/replication_load.py's tree) on a tmpfs-like directory.

Prints, per size: the seconds and bytes of each image, and (as root) the same lean update
driven by the volume's change journal (ndmpd/engine/journal.py, fanotify): it lists only the
directories that changed instead of walking the tree.

    python benchmarks/lean_incremental_bench.py [--sizes 10000,100000] [--huge] [--changes 200] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ndmpd.engine.job import DumpRequest, dump_volume          # noqa: E402
from ndmpd.engine.journal import ChangeJournal, JournalUnavailable   # noqa: E402
from tests.replication_load import build_tree                   # noqa: E402


def _dump(src: Path, state: Path, **kwargs) -> tuple[float, int, str]:
    """(seconds, bytes, token) of one dump of ``src`` into /dev/null."""
    with open(os.devnull, "wb") as out:
        began = time.perf_counter()
        outcome = dump_volume(DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", **kwargs),
                              out.fileno())
        return time.perf_counter() - began, outcome.result.bytes_written, outcome.dump_date


def one_size(work: Path, files: int, changes: int) -> str:
    src, state = work / "src", work / "state"
    tree = build_tree(src, files)
    time.sleep(0.2)                                   # past the lean rule's ctime slack
    journal: ChangeJournal | None = ChangeJournal(src)
    try:
        journal.start()
    except JournalUnavailable:
        journal = None
    full_s, full_b, token = _dump(src, state, hold="bench")
    time.sleep(0.2)
    step = max(1, len(tree.files) // changes)
    spread = [path for path in tree.files[::step] if os.lstat(src / path).st_nlink == 1]  # a changed
    for path in spread[:changes]:                 # hard-linked file would make the journal walk
        (src / path).write_text("changed")
    lean_s, lean_b, _ = _dump(src, state, base_token=token, level=1, hold="bench")
    listed_s, listed_b, _ = _dump(src, state, base_token=token, level=1)
    journal_cols = f"{'-':>10} {'-':>11}"
    if journal is not None:
        answer = journal.changed_since(int(token))
        journal_s, journal_b, _ = _dump(src, state, base_token=token, level=1, hold="bench", journal=journal)
        journal.stop()
        journal_cols = (f"{journal_s:>10.3f} {journal_b / 1024:>11,.0f}" if answer is not None
                        else f"{'walked':>10} {'-':>11}")
    return (f"{files:>10,} {full_s:>8.2f} {full_b / 2**20:>9.1f} {listed_s:>9.2f} {listed_b / 1024:>11,.0f} "
            f"{lean_s:>7.2f} {lean_b / 1024:>9,.0f} {listed_b / max(lean_b, 1):>7.1f}x {journal_cols}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="tree sizes, comma-separated")
    parser.add_argument("--huge", action="store_true", help="add 1,000,000 files (minutes, GBs of tmpfs)")
    parser.add_argument("--changes", type=int, default=200, help="files rewritten between base and update")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([1_000_000] if args.huge else [])
    print(f"{args.changes} files changed per update; images written to /dev/null")
    print(f"{'files':>10} {'full s':>8} {'full MiB':>9} {'listed s':>9} {'listed KiB':>11} "
          f"{'lean s':>7} {'lean KiB':>9} {'saved':>8} {'journal s':>10} {'journal KiB':>11}")
    for files in sizes:
        work = Path(tempfile.mkdtemp(dir=args.dir, prefix="lean-bench-"))
        try:
            print(one_size(work, files, args.changes), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
