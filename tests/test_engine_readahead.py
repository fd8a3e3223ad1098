"""The dump's read-ahead helper: same image byte for byte, real reads asked for on a cold cache,
none on a warm one, and the helper never outlives the dump.

Cold files are made by evicting their pages (``POSIX_FADV_DONTNEED`` on each, after a sync), so
nothing here needs root or disturbs the rest of the machine's cache.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ndmpd.engine import readahead
from ndmpd.engine.dump import DumpAborted, DumpOptions, Dumper
from ndmpd.engine.sink import FdSink
from tests.engine_helpers import build_every_case, dump_to
from tests.waiting import wait_for



def _nowait_works(path: Path) -> bool:
    probe = path / ".probe"
    probe.write_bytes(b"x" * 4096)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(16)], 0, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return True
    except OSError:
        return False                   # tmpfs and the like: never cold, nothing to read ahead
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture
def disk_tmp(tmp_path: Path) -> Path:
    if not _nowait_works(tmp_path):
        pytest.skip(f"{tmp_path} cannot report uncached reads (RWF_NOWAIT): no page cache to be cold")
    return tmp_path


def build_many(root: Path, dirs: int = 12, files: int = 150) -> Path:
    """Small files of assorted sizes in several directories (with one hard link and a symlink)."""
    for d in range(dirs):
        folder = root / f"d{d:02d}"
        folder.mkdir(parents=True)
        for f in range(files):
            (folder / f"f{f:03d}").write_bytes(bytes([f % 251]) * ((d * 7919 + f * 104729) % 20000 + 1))
    os.link(root / "d00" / "f000", root / "d01" / "link")
    os.symlink("d00/f001", root / "sym")
    return root


def evict(root: Path, under: str = "") -> None:
    """Drop the page cache of every regular file below ``root``/``under``, and check it went
    (``DONTNEED`` skips a page it cannot drop at that moment: then again, a few times)."""
    evict_files(files_in_tree(root / under if under else root))


def evict_files(paths: list[Path]) -> None:
    """Drop the page cache of ``paths`` and check it went (as :func:`evict`)."""
    os.sync()
    left = paths
    for _ in range(20):
        for path in left:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        left = [path for path in left if resident(path)]
        if not left:
            return
        time.sleep(0.05)
    raise AssertionError(f"{len(left)} files stay cached after eviction, e.g. {left[0]}: nothing is cold")


def files_in_tree(top: Path) -> list[Path]:
    """The regular files below ``top`` (symbolic links left out)."""
    return [Path(folder, name) for folder, _, names in os.walk(top) for name in sorted(names)
            if os.path.isfile(os.path.join(folder, name)) and not os.path.islink(os.path.join(folder, name))]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident(path: Path) -> bool:
    """Whether any page of the file is in the page cache. ``mincore`` looks without reading (a
    ``RWF_NOWAIT`` probe starts the read it finds missing, and on a loaded machine that read may
    be done before the probe looks again: cold files then read as cached)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if not size:
            return False
        with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as mapped:
            anchor = ctypes.c_char.from_buffer(mapped)
            try:
                vector = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
                if _libc.mincore(ctypes.addressof(anchor), size, vector) != 0:
                    raise OSError(ctypes.get_errno(), "mincore")
                return any(byte & 1 for byte in vector.raw)
            finally:
                del anchor
    finally:
        os.close(fd)


def dump_with(root: Path, stream: Path, mode: str, history: list | None = None, **options):
    record = history.append if history is not None else None
    return dump_to(root, stream, DumpOptions(readahead=mode, **options),
                   history=(lambda entry: record((entry.path, entry.offset))) if record else None)


def test_the_image_and_its_history_are_the_same_with_and_without_read_ahead(disk_tmp: Path) -> None:
    tree = build_every_case(disk_tmp / "tricky")
    build_many(tree / "many")
    plain_history: list = []
    ahead_history: list = []
    dump_with(tree, disk_tmp / "plain.tar", "off", plain_history)
    evict(tree)
    result = dump_with(tree, disk_tmp / "ahead.tar", "always", ahead_history)
    assert (disk_tmp / "plain.tar").read_bytes() == (disk_tmp / "ahead.tar").read_bytes()
    assert plain_history == ahead_history
    assert result.read_ahead > 0, "the helper asked for no file of a cold tree"


