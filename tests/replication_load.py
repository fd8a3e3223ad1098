"""Load and consistency tooling for replication tests and benchmarks: a fast builder of a big
tree, a writer making a fixed number of changes per second, a reader checking pairs through a
pinned directory fd, and a sampler of ``ndmp replicate status --json`` lags. The tree
comparator is ``tests/tree_digest.py``.

The pairs: ``pairs/pN/`` is a directory holding ``a`` and ``b`` with equal contents. The writer
never modifies a visible pair: it writes a fresh directory ``pairs/.new-N-G/`` with both files,
swaps it with ``pairs/pN`` by one ``renameat2(RENAME_EXCHANGE)``, then empties and removes the
retired directory (now under the ``.new-`` name). Both files are fsync'ed before the swap: a
btrfs snapshot is crash-consistent, not write-ordered — measured here, a snapshot taken while
the writer ran without the fsyncs caught a swapped-in pair whose files were still empty (btrfs
records the new name at once but a file's on-disk size only when its data is written). So in
every point-in-time view of the master (a btrfs snapshot, a crash) ``pairs/pN`` is one complete
directory whose ``a`` equals its ``b``;
a replica that is exactly some master snapshot keeps that invariant, and a half-applied update
can break it. Names starting with ``.`` in ``pairs/`` are the writer's work in progress and are
not checked.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import math
import os
import random
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PAIRS = "pairs"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def exchange(a: Path | str, b: Path | str) -> None:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); OSError on failure."""
    if _libc().renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


# ---------------------------------------------------------------- the tree

@dataclass
class Tree:
    """What ``build_tree`` made (relative paths), so the writer can pick targets without a walk."""
    root: Path
    files: list[str]
    dirs: list[str]
    pairs: int


def _content(rng: random.Random) -> bytes:
    roll = rng.random()
    size = rng.randrange(0, 256) if roll < 0.8 else rng.randrange(256, 4096) if roll < 0.98 \
        else rng.randrange(4096, 65536)
    return rng.randbytes(size)


def _pair_content(n: int, generation: int, rng: random.Random) -> bytes:
    return b"pair %d gen %d\n" % (n, generation) + rng.randbytes(rng.randrange(16, 2048))


