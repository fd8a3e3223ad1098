#!/usr/bin/env python3
"""User-space instructions a restore spends per small file (callgrind), parser and writers apart.

Wall-clock seconds swing on a shared host; an instruction count does not, so a change to the
restore's per-member Python work shows here to the percent. ``ndmpd restore OUT < STREAM`` runs
under ``valgrind --tool=callgrind --trace-children=yes`` (hash seed fixed) on the streams of two
of dump_bench.py's small-file trees (``--files`` and a fifth of it, both past the point where
the writer processes start), and the difference of the two runs, divided by the difference of
their member counts, is each process's cost per member with start-up and per-job costs gone:

    parser     the restore's own process: reading, parsing, placing, handing files over
    writers    the writer processes together: creating, filling and closing the files

    python benchmarks/restore_instructions.py [--dir /var/tmp/ndmpd-bench] [--files 5000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_bench import build_small   # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NDMPD = [sys.executable, "-m", "ndmpd"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONHASHSEED"] = "0"            # dict layouts (and so the counts) the same every run
    env["PYTHONPATH"] = str(REPO)
    return env


def restore_instructions(stream: Path, out: Path, work: Path, workers: int) -> tuple[int, int]:
    """(parser, writers) instructions of one ``ndmpd restore`` of ``stream`` into ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    with open(stream, "rb") as source:
        done = subprocess.run(["valgrind", "--tool=callgrind", "--trace-children=yes",
                               f"--callgrind-out-file={work}/callgrind.%p"]
                              + NDMPD + ["restore", str(out), "--workers", str(workers)],
                              stdin=source, capture_output=True, text=True, env=_env())
    shutil.rmtree(out, ignore_errors=True)
    for name in os.listdir(work):
        if name.startswith("callgrind."):
            os.unlink(work / name)
    if done.returncode:
        raise SystemExit(f"the restore failed under callgrind:\n{done.stderr[-2000:]}")
    commands = dict(re.findall(r"==(\d+)== Command: (.*)", done.stderr))
    counts = {pid: int(n) for pid, n in re.findall(r"==(\d+)== Collected : (\d+)", done.stderr)}
    parser = sum(n for pid, n in counts.items() if "ndmpd.engine.writers" not in commands.get(pid, ""))
    return parser, sum(counts.values()) - parser


def members_of(stream: Path) -> int:
    """Members in the stream (its headers, as GNU tar lists them)."""
    listing = subprocess.run(["tar", "-tf", str(stream)], capture_output=True, check=True)
    return listing.stdout.count(b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/ndmpd-bench"))
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--restore-dir", type=Path, default=Path("/dev/shm") if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="ndmpd-restore-instr-"))
    out = (args.restore_dir or work) / f"ndmpd-restore-instr-{os.getpid()}"
    try:
        counts = {}
        for files in (args.files // 5, args.files):
            tree = args.dir / f"small-{files}"
            build_small(tree, files)
            stream = work / f"{files}.tar"
            with open(stream, "wb") as sink:
                subprocess.run(NDMPD + ["dump", str(tree), "--snapshot", "none"], stdout=sink, check=True,
                               env=_env())
            with open(stream, "rb") as source:                      # byte-compile once, outside the counts
                subprocess.run(NDMPD + ["restore", str(out)], stdin=source, check=True, env=_env(),
                               stdout=subprocess.DEVNULL)
            counts[files] = (members_of(stream), *restore_instructions(stream, out, work, args.workers))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    (small_members, small_parser, small_writers), (members, big_parser, big_writers) = counts.values()
    extra = members - small_members
    print(f"{members} members against {small_members}, {args.workers} writers")
    print(f"  parser   {(big_parser - small_parser) / extra:9,.0f} instructions per member")
    print(f"  writers  {(big_writers - small_writers) / extra:9,.0f} instructions per member (together)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