def test_an_incremental_is_the_same_and_reads_ahead_only_what_changed(disk_tmp: Path) -> None:
    tree = build_many(disk_tmp / "tree")
    since = time.time_ns()
    time.sleep(0.02)
    for d in (3, 7):
        (tree / f"d{d:02d}" / "f010").write_bytes(b"changed" * 100)
    dump_with(tree, disk_tmp / "plain.tar", "off", since_ns=since)
    evict(tree)
    result = dump_with(tree, disk_tmp / "ahead.tar", "always", since_ns=since)
    assert (disk_tmp / "plain.tar").read_bytes() == (disk_tmp / "ahead.tar").read_bytes()
    assert result.read_ahead <= 2          # never an unchanged file (the helper may start after the end)


def test_exclusions_and_a_live_tree_keep_the_image(disk_tmp: Path) -> None:
    tree = build_many(disk_tmp / "tree")
    dump_with(tree, disk_tmp / "plain.tar", "off", excludes=("d0[2-5]", "*7"))
    evict(tree)
    dump_with(tree, disk_tmp / "ahead.tar", "always", excludes=("d0[2-5]", "*7"))
    assert (disk_tmp / "plain.tar").read_bytes() == (disk_tmp / "ahead.tar").read_bytes()


def test_a_warm_tree_never_starts_the_helper(disk_tmp: Path) -> None:
    tree = build_many(disk_tmp / "tree")
    dump_with(tree, disk_tmp / "warmup.tar", "off")
    with open(disk_tmp / "warm.tar", "wb") as out:
        sink = FdSink(out.fileno())
        dumper = Dumper(str(tree), sink, DumpOptions(readahead="auto"))
        result = dumper.run()
        sink.close()
    assert dumper._readahead is not None and not dumper._readahead.started
    assert result.read_ahead == 0


@pytest.mark.parametrize("sparse, dense, dense_entries", [
    (40, 1, readahead.START_AFTER_MISSES),     # read-ahead marks of a cold read: 1 in 40, then a run
    (20, 4, readahead.MISS_SPAN),              # pages dropped here and there: 1 in 20, then 1 in 4
])
def test_scattered_misses_do_not_start_the_helper_and_close_ones_do(tmp_path: Path, sparse: int, dense: int,
                                                                     dense_entries: int) -> None:
    """One read in 40 that waited (as the read-ahead marks an earlier cold read leaves look to
    RWF_NOWAIT), or one in 20 all along the walk (a machine short of memory dropped pages here
    and there: fewer than the helper finds worth asking for) is a warm cache: the helper stays
    unstarted; ``START_AFTER_MISSES`` in a row, or one in 4, start it. Driven through the dump's
    calls, not the page cache: which reads wait on a loaded machine is the kernel's timing (a
    probe's own read may finish before it looks again)."""
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    position = 0
    ahead = readahead.ReadAhead(root_fd, None, frozenset(), (), None, lambda: (position, []))
    try:
        for position in range(1, 40 * readahead.MISS_SPAN):
            ahead.seen(position)
            if position % sparse == 0:
                ahead.missed()
        assert not ahead.started
        for position in range(position, position + dense_entries):
            ahead.seen(position)
            if position % dense == 0:
                ahead.missed()
        assert ahead.started
    finally:
        ahead.stop()
        os.close(root_fd)


def test_a_cold_tree_starts_the_helper_on_its_own(disk_tmp: Path) -> None:
    tree = build_many(disk_tmp / "tree")
    evict(tree)
    result = dump_with(tree, disk_tmp / "auto.tar", "auto")
    assert result.read_ahead > 0


class HelperRun:
    """The helper's walk run in a thread of this process against a page the test writes, as the
    dump would: deterministic, with no dump racing it."""

    def __init__(self, tree: Path, since: int | None = None, excludes: tuple[str, ...] = ()) -> None:
        self.shared_fd = os.memfd_create("test-readahead")
        os.ftruncate(self.shared_fd, readahead._PAGE)
        self.page = mmap.mmap(self.shared_fd, readahead._PAGE)
        self.slots = memoryview(self.page).cast("q")
        read_end, self.pipe = os.pipe()
        settings = {"root_fd": os.open(tree, os.O_RDONLY | os.O_DIRECTORY), "shared_fd": self.shared_fd,
                    "pipe_fd": read_end, "root_dev": None, "skip": [], "excludes": list(excludes),
                    "since": since, "window_entries": readahead.WINDOW_ENTRIES,
                    "window_bytes": readahead.WINDOW_BYTES}
        self.helper = readahead._Helper(settings)
        self.thread = threading.Thread(target=self.helper.run, daemon=True)
        self.thread.start()

    def wait_for(self, check, seconds: float = 60) -> None:
        assert wait_for(check, seconds, 0.01), "the helper did not get there"

    def jump(self, position: int, path: bytes) -> None:
        """What the dump's missed() publishes: where it is, then one more miss."""
        self.page[readahead._PATH_AT:readahead._PATH_AT + len(path)] = path
        self.slots[readahead._PATH_LENGTH] = len(path)
        self.slots[readahead._POSITION] = position
        self.slots[readahead._MISSES] += 1

    def finish(self) -> tuple[int, int]:
        os.close(self.pipe)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the helper did not end when the pipe closed"
        counts = (self.slots[readahead._ASKED], self.slots[readahead._CACHED])
        self.slots.release()
        self.page.close()
        os.close(self.shared_fd)
        return counts


