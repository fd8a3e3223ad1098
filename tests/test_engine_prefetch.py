"""The dump's read-ahead of large files (prefetch.py): the same image byte for byte, the next
large file read while one is copied on a cold cache, nothing at all on a warm one, and the
thread never outlives the dump.

Cold files are made by evicting their pages (``POSIX_FADV_DONTNEED`` after a sync), so nothing
here needs root or disturbs the rest of the machine's cache.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ndmpd.engine import prefetch
from ndmpd.engine.dump import DumpAborted, DumpOptions, Dumper
from ndmpd.engine.sink import FdSink
from tests.engine_helpers import build_every_case, dump_to
from tests.test_engine_readahead import evict_files, files_in_tree, resident
from tests.waiting import wait_for

MIB = 1 << 20


@pytest.fixture
def disk_tmp(tmp_path: Path) -> Path:
    probe = tmp_path / ".probe"
    probe.write_bytes(b"x" * 4096)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(16)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        pass
    except OSError:
        pytest.skip(f"{tmp_path} cannot report uncached reads (RWF_NOWAIT): no page cache to be cold")
    finally:
        os.close(fd)
        probe.unlink()
    return tmp_path


def write_large(path: Path, mib: int, seed: int) -> Path:
    """A file of ``mib`` MiB whose every MiB differs (a misplaced chunk changes the image)."""
    with open(path, "wb") as out:
        for n in range(mib):
            out.write(bytes([(seed + n) % 251]) * (MIB - 8) + n.to_bytes(8, "little"))
    return path


def build_large_tree(root: Path) -> Path:
    """Large files before, inside and after a subdirectory, a hard-linked and a sparse one,
    and the usual tricky cases around them."""
    build_every_case(root)
    mib = prefetch.LARGE // MIB
    write_large(root / "a_big", mib + 3, 1)
    write_large(root / "b_big", mib + 1, 2)
    (root / "c_dir").mkdir()
    write_large(root / "c_dir" / "inner_big", mib, 3)
    write_large(root / "d_big", mib + 2, 4)
    os.link(root / "d_big", root / "e_link")
    with open(root / "f_sparse", "wb") as out:
        out.seek(prefetch.LARGE * 2)
        out.write(b"end of a sparse file")
    return root


def dump_with(root: Path, stream: Path, mode: str, history: list | None = None, readahead: str = "off"):
    record = history.append if history is not None else None
    return dump_to(root, stream, DumpOptions(prefetch=mode, readahead=readahead),
                   history=(lambda entry: record((entry.path, entry.offset))) if record else None)


@pytest.mark.parametrize("mode, small_files", [("always", "always"), ("auto", "off")])
def test_the_image_and_its_history_are_the_same_with_and_without_prefetch(disk_tmp: Path, mode: str,
                                                                          small_files: str) -> None:
    """Also beside the small files' read-ahead helper, and the sparse and hard-linked large files."""
    tree = build_large_tree(disk_tmp / "tree")
    plain_history: list = []
    ahead_history: list = []
    dump_with(tree, disk_tmp / "plain.tar", "off", plain_history)
    evict_files(files_in_tree(tree))
    result = dump_with(tree, disk_tmp / "ahead.tar", mode, ahead_history, readahead=small_files)
    assert (disk_tmp / "plain.tar").read_bytes() == (disk_tmp / "ahead.tar").read_bytes()
    assert plain_history == ahead_history
    assert result.prefetched > 0, "nothing of a cold large file was asked for ahead of its copy"


class _Watch:
    """A consumer sink that, in the middle of the first large file's data, notes which of
    ``files`` enter the page cache (the dump has not opened them yet): within ``patience``
    seconds each (the thread's asking takes milliseconds)."""

    def __init__(self, at: int, files: list[Path], patience: float) -> None:
        self.at, self.files, self.patience = at, files, patience
        self.seen = 0
        self.found: dict[str, bool] | None = None

    def __call__(self, data: memoryview) -> None:
        self.seen += len(data)
        if self.found is None and self.seen > self.at:
            self.found = {path.name: wait_for(lambda: resident(path), self.patience) for path in self.files}


