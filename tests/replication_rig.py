"""The lag-under-load run, shared by tests/interop/test_replication_load.py and
benchmarks/replication_bench.py: filesystems on loop devices, pinning a replica's state together
with the master snapshot it claims to equal, comparing pins in the background while the run
goes on, and one whole run of ``ndmp replicate run --every`` against a writer.

Names this codes to (spec.md, issue 18): the replica store ``P.parent/.P.name.ndmpd-replica/recv``
whose states carry Received UUID = state id, P a read-only snapshot of one of them (its Parent
UUID), the master's held snapshots under ``PARENT/.VOLUME.ndmpd-held/NAME/`` (holds.py; spec.md
said ``VOLUME/.ndmpd-snapshots/held/NAME/``, still searched), and
``ndmp replicate create|run|status --json`` with per-replica ``lag``, ``state_id``, ``last_bytes``,
``updates``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ndmpd.snapshots import holds
from ndmpd.snapshots.base import SnapshotError
from tests.replication_load import (LagFigures, LagSampler, Reader, ReaderStats, Tree, Writer, WriterStats,
                                    parse_status)
from tests.tree_digest import TreeDigest, differences
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


def sh(*argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command (text output captured, bounded in time)."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)


def _must(*argv: str | Path, timeout: float = 120) -> str:
    done = sh(*argv, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


# ---------------------------------------------------------------- filesystems

def image_dir(preferred: Path, need: int) -> tuple[Path, bool]:
    """Where loop images of ``need`` bytes may grow: ``preferred`` when its filesystem has the
    room, else a private directory in /dev/shm (this machine's root disk may be nearly full).
    Returns (directory, whether the caller must remove it)."""
    st = os.statvfs(preferred)
    if st.f_bavail * st.f_frsize >= need + (1 << 30):
        return preferred, False
    return Path(tempfile.mkdtemp(prefix="ndmpd-loop-", dir="/dev/shm")), True


@contextlib.contextmanager
def loop_btrfs(workdir: Path, name: str, size: int = 4 << 30, room: int = 1 << 30) -> Iterator[Path]:
    """A fresh btrfs (sparse image, ``room`` bytes expected to be written) mounted at
    ``workdir/name``; unmounted and its image removed afterwards."""
    where, private = image_dir(workdir, room)
    image, mnt = where / f"{name}.img", workdir / name
    with open(image, "wb") as f:
        f.truncate(size)
    mnt.mkdir()
    try:
        _must("mkfs.btrfs", "-q", image)
        _must("mount", "-o", "loop", image, mnt)
        try:
            yield mnt
        finally:
            sh("umount", mnt)
            if os.path.ismount(mnt):
                sh("umount", "-l", mnt)
    finally:
        image.unlink(missing_ok=True)
        if private:
            shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str = "2g") -> Iterator[Path]:
    """A tmpfs at ``mnt`` (the non-btrfs master: no snapshots there), unmounted afterwards."""
    mnt.mkdir(parents=True, exist_ok=True)
    _must("mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", mnt)
    try:
        yield mnt
    finally:
        sh("umount", mnt)
        if os.path.ismount(mnt):
            sh("umount", "-l", mnt)


# ---------------------------------------------------------------- btrfs subvolumes

def subvolume_show(path: Path) -> dict[str, str]:
    """``btrfs subvolume show`` as {field: value} ("UUID", "Parent UUID", "Received UUID",
    "Creation time", "Flags"); "-" values kept as "-"."""
    out = {}
    for line in _must("btrfs", "subvolume", "show", path).splitlines()[1:]:
        key, sep, value = line.strip().partition(":")
        if sep and key and not key.startswith("Snapshot"):
            out[key.strip()] = value.strip()
    return out


def snapshot_ro(src: Path, dst: Path) -> None:
    _must("btrfs", "subvolume", "snapshot", "-r", src, dst)


def delete_subvolume(path: Path) -> None:
    sh("btrfs", "subvolume", "delete", path)


# ---------------------------------------------------------------- pinning a state

@dataclass
class Point:
    """One replica state pinned beside the master snapshot it claims to equal."""
    state_id: str
    replica: Path
    replica_frozen: float
    master: Path | None              # None: a non-btrfs master (nothing to compare with)
    master_frozen: float | None


class Pinner:
    """Pins what replica ``path`` shows right now, O(1): a read-only snapshot of P, proven to be
    of the subvolume P was when the pin was taken, mapped through P's Parent UUID to the store's
    state and its Received UUID (the state id = the master snapshot UUID), and a read-only
    snapshot of the master's held snapshot with that UUID."""

    def __init__(self, replica: Path, replica_pins: Path, master: Path | None, master_pins: Path | None) -> None:
        self.replica, self.master = replica, master
        self.recv = replica.parent / f".{replica.name}.ndmpd-replica" / "recv"
        self.replica_pins, self.master_pins = replica_pins, master_pins
        self.count = 0
        self.misses: list[str] = []

    def pin(self) -> Point | None:
        self.count += 1
        before = subvolume_show(self.replica)
        frozen = time.time()
        pin = self.replica_pins / f"r{self.count}"
        snapshot_ro(self.replica, pin)
        if subvolume_show(pin).get("Parent UUID") != before.get("UUID"):
            return self._miss("the replica switched while being pinned", pin)
        state_id = self._state_of(before.get("Parent UUID", "-"))
        if state_id is None:
            return self._miss(f"no state in {self.recv} has UUID {before.get('Parent UUID')}", pin)
        if self.master is None:
            return Point(state_id, pin, frozen, None, None)
        try:
            held = holds.find(self.master, state_id)     # where and how the master keeps its holds
        except SnapshotError as exc:                     # one went while being listed
            return self._miss(f"listing the master's holds: {exc}", pin)
        if held is None:
            return self._miss(f"the master holds no snapshot {state_id}", pin)
        master_pin = self.master_pins / f"m{self.count}"
        try:
            snapshot_ro(held.path, master_pin)
        except RuntimeError:                            # released by the next update meanwhile
            return self._miss(f"the master's snapshot {state_id} went while being pinned", pin)
        return Point(state_id, pin, frozen, master_pin, held.ctime or None)

    def _state_of(self, uuid: str) -> str | None:
        for state in sorted(self.recv.glob("state-*")):
            info = subvolume_show(state)
            if info.get("UUID") == uuid:
                received = info.get("Received UUID", "-")
                return None if received == "-" else received
        return None

    def _miss(self, why: str, pin: Path) -> None:
        self.misses.append(why)
        delete_subvolume(pin)
        return None


@dataclass
class Comparison:
    state_id: str
    differences: list[str]
    seconds: float


class Checker(threading.Thread):
    """Compares pinned points in the background (one TreeDigest per side: its cache makes each
    100k-file comparison a walk of stat calls) and deletes the pins."""

    def __init__(self) -> None:
        super().__init__(name="checker", daemon=True)
        self.points: queue.Queue[Point | None] = queue.Queue()
        self.master_digest, self.replica_digest = TreeDigest(), TreeDigest()
        self.results: list[Comparison] = []
        self.errors: list[str] = []

    def finish(self, timeout: float = 300) -> list[Comparison]:
        self.points.put(None)
        self.join(timeout=timeout)
        return self.results

    def run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)   # this thread only: the servers come first
        while (point := self.points.get()) is not None:
            self.compare(point)

    def compare(self, point: Point) -> None:
        """Compare one point (and delete its pins); the result goes to ``results``."""
        start = time.monotonic()
        try:
            if point.master is None:
                return
            replica = self.replica_digest.walk(point.replica, point.replica_frozen)
            master = self.master_digest.walk(point.master, point.master_frozen)
            found = differences(master, replica)
            if found:                        # confirm without the caches before calling it a difference
                found = differences(self.master_digest.walk(point.master, verify=True),
                                    self.replica_digest.walk(point.replica, verify=True))
            self.results.append(Comparison(point.state_id, found, time.monotonic() - start))
        except OSError as e:
            self.errors.append(f"{point.state_id}: {e}")
        finally:
            delete_subvolume(point.replica)
            if point.master is not None:
                delete_subvolume(point.master)