def test_the_helper_asks_for_exactly_the_changed_files_of_an_incremental(disk_tmp: Path) -> None:
    tree = build_many(disk_tmp / "tree")
    since = time.time_ns()
    time.sleep(0.02)
    for d in (3, 7, 11):
        (tree / f"d{d:02d}" / "f010").write_bytes(b"changed" * 100)
    evict(tree)
    run = HelperRun(tree, since=since)
    run.wait_for(lambda: not run.thread.is_alive(), 120)
    asked, cached = run.finish()
    assert asked + cached == 3
    changed = [tree / f"d{d:02d}" / "f010" for d in (3, 7, 11)]
    assert wait_for(lambda: all(map(resident, changed)), 30), "a changed file was not read"
    assert [path for path in files_in_tree(tree) if path not in changed and resident(path)] == []


def test_the_helper_leaves_out_what_the_dump_excludes(disk_tmp: Path) -> None:
    tree = build_many(disk_tmp / "tree", dirs=6, files=50)
    evict(tree)
    run = HelperRun(tree, excludes=("d0[1-3]", "f00*"))
    run.wait_for(lambda: not run.thread.is_alive(), 120)
    asked, cached = run.finish()
    assert asked + cached == 3 * 40                     # d00, d04, d05 less their f000-f009 (d01 is out)
    wanted = [path for path in files_in_tree(tree)
              if path.parent.name in ("d00", "d04", "d05") and not path.name.startswith("f00")]
    assert len(wanted) == 3 * 40
    assert wait_for(lambda: all(map(resident, wanted)), 30), "an included file was not read"
    assert [path for path in files_in_tree(tree) if path not in wanted and resident(path)] == []


def test_the_helper_sleeps_while_warm_and_wakes_where_the_dump_is(disk_tmp: Path) -> None:
    """A tree cached at the front and cold at the back: the helper finds the front cached and
    sleeps; a miss of the dump at the back wakes it there, and it asks for the back's files."""
    tree = build_many(disk_tmp / "tree", dirs=10, files=150)
    for d in range(6, 10):
        evict(tree, f"d{d:02d}")
    front = [path for d in range(6) for path in files_in_tree(tree / f"d{d:02d}")]
    # cached again where the kernel dropped pages (a machine short of memory): written afresh, not
    # read, since a read from disk leaves the kernel's read-ahead marks, where a RWF_NOWAIT probe
    # stops short as at a missing page
    assert wait_for(lambda: not [_rewrite(path) for path in front if not resident(path)], 60), \
        "the front of the tree does not stay cached: nothing is warm"
    run = HelperRun(tree)
    run.wait_for(lambda: run.slots[readahead._CACHED] >= readahead.WARM_RUN)
    time.sleep(0.2)
    assert run.slots[readahead._ASKED] == 0 and run.slots[readahead._CACHED] == readahead.WARM_RUN
    run.jump(0, b"d06/f000")
    run.wait_for(lambda: not run.thread.is_alive(), 120)
    asked, cached = run.finish()
    assert asked + cached == 4 * 150 + readahead.WARM_RUN                         # the back, and only it
    back = [path for d in range(6, 10) for path in files_in_tree(tree / f"d{d:02d}")]
    assert wait_for(lambda: all(map(resident, back)), 30), "a file of the cold back was not read"


def test_the_helper_sleeps_where_only_a_few_files_are_uncached(disk_tmp: Path) -> None:
    """One file in 20 dropped from the cache, all through the tree: the helper asks for those it
    meets and sleeps after ``WARM_RUN`` probes, instead of probing the whole tree for a run of
    ``WARM_RUN`` cached files in a row that never comes."""
    tree = build_many(disk_tmp / "tree", dirs=10, files=150)
    files = files_in_tree(tree)
    assert wait_for(lambda: not [_rewrite(path) for path in files if not resident(path)], 60), \
        "the tree does not stay cached: nothing is warm"
    evict_files(files[::20])
    run = HelperRun(tree)
    run.wait_for(lambda: run.slots[readahead._CACHED] + run.slots[readahead._ASKED] >= readahead.WARM_RUN)
    time.sleep(0.3)
    asked, cached = run.finish()
    assert asked + cached == readahead.WARM_RUN < len(files)          # asleep: the rest not probed
    assert 0 < asked <= readahead.WARM_MISSES                        # it met uncached files, and asked


