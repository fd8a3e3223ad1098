#!/usr/bin/env python3
"""Instructions a level 1 costs (callgrind): the command's start-up, and each entry of its walk.

Wall-clock and CPU seconds swing on a shared host; instruction counts do not. Under
``valgrind --tool=callgrind`` (hash seed fixed) this counts

    ndmpd dump bench --config CONF --level 1 >/dev/null

after 100 of N files changed (incremental_bench.py's tree, and its level 0 with
``--update``), and the same on a tree of one directory and one file (start-up and per-job
costs), then prints the start-up and the instructions per entry of the dump's own process:
the walk's critical path, with the stat helper (stat_helper.py) taking every other directory.
The helper is not counted (it is killed at the end, before callgrind could report it): the
CPU seconds of incremental_bench.py include it. ``--repo`` runs another checkout's ``ndmpd``
(main, for a before/after).

    python benchmarks/incremental_instructions.py [--dir /var/tmp/ndmpd-bench] [--files 10000] [--repo DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from incremental_bench import build, change   # noqa: E402


def _config(work: Path, tree: Path) -> Path:
    config = work / "ndmpd.toml"
    config.write_text(f'[server]\nstate_dir = "{work / "state"}"\nauth = ["none"]\n\n'
                      f'[[volume]]\nname = "bench"\npath = "{tree}"\nsnapshot = "none"\n')
    return config


def _level0(config: Path, repo: Path) -> None:
    with open(os.devnull, "wb") as null:
        subprocess.run([sys.executable, "-m", "ndmpd", "dump", "bench", "--config", str(config), "--level", "0",
                        "--update"], stdout=null, stderr=subprocess.DEVNULL, check=True, cwd=repo)


def _count(config: Path, repo: Path) -> int:
    """Instructions of one level 1's own process."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "ndmpd", "dump", "bench", "--config", str(config), "--level", "1"]
        env = dict(os.environ, PYTHONHASHSEED="0")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with open(os.devnull, "wb") as null:
            done = subprocess.run(argv, stdout=null, stderr=subprocess.PIPE, env=env, cwd=repo, check=True)
        count = re.search(r"Collected : ([\d,]+)", done.stderr.decode())
        if count is None:
            raise SystemExit(f"no callgrind count: {done.stderr.decode()[-400:]}")
        return int(count.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/ndmpd-bench"))
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose ndmpd runs (default: this one)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (callgrind)")
    base = args.dir / f"instructions-{args.files}"
    tree, small = base / "tree", base / "small"
    build(tree, args.files)
    if not small.exists():
        (small / "d").mkdir(parents=True)
        (small / "d" / "f").write_bytes(b"one file\n")
    with tempfile.TemporaryDirectory(dir=base) as scratch:
        work_big, work_small = Path(scratch) / "big", Path(scratch) / "small"
        work_big.mkdir()
        work_small.mkdir()
        big_conf, small_conf = _config(work_big, tree), _config(work_small, small)
        subprocess.run([sys.executable, "-m", "ndmpd", "--version"], cwd=args.repo, check=True,
                       stdout=subprocess.DEVNULL, env={k: v for k, v in os.environ.items()
                                                       if k != "PYTHONDONTWRITEBYTECODE"})   # its .pyc files
        _level0(big_conf, args.repo)
        _level0(small_conf, args.repo)
        time.sleep(0.05)
        change(tree, args.files)
        entries = args.files + args.files // 500 + 1
        start, whole = _count(small_conf, args.repo), _count(big_conf, args.repo)
        print(f"start-up {start / 1e6:.0f} M instructions, {(whole - start) / entries:,.0f} per entry "
              f"in the dump's process ({args.files} files, {args.repo})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
