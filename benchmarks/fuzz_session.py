"""Long fuzz run of a whole NDMP session (outside CI; tests/test_fuzz_session.py is the short run).

    python benchmarks/fuzz_session.py --inputs 100000 [--seed N] [--show 5]

Each input is a fresh session (v2, v3 or v4; before or after authentication) fed one to five
structure-aware messages of any code (see tests/session_fuzz.py), fragmented, mutated or
oversized, and sometimes trailing garbage. Counted as a failure: an exception out of the
session, a request answered not exactly once, a malformed reply, a traceback logged by a
handler, or a valid request afterwards that is not answered.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.session_fuzz import Failure, Harness, RandomSource, draw_input, sandboxed  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to run (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--show", type=int, default=5, help="failures to print in full (default 5)")
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    shown = 0
    with tempfile.TemporaryDirectory(prefix="ndmpd-fuzz-") as tmp:
        harness = Harness.create(Path(tmp))
        started = time.monotonic()
        with sandboxed(harness):
            for n in range(args.inputs):
                rng = random.Random(args.seed * 1_000_003 + n)
                case = draw_input(RandomSource(rng))
                counts[f"v{case.version} {'post' if case.authenticated else 'pre'}-auth"] += 1
                counts["messages"] += len(case.records)
                harness.internal_errors.clear()
                try:
                    counts[harness.run(case)] += 1
                    if harness.internal_errors:
                        raise Failure("handler traceback: " + harness.internal_errors[0])
                except Exception as exc:       # every kind is a finding: count, show, go on
                    kind = f"{type(exc).__name__}: {str(exc)[:100]}"
                    failures[kind] += 1
                    if shown < args.show:
                        shown += 1
                        print(f"--- failure at input {n} (seed {args.seed}): {kind}", file=sys.stderr)
                        print(f"    v{case.version} authenticated={case.authenticated}", file=sys.stderr)
                        for record in case.records:
                            print(f"    {record[:96].hex()}{'...' if len(record) > 96 else ''}", file=sys.stderr)
                        if not isinstance(exc, Failure):
                            traceback.print_exception(exc, file=sys.stderr)
                if (n + 1) % 10_000 == 0:
                    print(f"{n + 1} inputs, {sum(failures.values())} failures, "
                          f"{time.monotonic() - started:.0f} s", file=sys.stderr)
        elapsed = time.monotonic() - started
        replies = [line for line in harness.ctx.metrics.exposition().decode().splitlines()
                   if line.startswith("ndmpd_error_replies_total")]
    print(f"inputs {args.inputs}  messages {counts['messages']}  seconds {elapsed:.1f}  "
          f"inputs/s {args.inputs / elapsed:.0f}")
    for key in sorted(k for k in counts if k != "messages"):
        print(f"  {key:20} {counts[key]}")
    print("error replies the session sent (the rest were NO_ERR):")
    for line in sorted(replies, key=lambda l: -float(l.rsplit(" ", 1)[1])):
        name, count = line.split('error="')[1].split('"} ')
        print(f"  {name:24} {float(count):.0f}")
    print(f"failures {sum(failures.values())}")
    for kind, count in failures.most_common():
        print(f"  {count:7}  {kind}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