def _rewrite(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def _helpers(parent: int) -> list[int]:
    """The read-ahead helpers ``parent`` started (by parent: another dump on the machine, a
    test run beside this one, has helpers of its own)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                if ppid == parent and _is_helper(int(pid)):
                    found.append(int(pid))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _is_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ndmpd.engine.readahead" in f.read()
    except OSError:
        return False


def _alive(pids: list[int], seconds: float = 30) -> list[int]:
    """Those of ``pids`` still running after up to ``seconds``."""
    wait_for(lambda: not any(_is_helper(pid) for pid in pids), seconds)
    return [pid for pid in pids if _is_helper(pid)]


def test_an_aborted_dump_stops_its_helper(disk_tmp: Path, monkeypatch) -> None:
    # a window of 64 entries: the helper cannot finish its walk of 3,000 on its own before the
    # abort at 600 (with the default 8,192 it may, and there would be nothing to stop)
    monkeypatch.setattr(readahead, "WINDOW_ENTRIES", 64)
    tree = build_many(disk_tmp / "tree", dirs=20, files=150)
    evict(tree)
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int, entries: int) -> None:
        seen.extend(pid for pid in _helpers(os.getpid()) if pid not in seen)
        if entries > 600:
            cancel.set()

    with open(disk_tmp / "cut.tar", "wb") as out:
        sink = FdSink(out.fileno())
        dumper = Dumper(str(tree), sink, DumpOptions(readahead="always"), progress=progress, cancel=cancel)
        with pytest.raises(DumpAborted):
            dumper.run()
        sink.close(drain=False)
    assert seen, "no helper was running during the dump"
    assert not _alive(seen, 0), "the helper outlived the aborted dump"


_DUMP_FOREVER = """
import os, sys, time
from ndmpd.engine import readahead
from ndmpd.engine.dump import DumpOptions, Dumper
from ndmpd.engine.sink import FdSink
readahead.WINDOW_ENTRIES = 64     # the helper stays near the stuck dump: it cannot end on its own
read_end, write_end = os.pipe()
sink = FdSink(write_end)          # nobody reads: the dump blocks once the pipe and buffers fill
print("started", flush=True)
Dumper(sys.argv[1], sink, DumpOptions(readahead="always")).run()
"""


def test_the_helper_ends_when_the_dumping_process_is_killed(disk_tmp: Path) -> None:
    tree = build_many(disk_tmp / "tree", dirs=20, files=150)
    evict(tree)
    dumping = subprocess.Popen([sys.executable, "-c", _DUMP_FOREVER, str(tree)], stdout=subprocess.PIPE,
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        assert dumping.stdout.readline().strip() == b"started"
        helpers: list[int] = []
        assert wait_for(lambda: helpers.extend(_helpers(dumping.pid)) or helpers, 60), "no helper started"
        assert dumping.poll() is None, "the dump ended: nothing was killed"
        dumping.send_signal(signal.SIGKILL)
        dumping.wait(timeout=30)
        assert not _alive(helpers), "the helper outlived its killed dump"
    finally:
        if dumping.poll() is None:
            dumping.kill()
            dumping.wait()


def test_a_file_system_that_cannot_report_misses_dumps_the_same_and_starts_nothing(tmp_path: Path) -> None:
    """tmpfs refuses RWF_NOWAIT: the dump times its reads instead, and memory is never slow."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or _nowait_works(shm):
        pytest.skip("no tmpfs at /dev/shm that refuses RWF_NOWAIT")
    import tempfile
    with tempfile.TemporaryDirectory(dir=shm) as scratch:
        tree = build_many(Path(scratch) / "tree", dirs=4, files=100)
        dump_with(tree, tmp_path / "plain.tar", "off")
        with open(tmp_path / "auto.tar", "wb") as out:
            sink = FdSink(out.fileno())
            dumper = Dumper(str(tree), sink, DumpOptions(readahead="auto"))
            dumper.run()
            sink.close()
        assert not dumper._readahead.started
    assert (tmp_path / "plain.tar").read_bytes() == (tmp_path / "auto.tar").read_bytes()
