#!/usr/bin/env python3
"""User-space instructions the dump spends per small file (callgrind), against a bare walk.

Wall-clock and even CPU seconds swing on a shared host; an instruction count does not, so a
change to the per-file Python work (headers, file history, stat handling) shows here to the
percent. Counts, under ``valgrind --tool=callgrind`` (hash seed fixed), of each of

    dump       Dumper.run into /dev/null, read-ahead off, live (no snapshot) as a bench volume
    dump+FH    the same with v4 path file history encoded in batches (the two-way backup's)
    dump+auto  the first with read-ahead and prefetch "auto" and a progress callback (``ndmpd dump``'s
               full dump: the read-ahead counts the walk, reads note cache misses)
    walk       the reference: os.listdir + one os.lstat per entry, sorted, nothing else

on a tree of ``--files`` small files (dump_bench.py's, a start of its 100,000-file tree) less
the same on an empty directory (start-up and per-job costs), and prints each one's
instructions per file and its ratio to the walk's.

    python benchmarks/dump_instructions.py [--dir /var/tmp/ndmpd-bench] [--files 5000]
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

_SETUP = """
import os, sys, threading
sys.path.insert(0, {repo!r})
from ndmpd.engine.dump import Dumper, DumpOptions
from ndmpd.engine.sink import FdSink
from ndmpd.data.history import FileHistory
tree = {tree!r}
"""
RUNS = {
    "dump": """
sink = FdSink(os.open("/dev/null", os.O_WRONLY))
Dumper(tree, sink, DumpOptions(live=True, readahead="off")).run()
sink.close()
""",
    "dump+FH": """
history = FileHistory(4, "f", lambda code, body, sent: sent(), threading.Event())
sink = FdSink(os.open("/dev/null", os.O_WRONLY))
Dumper(tree, sink, DumpOptions(live=True, readahead="off"), history.add_entry).run()
sink.close()
history.finish()
""",
    "dump+auto": """
sink = FdSink(os.open("/dev/null", os.O_WRONLY))
Dumper(tree, sink, DumpOptions(live=True), progress=lambda done, entries: None).run()
sink.close()
""",
    "walk": """
todo = [tree.encode()]
while todo:
    folder = todo.pop()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    for name in sorted(os.listdir(folder)):
        if os.lstat(name, dir_fd=fd).st_mode & 0o170000 == 0o040000:
            todo.append(folder + b"/" + name)
    os.close(fd)
""",
}


def _env() -> dict[str, str]:
    """The counted runs' environment, and the warm-up's (which must write the byte code: else the
    first counted run compiles every module changed since, a few 10,000 instructions a file)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONHASHSEED"] = "0"            # dict layouts (and so the counts) the same every run
    return env


def instructions(code: str, work: Path) -> int:
    """Instructions callgrind counts for ``python -c code`` (the whole process)."""
    out = work / "callgrind.out"
    done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", code],
                          capture_output=True, text=True, env=_env(), check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if not found:
        raise SystemExit(f"no count from callgrind:\n{done.stderr[-2000:]}")
    out.unlink(missing_ok=True)
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/ndmpd-bench"))
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    tree = args.dir / f"small-{args.files}"
    build_small(tree, args.files)
    work = Path(tempfile.mkdtemp(prefix="ndmpd-instr-"))
    try:
        (work / "empty").mkdir()
        setups = {where: _SETUP.format(repo=str(REPO), tree=str(where)) for where in (tree, work / "empty")}
        subprocess.run([sys.executable, "-c", setups[tree] + RUNS["dump+auto"]], check=True, env=_env())   # byte-compile
                                                                                      # once, outside the counts
        per_file = {name: (instructions(setups[tree] + body, work) - instructions(setups[work / "empty"] + body, work))
                    / args.files for name, body in RUNS.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.files} files")
    for name, value in per_file.items():
        print(f"  {name:9} {value:9,.0f} instructions per file   {value / per_file['walk']:.2f}x the walk's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