def _watched_dump(tree: Path, first: Path, files: list[Path], patience: float) -> dict[str, bool] | None:
    watch = _Watch(first.stat().st_size // 2, files, patience)
    sink = FdSink(watch)
    try:
        Dumper(str(tree), sink, DumpOptions(prefetch="auto", readahead="off")).run()
    finally:
        sink.close(drain=False)
    return watch.found


@pytest.mark.parametrize("null", ["usable", "missing"])
def test_a_cold_dump_reads_the_next_large_file_while_it_copies_one(disk_tmp: Path, null: str,
                                                                    monkeypatch) -> None:
    """Read into /dev/null, or only asked for (WILLNEED) where there is none to read into."""
    if null == "missing":
        monkeypatch.setattr(os, "devnull", str(disk_tmp / "no-such-device"))
    tree = disk_tmp / "tree"
    tree.mkdir()
    size = prefetch.LARGE // MIB
    first = write_large(tree / "a", size * 8, 1)     # its middle is further in than the handed sink's spares reach
    second = write_large(tree / "b", size, 2)
    evict_files([first, second])
    assert _watched_dump(tree, first, [second], patience=10) == {"b": True}, \
        "the next large file was not read ahead while the first was copied"


def test_only_what_the_walk_copies_next_is_read_ahead(disk_tmp: Path) -> None:
    """A large file after a subdirectory comes after all that is in it: not read yet; nor the
    holes of a sparse one (the dump copies only its data)."""
    tree = disk_tmp / "tree"
    (tree / "c_dir").mkdir(parents=True)
    size = prefetch.LARGE // MIB
    first = write_large(tree / "a", size * 8, 1)     # its middle is further in than the handed sink's spares reach
    sparse = tree / "b_sparse"
    with open(sparse, "wb") as out:
        out.seek(prefetch.LARGE * 2)
        out.write(b"the end")
    after_dir = write_large(tree / "d", size, 2)
    evict_files([first, sparse, after_dir])
    assert _watched_dump(tree, first, [sparse, after_dir], patience=1) == {"b_sparse": False, "d": False}


def test_a_warm_dump_starts_no_thread_and_asks_for_nothing(disk_tmp: Path) -> None:
    tree = build_large_tree(disk_tmp / "tree")
    dump_with(tree, disk_tmp / "warmup.tar", "off")
    with open(disk_tmp / "warm.tar", "wb") as out:
        sink = FdSink(out.fileno())
        dumper = Dumper(str(tree), sink, DumpOptions(prefetch="auto", readahead="off"))
        result = dumper.run()
        sink.close()
    assert dumper._prefetch is not None and not dumper._prefetch.started
    assert result.prefetched == 0


def _prefetch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "dump-prefetch"]


def test_the_thread_ends_with_the_dump_and_with_an_aborted_one(disk_tmp: Path) -> None:
    tree = disk_tmp / "tree"
    tree.mkdir()
    size = prefetch.LARGE // MIB
    files = [write_large(tree / f"f{n}", size, n) for n in range(3)]
    evict_files(files)
    dump_with(tree, disk_tmp / "whole.tar", "always")
    assert not _prefetch_threads()

    evict_files(files)
    cancel = threading.Event()
    seen = [0]

    def consume(data: memoryview) -> None:
        seen[0] += len(data)
        if seen[0] > prefetch.LARGE:
            cancel.set()               # the dump stops at its next entry

    sink = FdSink(consume)
    try:
        with pytest.raises(DumpAborted):
            Dumper(str(tree), sink, DumpOptions(prefetch="always", readahead="off"), cancel=cancel).run()
    finally:
        sink.close(drain=False)
    assert not _prefetch_threads()