def _write_new(path: bytes, data: bytes, mode: int = 0o644, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _build_dirs(root: bytes, dirs: list[str], per_dir: int, seed: int) -> list[str]:
    """Fill ``dirs`` with ``per_dir`` files each (some xattrs, hard links, symlinks)."""
    rng = random.Random(seed)
    made = []
    for d in dirs:
        base = os.path.join(root, d.encode())
        for i in range(per_dir):
            rel = f"{d}/f{i:03d}"
            path = os.path.join(base, b"f%03d" % i)
            _write_new(path, _content(rng), 0o644 if i % 7 else 0o600)
            made.append(rel)
            if i % 50 == 7:
                os.setxattr(path, b"user.tag", b"t%d" % rng.randrange(1 << 30))
            if i % 500 == 11:
                os.link(path, path + b".link")
                made.append(rel + ".link")
            if i % 500 == 13:
                os.symlink(b"f%03d" % i, path + b".sym")
    return made


def build_tree(root: Path, files: int, *, pairs: int = 50, per_dir: int = 100, seed: int = 0,
               workers: int = 2) -> Tree:
    """About ``files`` small files (80% < 256 B, 2% up to 64 KiB) in ``files/per_dir``
    directories two levels deep, 1 in 50 with an xattr, 1 in 500 hard-linked, 1 in 500 with a
    symlink beside it, plus ``pairs`` pairs. Plain os calls, ``workers`` threads (the
    syscalls release the GIL): 100,000 files take seconds."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    leaves = max(1, files // per_dir)
    fanout = max(1, int(leaves ** 0.5))
    dirs = [f"d{i // fanout:03d}/e{i % fanout:03d}" for i in range(leaves)]
    for top in sorted({d.split("/")[0] for d in dirs}):
        os.mkdir(root / top)
    for d in dirs:
        os.mkdir(root / d)
    chunks = [dirs[i::workers] for i in range(workers)]
    results: list[list[str]] = [[] for _ in chunks]

    def work(i: int) -> None:
        results[i] = _build_dirs(os.fsencode(root), chunks[i], per_dir, seed * 1000 + i)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made_files = [f for chunk in results for f in chunk]
    os.mkdir(root / PAIRS)
    rng = random.Random(seed)
    for n in range(pairs):
        d = root / PAIRS / f"p{n}"
        os.mkdir(d)
        data = _pair_content(n, 0, rng)
        _write_new(os.fsencode(d / "a"), data)
        _write_new(os.fsencode(d / "b"), data)
    return Tree(root, made_files, dirs + sorted({d.split("/")[0] for d in dirs}), pairs)


# ---------------------------------------------------------------- the writer

KINDS = ("create", "overwrite", "append", "rename", "delete", "chmod", "xattr", "mkdir", "pair")
WEIGHTS = (15, 15, 15, 12, 12, 10, 10, 3, 8)


@dataclass
class WriterStats:
    ops: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    max_behind: float = 0.0          # how late the writer ever was against its schedule (s)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def rate(self) -> float:
        return self.total / self.elapsed if self.elapsed else 0.0


class Writer(threading.Thread):
    """Exactly ``rate`` changes per second on ``tree`` (a schedule, not a sleep per change: a
    slow change is caught up on), of every kind in KINDS, until ``stop()``."""

    def __init__(self, tree: Tree, rate: float = 100, seed: int = 1) -> None:
        super().__init__(name="writer", daemon=True)
        self.tree, self.rate = tree, rate
        self.rng = random.Random(seed)
        self.files = list(tree.files)
        self.dirs = list(tree.dirs)
        self.generation = [0] * tree.pairs
        self.counter = 0
        self.stats = WriterStats()
        self._halt = threading.Event()

    def stop(self) -> WriterStats:
        self._halt.set()
        if self.ident is not None:
            self.join(timeout=30)
        return self.stats

    def run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._halt.is_set():
            due = start + n / self.rate
            now = time.monotonic()
            if due > now:
                self._halt.wait(due - now)
                if self._halt.is_set():
                    break
            else:
                self.stats.max_behind = max(self.stats.max_behind, now - due)
            kind = self.rng.choices(KINDS, WEIGHTS)[0]
            try:
                getattr(self, "_" + kind)()
                self.stats.ops[kind] += 1
            except OSError as e:
                self.stats.errors.append(f"{kind}: {e}")
            n += 1
        self.stats.elapsed = time.monotonic() - start

    def _path(self, rel: str) -> bytes:
        return os.fsencode(self.tree.root / rel)

    def _pick(self) -> int:
        return self.rng.randrange(len(self.files))

    def _take(self) -> str:
        i = self._pick()
        self.files[i], self.files[-1] = self.files[-1], self.files[i]
        return self.files.pop()

    def _new_name(self) -> str:
        self.counter += 1
        return f"{self.rng.choice(self.dirs)}/w{self.counter}"

    def _create(self) -> None:
        rel = self._new_name()
        _write_new(self._path(rel), _content(self.rng))
        self.files.append(rel)

    def _overwrite(self) -> None:
        with open(self._path(self.files[self._pick()]), "r+b") as f:
            f.truncate(0)
            f.write(_content(self.rng))

    def _append(self) -> None:
        with open(self._path(self.files[self._pick()]), "ab") as f:
            f.write(self.rng.randbytes(self.rng.randrange(1, 512)))

    def _rename(self) -> None:
        old, new = self._take(), self._new_name()
        os.rename(self._path(old), self._path(new))
        self.files.append(new)

    def _delete(self) -> None:
        if len(self.files) > len(self.tree.files) // 2:
            os.unlink(self._path(self._take()))

    def _chmod(self) -> None:
        os.chmod(self._path(self.files[self._pick()]), self.rng.choice((0o600, 0o640, 0o644, 0o755)))

    def _xattr(self) -> None:
        path = self._path(self.files[self._pick()])
        if self.rng.random() < 0.2:
            try:
                os.removexattr(path, b"user.tag")
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
        else:
            os.setxattr(path, b"user.tag", b"x%d" % self.rng.randrange(1 << 30))

    def _mkdir(self) -> None:
        self.counter += 1
        rel = f"{self.rng.choice(self.dirs)}/n{self.counter}"
        os.mkdir(self._path(rel))
        self.dirs.append(rel)

    def _pair(self) -> None:
        n = self.rng.randrange(self.tree.pairs)
        self.generation[n] += 1
        pairs = self.tree.root / PAIRS
        fresh = pairs / f".new-{n}-{self.generation[n]}"
        os.mkdir(fresh)
        data = _pair_content(n, self.generation[n], self.rng)
        _write_new(os.fsencode(fresh / "a"), data, sync=True)     # see the module's docstring
        _write_new(os.fsencode(fresh / "b"), data, sync=True)
        exchange(fresh, pairs / f"p{n}")
        os.unlink(fresh / "a")                  # fresh now names the retired pair
        os.unlink(fresh / "b")
        os.rmdir(fresh)


# ---------------------------------------------------------------- the reader

@dataclass
class ReaderStats:
    rounds: int = 0
    checks: int = 0
    mismatched: list[str] = field(default_factory=list)   # a != b, or not this pair's content
    incomplete: list[str] = field(default_factory=list)   # a pair directory without a or b
    lost: int = 0                                          # the pinned state went away mid-round

    @property
    def violations(self) -> int:
        return len(self.mismatched) + len(self.incomplete)


def _read_at(dirfd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
    try:
        chunks = []
        while block := os.read(fd, 1 << 16):
            chunks.append(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_pairs(dirfd: int, pairs: int, stats: ReaderStats, live: bool = False) -> None:
    """Check every pair through ``dirfd`` (one pinned state of the tree). ``live``: the tree
    is being written under us (a plain directory), so a pair directory retired between its
    open and the reads is not a violation."""
    for n in range(pairs):
        try:
            pfd = os.open(f"{PAIRS}/p{n}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dirfd)
        except FileNotFoundError:
            stats.incomplete.append(f"p{n}: missing")
            continue
        try:
            try:
                a, b = _read_at(pfd, "a"), _read_at(pfd, "b")
            except FileNotFoundError as e:
                if not live:
                    stats.incomplete.append(f"p{n}: {e.filename} missing")
                continue
        finally:
            os.close(pfd)
        stats.checks += 1
        if a != b or not a.startswith(b"pair %d gen " % n):
            stats.mismatched.append(f"p{n}: a={a[:24]!r}.. b={b[:24]!r}..")


class Reader(threading.Thread):
    """Loops on ``path`` until ``stop()``: each round opens it as a directory fd (pinning the
    state it shows at that moment, even if it is switched meanwhile) and checks every pair
    through that fd."""

    def __init__(self, path: Path, pairs: int, pause: float = 0.05, live: bool = False) -> None:
        super().__init__(name="reader", daemon=True)
        self.path, self.pairs, self.pause, self.live = path, pairs, pause, live
        self.stats = ReaderStats()
        self._halt = threading.Event()

    def stop(self) -> ReaderStats:
        self._halt.set()
        if self.ident is not None:
            self.join(timeout=30)
        return self.stats

    def run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)   # an observer: the servers come first
        while not self._halt.is_set():
            try:
                dirfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                self.stats.lost += 1
                self._halt.wait(self.pause)
                continue
            try:
                check_pairs(dirfd, self.pairs, self.stats, self.live)
                self.stats.rounds += 1
            except OSError:
                self.stats.lost += 1
            finally:
                os.close(dirfd)
            self._halt.wait(self.pause)


# ---------------------------------------------------------------- lag

def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def replica_entries(doc) -> list[dict]:
    """Every replica record in a ``replicate status --json`` document: the dicts carrying a
    ``lag`` (the spec names the fields, not the nesting, so any nesting is searched)."""
    found = []
    if isinstance(doc, dict):
        if "lag" in doc or "lag_seconds" in doc:
            found.append(doc)
        for value in doc.values():
            found.extend(replica_entries(value))
    elif isinstance(doc, list):
        for value in doc:
            found.extend(replica_entries(value))
    return found


def parse_status(stdout: str) -> list[dict]:
    """The replica records of ``ndmp replicate status --json`` output (one document or JSON lines)."""
    try:
        return replica_entries(json.loads(stdout))
    except ValueError:
        return replica_entries([json.loads(line) for line in stdout.splitlines() if line.strip()])


def entry_lag(entry: dict) -> float | None:
    lag = entry.get("lag", entry.get("lag_seconds"))
    return float(lag) if isinstance(lag, (int, float)) else None


@dataclass
class LagFigures:
    samples: list[float]
    missing: int                            # samples with no lag (no state yet, or status failed)
    updates: dict[str, int]                 # state id -> bytes of the update that made it

    @property
    def p50(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def line(self) -> str:
        sizes = sorted(self.updates.values())
        per_update = f"{statistics.median(sizes):,.0f} B/update (median of {len(sizes)})" if sizes else "no updates"
        return (f"lag p50 {self.p50:.2f}s p95 {self.p95:.2f}s max {self.max:.2f}s over {len(self.samples)} "
                f"samples ({self.missing} without a lag); {per_update}")


class LagSampler(threading.Thread):
    """Runs ``status()`` (returning ``replicate status --json`` stdout) every ``every`` seconds
    and keeps each replica's lag and each update's bytes."""

    def __init__(self, status: Callable[[], str], every: float = 0.5) -> None:
        super().__init__(name="lag", daemon=True)
        self.status, self.every = status, every
        self.samples: list[float] = []
        self.missing = 0
        self.updates: dict[str, int] = {}
        self.errors: list[str] = []
        self._halt = threading.Event()

    def stop(self) -> LagFigures:
        self._halt.set()
        if self.ident is not None:
            self.join(timeout=60)
        return LagFigures(list(self.samples), self.missing, dict(self.updates))

    def sample(self) -> list[dict]:
        try:
            entries = parse_status(self.status())
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self.errors.append(str(e))
            self.missing += 1
            return []
        for entry in entries:
            lag = entry_lag(entry)
            if lag is None:
                self.missing += 1
            else:
                self.samples.append(lag)
            state, size = entry.get("state_id"), entry.get("last_bytes")
            if state and isinstance(size, int):
                self.updates.setdefault(state, size)
        if not entries:
            self.missing += 1
        return entries

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            self.sample()
            next_at += self.every
            self._halt.wait(max(0.0, next_at - time.monotonic()))
