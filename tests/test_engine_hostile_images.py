"""Hostile images, class by class: a header that would move the reader backwards, extended
headers that would grow without bound, members with garbage in any field, names that are the
target itself, and restores that would delete or widen what they did not make. Each bad member
is refused and reported on its own; the rest of the image is restored."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from ndmpd.engine import pax, report
from ndmpd.engine.job import DumpRequest, dump_volume
from ndmpd.engine.reader import StreamReader
from ndmpd.engine.restore import RestoreOptions
from ndmpd.engine.select import Pick
from ndmpd.engine.target import Target
from tests.engine_helpers import IS_ROOT, restore_from

T = TypeVar("T")
TREE = Path(__file__).resolve().parent.parent
WRITER = pax.HeaderWriter()
END = bytes(1024)


def member(name: bytes, data: bytes = b"", typeflag: bytes = pax.REGTYPE, mode: int = 0o644,
           records: bytes = b"", linkname: bytes = b"", devmajor: int = 0, devminor: int = 0) -> bytes:
    """One member as raw stream bytes: an optional pax header with ``records``, the ustar block, data."""
    head = pax.extended_header(records) if records else b""
    block = pax.ustar_block(name[:100], mode, 0, 0, len(data), 1_000_000_000, typeflag, linkname[:100],
                            devmajor=devmajor, devminor=devminor)
    return head + block + data + bytes(pax.round_up(len(data)) - len(data))


def negative_size_header(typeflag: bytes) -> bytes:
    """An extended header block whose base-256 size is -512: read as a count, it steps back."""
    block = bytearray(pax.ustar_block(b"././@LongLink", 0o644, 0, 0, 0, 0, typeflag))
    block[124:136] = pax._base256(-512, 12)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % pax.block_sum(bytes(block))
    return bytes(block)


def peak_memory(work: Callable[[], T]) -> tuple[T, int]:
    """What ``work`` returns, and the most memory Python held while it ran."""
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def write(path: Path, stream: bytes) -> Path:
    path.write_bytes(stream)
    return path


def restore_cli(target: Path, stream: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    with open(stream, "rb") as source:
        return subprocess.run([sys.executable, "-m", "ndmpd", "restore", str(target), *args], stdin=source,
                              capture_output=True, text=True, timeout=timeout, cwd=TREE,
                              env={**os.environ, "PYTHONPATH": str(TREE)})


# -- the reader always moves forward -------------------------------------------------------


@pytest.mark.parametrize("typeflag", [pax.GNU_LONGNAME, pax.XHDTYPE, pax.XGLTYPE])
def test_negative_extended_header_size_does_not_loop(tmp_path, typeflag):
    stream = write(tmp_path / "neg.tar", negative_size_header(typeflag) + member(b"after", b"still here") + END)
    done = restore_cli(tmp_path / "out", stream, timeout=30)
    assert (tmp_path / "out" / "after").read_bytes() == b"still here", done.stderr
    assert "negative size" in done.stderr


def test_negative_member_size_is_a_damaged_header_not_a_step_back(tmp_path):
    block = bytearray(pax.ustar_block(b"liar", 0o644, 0, 0, 0, 0, pax.REGTYPE))
    block[124:136] = pax._base256(-1 << 40, 12)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % pax.block_sum(bytes(block))
    stream = write(tmp_path / "neg.tar", bytes(block) + member(b"after", b"ok") + END)
    result = restore_from(stream, tmp_path / "out")
    assert (tmp_path / "out" / "after").read_bytes() == b"ok"
    assert not (tmp_path / "out" / "liar").exists()
    assert any("negative size" in w for w in result.warnings)


# -- extended headers: capped in total, globals never copied per member ---------------------


def test_consecutive_extended_headers_are_capped_in_total(tmp_path):
    """Each header is under the 1 MiB limit; together they would hold 24 MiB in memory."""
    chunk = b"x" * ((1 << 20) - 64)
    heads = b"".join(pax.extended_header(pax.pax_record(b"k%d" % n, chunk)) for n in range(24))
    stream = write(tmp_path / "many.tar", heads + member(b"victim", b"v") + member(b"survivor", b"s") + END)
    result, peak = peak_memory(lambda: restore_from(stream, tmp_path / "out"))
    assert peak < 12 << 20, f"{peak} bytes held"
    assert sorted(os.listdir(tmp_path / "out")) == ["survivor"]
    assert any("extended header" in w for w in result.warnings)


def test_global_headers_are_capped_in_total(tmp_path):
    chunk = b"y" * ((1 << 20) - 64)
    globals_ = b"".join(pax.extended_header(pax.pax_record(b"g%d" % n, chunk), pax.XGLTYPE) for n in range(12))
    stream = write(tmp_path / "globals.tar", globals_ + member(b"file", b"f") + END)
    with open(stream, "rb") as source:
        reader = StreamReader(source.fileno())
        names, peak = peak_memory(lambda: [m.name for m in reader.members()])
    assert names == [b"file"]
    assert peak < 8 << 20, f"{peak} bytes held"


def _listing_seconds(stream: Path, members: int = 4000) -> float:
    with open(stream, "rb") as source:
        start = time.perf_counter()
        count = sum(1 for _ in StreamReader(source.fileno()).members())
        elapsed = time.perf_counter() - start
    assert count == members
    return elapsed


def test_a_big_global_header_costs_later_members_nothing(tmp_path):
    members = b"".join(WRITER.headers(b"f%d" % n, 0o644, 0, 0, 0, 0, pax.REGTYPE) for n in range(4000)) + END
    tiny = b"".join(pax.pax_record(b"k%d" % n, b"") for n in range(90_000))[: (1 << 20) - 1024]
    tiny = tiny[:tiny.rindex(b"\n") + 1]
    plain = _listing_seconds(write(tmp_path / "plain.tar", members))
    header = pax.extended_header(tiny, pax.XGLTYPE)
    alone = min(_listing_seconds(write(tmp_path / "alone.tar", header + END), 0) for _ in range(2))
    with_global = _listing_seconds(write(tmp_path / "global.tar", header + members))
    # reading the header itself costs what it costs (alone); the members after it cost nothing more
    assert with_global - alone < 4 * plain + 0.5, (plain, alone, with_global)


# -- one bad member is one refusal ----------------------------------------------------------

BAD_MEMBERS = {
    "nul-in-path": member(b"x", b"1", records=pax.pax_record(b"path", b"bad\0name")),
    "nul-in-link-target": member(b"link", typeflag=pax.SYMTYPE, records=pax.pax_record(b"linkpath", b"a\0b")),
    "nul-in-xattr-name": member(b"x", b"1", records=pax.pax_record(b"SCHILY.xattr.user.a\0b", b"v")),
    "nul-in-user-name": member(b"x", b"1", records=pax.pax_record(b"uname", b"ro\0ot")),
    "mtime-far-future": member(b"x", b"1", records=pax.pax_record(b"mtime", b"9" * 19 + b"0")),
    "mtime-in-header-base256": None,    # built below
    "uid-negative-base256": None,
    "uid-huge": member(b"x", b"1", records=pax.pax_record(b"uid", b"99999999999")),
    "device-number-huge": member(b"dev", typeflag=pax.CHRTYPE, devmajor=1 << 40),
    "sparse-0x-offset-beyond-file": member(b"x", b"abc", records=pax.pax_record(b"GNU.sparse.major", b"0")
                                           + pax.pax_record(b"GNU.sparse.size", b"10")
                                           + pax.pax_record(b"GNU.sparse.map", b"%d,3" % (1 << 64))),
    "sparse-1.0-offset-beyond-file": member(b"x", b"1\n%d\n3\n".ljust(512, b"\0") % (1 << 64) + b"abc",
                                            records=pax.pax_record(b"GNU.sparse.major", b"1")
                                            + pax.pax_record(b"GNU.sparse.minor", b"0")
                                            + pax.pax_record(b"GNU.sparse.realsize", b"10")
                                            + pax.pax_record(b"GNU.sparse.name", b"sparse")),
    "sparse-1.0-map-past-member": member(b"x", b"5\n1\n", records=pax.pax_record(b"GNU.sparse.major", b"1")
                                         + pax.pax_record(b"GNU.sparse.realsize", b"10")),
}


def _with_raw_field(name: bytes, at: slice, value: bytes) -> bytes:
    block = bytearray(pax.ustar_block(name, 0o644, 0, 0, 1, 0, pax.REGTYPE))
    block[at] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % pax.block_sum(bytes(block))
    return bytes(block) + b"1".ljust(512, b"\0")


BAD_MEMBERS["mtime-in-header-base256"] = _with_raw_field(b"x", slice(136, 148), b"\x80" + b"\xff" * 11)
BAD_MEMBERS["uid-negative-base256"] = _with_raw_field(b"x", slice(108, 116), pax._base256(-5, 8))


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_a_member_with_garbage_in_a_field_is_refused_alone(tmp_path, case):
    stream = write(tmp_path / "bad.tar", member(b"before", b"b") + BAD_MEMBERS[case] + member(b"after", b"a") + END)
    result = restore_from(stream, tmp_path / "out", RestoreOptions(devices=True, owners=True))
    out = tmp_path / "out"
    assert (out / "before").read_bytes() == b"b" and (out / "after").read_bytes() == b"a"
    assert result.complete
    assert result.refused_count == 1, (result.refused, result.warnings)
    assert sorted(os.listdir(out)) == ["after", "before"]     # nothing half-made of the bad one


def test_a_path_a_thousand_directories_deep_does_not_end_the_restore(tmp_path):
    deep = b"/".join([b"d"] * 1200) + b"/leaf"
    stream = write(tmp_path / "deep.tar", member(b"x", b"1", records=pax.pax_record(b"path", deep))
                   + member(b"after", b"a") + END)
    result = restore_from(stream, tmp_path / "out")
    assert (tmp_path / "out" / "after").read_bytes() == b"a"
    assert result.complete and result.refused_count == 0, result.refused
    assert os.path.exists(os.fsdecode(bytes(tmp_path / "out") + b"/" + deep))
    target = Target(str(tmp_path / "out"))          # too deep for pytest's recursive clean-up
    try:
        target.remove((b"d",), target.fd, b"d", os.lstat(tmp_path / "out" / "d"))
    finally:
        target.close()


def test_any_failure_inside_a_member_is_its_own(tmp_path, monkeypatch):
    """The class, not the examples: an unexpected exception while writing one member."""
    from ndmpd.engine import restore as restore_module
    real = restore_module.Restorer._regular

    def flaky(self, reader, m, *args):
        if m.name == b"boom":
            raise OverflowError("some field nobody checked")
        return real(self, reader, m, *args)

    monkeypatch.setattr(restore_module.Restorer, "_regular", flaky)
    failures = []
    stream = write(tmp_path / "s.tar", member(b"boom", b"x" * 3000) + member(b"after", b"a") + END)
    result = restore_from(stream, tmp_path / "out", entry_done=lambda m, placed, f: failures.append(f))
    assert (tmp_path / "out" / "after").read_bytes() == b"a"
    assert result.refused_count == 1 and "some field nobody checked" in result.refused[0]
    assert [f.kind for f in failures if f] == [report.INVALID]


# -- the target itself ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"", b".", b"./."])   # (b"./" is a directory by its slash, as for tar)
def test_a_non_directory_named_as_the_target_is_reported(tmp_path, name):
    stream = write(tmp_path / "s.tar", member(name, b"where?") + member(b"after", b"a") + END)
    result = restore_from(stream, tmp_path / "out")
    assert result.refused_count == 1 and "restore target itself" in result.refused[0]
    assert (tmp_path / "out" / "after").read_bytes() == b"a"


def test_the_images_root_entry_does_not_widen_an_existing_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    os.chmod(target, 0o750)
    before = os.stat(target)
    stream = write(tmp_path / "s.tar", member(b"./", typeflag=pax.DIRTYPE, mode=0o777,
                                              records=pax.pax_record(b"uid", b"4242"))
                   + member(b"./file", b"f") + END)
    restore_from(stream, target)
    after = os.stat(target)
    assert stat.S_IMODE(after.st_mode) == 0o750
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert (target / "file").read_bytes() == b"f"


def test_the_images_root_placed_in_an_existing_directory_does_not_widen_it(tmp_path):
    (tmp_path / "out" / "prefix").mkdir(parents=True)
    os.chmod(tmp_path / "out" / "prefix", 0o700)
    stream = write(tmp_path / "s.tar", member(b"./", typeflag=pax.DIRTYPE, mode=0o777) + member(b"./f", b"f") + END)
    restore_from(stream, tmp_path / "out", RestoreOptions(picks=(Pick.parse("=prefix"),)))
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "prefix").st_mode) == 0o700
    assert (tmp_path / "out" / "prefix" / "f").read_bytes() == b"f"


def test_the_images_root_entry_sets_a_target_the_restore_creates(tmp_path):
    stream = write(tmp_path / "s.tar", member(b"./", typeflag=pax.DIRTYPE, mode=0o751) + END)
    restore_from(stream, tmp_path / "new")
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o751


# -- selective restores ---------------------------------------------------------------------


def _dir_image(tmp_path: Path) -> Path:
    return write(tmp_path / "dirs.tar", member(b"./", typeflag=pax.DIRTYPE, mode=0o755)
                 + member(b"./dir/", typeflag=pax.DIRTYPE, mode=0o755)
                 + member(b"./dir/sub/", typeflag=pax.DIRTYPE, mode=0o751)
                 + member(b"./dir/sub/file", b"f", mode=0o640)
                 + member(b"./dir/other", b"o") + END)


def test_a_selective_restore_gives_the_directories_it_creates_the_images_modes(tmp_path):
    out = tmp_path / "out"
    result = restore_from(_dir_image(tmp_path), out, RestoreOptions(picks=(Pick.parse("dir/sub/file"),)))
    assert result.refused == []
    assert stat.S_IMODE(os.stat(out / "dir").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "dir" / "sub").st_mode) == 0o751
    assert stat.S_IMODE(os.stat(out / "dir" / "sub" / "file").st_mode) == 0o640
    assert not (out / "dir" / "other").exists()


def test_directories_made_above_a_moved_pick_stand_for_those_above_its_source(tmp_path):
    """As an NDMP nlist under a prefix places it: the directories above the destination take,
    height for height, the modes of those above the source; any higher one the mkdir mode."""
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        restore_from(_dir_image(tmp_path), out,
                     RestoreOptions(picks=(Pick.parse("dir/sub/file=restore/x/dir/sub/file"),)))
    finally:
        os.umask(old)
    assert (out / "restore" / "x" / "dir" / "sub" / "file").read_bytes() == b"f"
    assert stat.S_IMODE(os.stat(out / "restore").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(out / "restore" / "x").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(out / "restore" / "x" / "dir").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "restore" / "x" / "dir" / "sub").st_mode) == 0o751


# -- deletions: only what the image itself restored there -----------------------------------


@pytest.fixture
def chain(tmp_path):
    """A level 0 and a level 1 of a tree whose sub/ lost a file in between."""
    src, state = tmp_path / "src", tmp_path / "state"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "kept").write_text("kept")
    (src / "sub" / "removed").write_text("removed later")
    (src / "top").write_text("top")
    streams = [tmp_path / "l0.tar", tmp_path / "l1.tar"]
    for level, stream in enumerate(streams):
        if level:
            time.sleep(0.02)
            (src / "sub" / "removed").unlink()
            (src / "sub" / "new").write_text("new")
        with open(stream, "wb") as out:
            dump_volume(DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", level=level,
                                    update=True), out.fileno())
    return streams


def test_restoring_a_subdirectory_of_an_incremental_keeps_the_destinations_contents(tmp_path, chain):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_text("the admin's own file")
    (dest / "also-mine").mkdir()
    done = restore_cli(dest, chain[1], "--select", "sub=")
    assert (dest / "mine").read_text() == "the admin's own file", done.stderr
    assert (dest / "also-mine").is_dir()
    assert (dest / "new").read_text() == "new"


def test_a_forced_incremental_selective_restore_deletes_only_what_it_restored(tmp_path, chain):
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "mine").write_text("mine")
    restore_from(chain[1], dest, RestoreOptions(picks=(Pick.parse("sub"),), incremental=True))
    assert (dest / "sub" / "mine").read_text() == "mine"
    restore_from(chain[0], dest, RestoreOptions(picks=(Pick.parse("sub"),)))
    restore_from(chain[1], dest, RestoreOptions(picks=(Pick.parse("sub"),), incremental=True))
    assert sorted(os.listdir(dest / "sub")) == ["kept", "mine", "new"]


def test_a_whole_chain_restore_still_replays_deletions(tmp_path, chain):
    out = tmp_path / "out"
    for stream in chain:
        assert restore_from(stream, out).refused == []
    assert sorted(os.listdir(out / "sub")) == ["kept", "new"]
    out2 = tmp_path / "out2"                 # the whole image placed under a prefix is whole too
    for stream in chain:
        restore_from(stream, out2, RestoreOptions(picks=(Pick.parse("=copy"),)))
    assert sorted(os.listdir(out2 / "copy" / "sub")) == ["kept", "new"]


# -- failures carry their kind ---------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="mounts a small tmpfs")
def test_a_full_disk_is_reported_as_no_space(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        failures = {}
        stream = write(tmp_path / "big.tar", member(b"big1.bin", os.urandom(1 << 20)) + member(b"small", b"s") + END)
        result = restore_from(stream, small, entry_done=lambda m, placed, f: failures.__setitem__(m.name, f))
        assert failures[b"big1.bin"].kind == report.NO_SPACE
        assert "No space" in failures[b"big1.bin"].text
        assert (small / "small").read_bytes() == b"s" and not (small / "big1.bin").exists()
        assert result.refused_count == 1
    finally:
        subprocess.run(["umount", str(small)], check=True)


# -- more of each class ---------------------------------------------------------------------


def test_an_absurd_sparse_map_is_refused_without_reading_past_its_member(tmp_path):
    claims = b"1048576\n" + b"0\n1\n" * 10       # a million extents announced, ten given, then the next member
    stream = write(tmp_path / "s.tar", member(b"x", claims, records=pax.pax_record(b"GNU.sparse.major", b"1")
                                              + pax.pax_record(b"GNU.sparse.realsize", b"1000"))
                   + member(b"after", b"a") + END)
    result = restore_from(stream, tmp_path / "out")
    assert (tmp_path / "out" / "after").read_bytes() == b"a"
    assert result.refused_count == 1 and "sparse map" in result.refused[0]


def test_a_long_sparse_map_stays_small_in_memory(tmp_path):
    count = 1 << 17
    text = b"%d\n" % count + b"".join(b"%d\n1\n" % (2 * n) for n in range(count))
    text += bytes(pax.round_up(len(text)) - len(text))
    data = text + b"x" * count
    records = (pax.pax_record(b"GNU.sparse.major", b"1") + pax.pax_record(b"GNU.sparse.minor", b"0")
               + pax.pax_record(b"GNU.sparse.realsize", b"%d" % (2 * count)))
    head = pax.extended_header(records) + pax.ustar_block(b"many", 0o644, 0, 0, len(data), 0, pax.REGTYPE)
    stream = write(tmp_path / "s.tar", head + data + bytes(pax.round_up(len(data)) - len(data)) + END)
    result, peak = peak_memory(lambda: restore_from(stream, tmp_path / "out"))
    assert result.refused == []
    assert os.path.getsize(tmp_path / "out" / "many") == 2 * count
    assert peak < 8 << 20, f"{peak} bytes held for the map"     # as tuples it took 18 MiB


def test_a_huge_pax_size_ends_the_stream_clearly_and_keeps_what_came_before(tmp_path):
    stream = write(tmp_path / "s.tar", member(b"before", b"b")
                   + member(b"liar", b"x", records=pax.pax_record(b"size", b"%d" % (1 << 62)))
                   + member(b"after", b"a") + END)
    result = restore_from(stream, tmp_path / "out")
    assert not result.complete and any("truncated" in w for w in result.warnings)
    assert sorted(os.listdir(tmp_path / "out")) == ["before"]      # no half-written "liar"


@pytest.mark.parametrize("path", [b"../up", b"a/../../up", b"/abs", b"a/b/../../../up", b"./../up"])
def test_pax_paths_climbing_out_are_refused(tmp_path, path):
    (tmp_path / "up").mkdir()
    stream = write(tmp_path / "s.tar", member(b"decoy", b"x", records=pax.pax_record(b"path", path))
                   + member(b"after", b"a") + END)
    result = restore_from(stream, tmp_path / "out")
    assert result.refused_count == 1
    assert os.listdir(tmp_path / "up") == [] and (tmp_path / "out" / "after").exists()


def test_repeated_names_end_as_the_last_member_says(tmp_path):
    stream = write(tmp_path / "s.tar", member(b"n", b"file") + member(b"n", typeflag=pax.DIRTYPE)
                   + member(b"n/inside", b"i") + member(b"n", b"file again")
                   + member(b"n", typeflag=pax.SYMTYPE, linkname=b"elsewhere") + END)
    result = restore_from(stream, tmp_path / "out")
    assert result.refused == []
    assert os.readlink(tmp_path / "out" / "n") == "elsewhere"


# -- cancel ---------------------------------------------------------------------------------


class _EndlessGarbage:
    """A source that never ends: one member, then blocks that never parse as a header."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.junk = bytes(range(1, 256)) * 4112

    def readinto(self, view: memoryview) -> int:
        data = self.head or self.junk
        self.head = b""
        got = min(len(view), len(data))
        view[:got] = data[:got]
        return got


@pytest.mark.parametrize("after", [b"", negative_size_header(pax.XHDTYPE)])
def test_cancel_stops_a_restore_stuck_inside_the_reader(tmp_path, after):
    import threading
    from ndmpd.engine.restore import RestoreAborted, Restorer
    cancel = threading.Event()
    outcome = []

    def run():
        try:
            Restorer(str(tmp_path / "out"), _EndlessGarbage(member(b"first", b"1") + after), cancel=cancel,
                     entry_done=lambda m, placed, f: cancel.set()).run()
            outcome.append("finished")
        except RestoreAborted:
            outcome.append("aborted")

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert outcome == ["aborted"]
    assert (tmp_path / "out" / "first").read_bytes() == b"1"


def test_refusals_of_megabyte_names_stay_small(tmp_path):
    name = b"../" + b"n" * 1_000_000
    stream = write(tmp_path / "s.tar", member(b"x", b"1", records=pax.pax_record(b"path", name)) * 20 + END)
    reported = []
    result = restore_from(stream, tmp_path / "out", report=reported.append)
    assert result.refused_count == 20
    assert max(len(m) for m in reported) < 2000 and max(len(m) for m in result.refused) < 2000