# ---------------------------------------------------------------- ndmp

def ndmp_env(home: Path, password: str) -> dict[str, str]:
    return {**os.environ, "NDMP_PASSWORD": password, "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home),
            "COLUMNS": "100", "PYTHONPATH": str(REPO)}


def ndmp(home: Path, password: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``ndmp ARGS`` (python -m ndmpd.dma) to completion."""
    return subprocess.run([sys.executable, "-m", "ndmpd.dma", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ndmp_env(home, password))


def status_entries(home: Path, password: str, name: str) -> list[dict]:
    done = ndmp(home, password, "replicate", "status", name, "--json", timeout=30)
    return parse_status(done.stdout) if done.returncode == 0 else []


def updates_done(home: Path, password: str, name: str) -> int:
    return sum(int(e.get("updates") or 0) for e in status_entries(home, password, name))


@dataclass
class LoadResult:
    name: str
    files: int
    initial_seconds: float
    lag: LagFigures
    writer: WriterStats
    reader: ReaderStats
    comparisons: list[Comparison]
    checker_errors: list[str]
    pin_misses: list[str]
    final_differences: list[str]
    run_exit: int | None
    run_output: str = ""
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        identical = sum(1 for c in self.comparisons if not c.differences)
        slowest = max((c.seconds for c in self.comparisons), default=0.0)
        return "\n".join([
            f"[{self.name}] {self.files:,} files, initial sync {self.initial_seconds:.1f}s",
            f"[{self.name}] {self.lag.line()}",
            f"[{self.name}] writer {self.writer.total} changes in {self.writer.elapsed:.1f}s "
            f"({self.writer.rate:.1f}/s, {len(self.writer.errors)} errors, late at most {self.writer.max_behind:.3f}s)",
            f"[{self.name}] reader {self.reader.rounds} rounds, {self.reader.checks} pair checks, "
            f"{self.reader.violations} violations, {self.reader.lost} lost",
            f"[{self.name}] comparisons {identical}/{len(self.comparisons)} identical (slowest {slowest:.1f}s), "
            f"{len(self.pin_misses)} pins missed, final: "
            f"{'identical' if not self.final_differences else self.final_differences[:3]}",
            *[f"[{self.name}] {n}" for n in self.notes]])


def run_load(*, name: str, master: str, replica: str, password: str, home: Path, tree: Tree, replica_path: Path,
             pinner: Pinner | None, seconds: float, rate: float, every: str = "2s", check_every: float = 5.0,
             sample_every: float = 0.5, log: Callable[[str], None] = lambda line: None) -> LoadResult:
    """One lag-under-load run: create the replication ``name`` (``master``/``replica`` as
    HOST:VOLUME), an initial ``run --once``, then ``run --every EVERY`` while the writer makes
    ``rate`` changes/s for ``seconds``, the reader loops on ``replica_path``, lags are sampled
    and (with a ``pinner``) states are pinned every ``check_every`` s and compared in the
    background; last, with the writer stopped, one more update and a whole comparison of the
    replica with the master's live tree."""
    done = ndmp(home, password, "replicate", "create", name, master, replica, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"replicate create: {done.stderr.strip()}")
    checker = Checker()
    primer = threading.Thread(target=checker.master_digest.walk, args=(tree.root, time.time()), daemon=True)
    if pinner is not None:               # the live master before the writer = the first snapshot's inodes
        primer.start()
    start = time.monotonic()
    done = ndmp(home, password, "replicate", "run", name, "--once", timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"initial replicate run --once: {done.stderr.strip()} {done.stdout[-2000:]}")
    initial = time.monotonic() - start
    log(f"initial sync {initial:.1f}s")
    out = tempfile.TemporaryFile("w+")
    runner = subprocess.Popen([sys.executable, "-m", "ndmpd.dma", "replicate", "run", name, "--every", every],
                              cwd=REPO, env=ndmp_env(home, password), stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, text=True)
    writer, reader = Writer(tree, rate), Reader(replica_path, tree.pairs)
    sampler = LagSampler(lambda: ndmp(home, password, "replicate", "status", name, "--json", timeout=30).stdout,
                         every=sample_every)
    run_exit = None
    try:
        before = updates_done(home, password, name)
        if not wait_for(lambda: updates_done(home, password, name) > before or runner.poll() is not None, 120, 0.5):
            raise RuntimeError("replicate run --every made no update in 120 s")
        if primer.ident is not None:
            primer.join()
        if pinner is not None and (point := pinner.pin()):
            checker.compare(point)           # the first, uncached walks, before the clock starts
            log(f"first comparison (uncached) {checker.results[-1].seconds if checker.results else 0:.1f}s")
        writer.start(), reader.start(), sampler.start(), checker.start()
        end = time.monotonic() + seconds
        next_check = time.monotonic() + check_every
        while time.monotonic() < end and runner.poll() is None:
            time.sleep(max(0.0, min(end, next_check) - time.monotonic()))
            if pinner is not None and time.monotonic() >= next_check:
                next_check += check_every
                try:
                    if point := pinner.pin():
                        checker.points.put(point)
                except (RuntimeError, subprocess.SubprocessError) as e:
                    pinner.misses.append(str(e))
    finally:
        writer_stats = writer.stop()
        lag = sampler.stop()
        reader_stats = reader.stop()
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
            try:
                run_exit = runner.wait(timeout=60)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
        else:
            run_exit = runner.returncode
        out.seek(0)
        run_output = out.read()
        out.close()
        comparisons = checker.finish() if checker.ident is not None else []
    done = ndmp(home, password, "replicate", "run", name, "--once", timeout=900)
    final = [f"final run --once failed: {done.stderr.strip()}"] if done.returncode != 0 else \
        differences(TreeDigest().walk(tree.root), TreeDigest().walk(replica_path))
    return LoadResult(name, len(tree.files), initial, lag, writer_stats, reader_stats, comparisons, checker.errors,
                      pinner.misses if pinner else [], final, run_exit, run_output[-4000:])
