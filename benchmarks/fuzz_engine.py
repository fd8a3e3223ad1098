"""Long fuzz runs of the pax reader and the restorer (the CI runs are tests/test_engine_fuzz.py).

Each input is a mutation of a valid stream (a small tree of every kind, dumped by the engine)
or of a crafted hostile member; see tests/engine_fuzz.py for the mutations and the contracts.
The restorer runs in a sandbox whose contents outside the target are compared after every
input. Any input that takes longer than --hang seconds counts as a failure (a loop). Failing
inputs are saved under --dir for replay.

    python benchmarks/fuzz_engine.py --target reader --inputs 100000
    python benchmarks/fuzz_engine.py --target restore --seconds 600
    setpriv --reuid=nobody --regid=nogroup --clear-groups python benchmarks/fuzz_engine.py --target restore

Prints the counts per target and each distinct failure; exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.engine_fuzz import Sandbox, fuzz_reader, fuzz_restore, mutate, random_ops, seed_streams  # noqa: E402


class Hang(Exception):
    """An input ran longer than the time allowed."""


def _alarm(signum, frame):
    raise Hang("input ran too long")


def run(target: str, seeds: list[bytes], inputs: int, seconds: float, seed: int, hang: float, work: Path) -> int:
    rng = random.Random(seed)
    sandbox = Sandbox(work / "sandbox").create() if target == "restore" else None
    failures: collections.Counter = collections.Counter()
    examples: dict[str, Path] = {}
    done = members = 0
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    while done < inputs and time.monotonic() - start < seconds:
        data = mutate(rng.choice(seeds), random_ops(rng))
        variant = rng.randrange(12)
        signal.setitimer(signal.ITIMER_REAL, hang)
        try:
            if target == "reader":
                members += fuzz_reader(data)
            else:
                fuzz_restore(data, sandbox, variant)
        except BaseException as exc:      # every escape is a finding: record it and go on
            if isinstance(exc, KeyboardInterrupt):
                raise
            where = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}: {str(exc)[:120]}"
            failures[key] += 1
            if key not in examples:
                examples[key] = work / f"{target}-failure-{len(examples)}-v{variant}.tar"
                examples[key].write_bytes(data)
            if sandbox is not None:
                sandbox.create()
                sandbox.reset_target()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        done += 1
    elapsed = time.monotonic() - start
    extra = f", {members} members listed" if target == "reader" else ""
    print(f"{target}: {done} inputs in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.0f}/s){extra}, "
          f"{sum(failures.values())} failures ({len(failures)} distinct)")
    for key, count in failures.most_common():
        print(f"  {count:6d}  {key}\n          replay: {examples[key]}")
    return sum(failures.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["reader", "restore", "both"], default="both")
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target (default 100000)")
    parser.add_argument("--seconds", type=float, default=float("inf"), help="stop each target after this long")
    parser.add_argument("--seed", type=int, default=1, help="random seed (runs are reproducible)")
    parser.add_argument("--hang", type=float, default=10.0, help="seconds one input may take")
    parser.add_argument("--dir", type=Path, help="where the sandbox and failing inputs go (default: a temp dir)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="ndmpd-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = seed_streams(Path(tempfile.mkdtemp(dir=work, prefix="seeds-")))
    targets = ["reader", "restore"] if args.target == "both" else [args.target]
    failed = sum(run(t, seeds, args.inputs, args.seconds, args.seed, args.hang, work) for t in targets)
    print(f"work directory: {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
