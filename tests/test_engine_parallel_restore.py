"""A restore through the writer processes (writers.py) ends exactly as the inline restore does:
the same tree (contents, modes, owners, times, xattrs, hard links, sparse files, directory times),
the same refusals and warnings, whatever the image does to the names the writers are writing."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from ndmpd.engine import pax
from ndmpd.engine.restore import RestoreAborted, RestoreOptions, Restorer
from ndmpd.engine.target import split_safe
from tests.engine_helpers import IS_ROOT, build_every_case, dump_to, gnu_tar, restore_from
from tests.test_engine_hostile_images import END, member, write
from tests.trees import describe, differences

SERIAL = RestoreOptions(workers=0)
PARALLEL = RestoreOptions(workers=2, parallel_after=0)


def build_many_small(root: Path, files: int = 700) -> Path:
    """Small files over a few directories with mixed modes, times, xattrs, owners and hard links."""
    rnd = random.Random(19)
    for n in range(files):
        folder = root / f"d{n % 7}" / ("deep" if n % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{n:04d}"
        path.write_bytes(os.urandom(rnd.randint(0, 20_000)))
        os.chmod(path, rnd.choice([0o644, 0o600, 0o755, 0o4755, 0o2711, 0o444]))
        if n % 11 == 0:
            os.setxattr(path, "user.n", b"%d" % n)
        if IS_ROOT and n % 5 == 0:
            os.chown(path, 1000 + n % 3, 2000 + n % 4)
        if n % 50 == 0:
            os.link(path, root / f"d{n % 7}" / f"link{n}")
        stamp = 1_600_000_000_000_000_000 + n * 1_000_003
        os.utime(path, ns=(stamp, stamp))
    for folder in sorted(root.rglob("d*"), reverse=True):
        if folder.is_dir():
            os.chmod(folder, 0o750)
            os.utime(folder, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    return root


def both(stream: Path, tmp_path: Path, options: dict | None = None, before=None):
    """The serial and the parallel restore of ``stream`` into fresh targets (``before`` fills each
    first): their results and trees."""
    out = []
    for name, base in (("serial", SERIAL), ("parallel", PARALLEL)):
        target = tmp_path / name
        target.mkdir()
        if before:
            before(target)
        opts = RestoreOptions(**{**base.__dict__, **(options or {})})
        out.append((restore_from(stream, target, opts), target))
    return out


def assert_same(runs, expect_parallel: bool = True) -> None:
    (serial, a), (parallel, b) = runs
    assert differences(describe(a), describe(b)) == []
    assert (parallel.entries, parallel.files, parallel.complete) == (serial.entries, serial.files, serial.complete)
    strip = lambda messages: sorted(m.replace(str(b), str(a)) for m in messages)
    assert strip(parallel.refused) == strip(serial.refused)
    assert strip(parallel.warnings) == strip(serial.warnings)
    assert serial.written_by_writers == 0
    if expect_parallel:
        assert parallel.written_by_writers > 0


@pytest.mark.parametrize("build", [build_every_case, build_many_small])
def test_a_parallel_restore_is_the_serial_restore(tmp_path, build):
    tree = build(tmp_path / "tree")
    dump_to(tree, tmp_path / "s.tar")
    runs = both(tmp_path / "s.tar", tmp_path)
    assert_same(runs)
    assert differences(describe(tree), describe(runs[1][1])) == []


def test_a_gnu_tar_image_restores_the_same_in_parallel(tmp_path):
    tree = build_many_small(tmp_path / "tree")
    gnu_tar("--format=pax", "--xattrs", "--sparse", "-cf", str(tmp_path / "g.tar"), "-C", str(tree), ".")
    assert_same(both(tmp_path / "g.tar", tmp_path))


@pytest.mark.parametrize("existing", ["overwrite", "keep", "newer"])
def test_restoring_over_a_tree_follows_the_policy_the_same_way(tmp_path, existing):
    tree = build_many_small(tmp_path / "tree", 300)
    dump_to(tree, tmp_path / "s.tar")

    def older_copy(target: Path) -> None:
        restore_from(tmp_path / "s.tar", target, SERIAL)
        for n, path in enumerate(sorted(p for p in target.rglob("f*") if p.is_file())):
            if n % 2:
                os.chmod(path, 0o600)
                path.write_bytes(b"changed since")
                stamp = 2_000_000_000_000_000_000 if n % 4 == 1 else 1_000_000_000   # newer, older
                os.utime(path, ns=(stamp, stamp))
    assert_same(both(tmp_path / "s.tar", tmp_path, {"existing": existing}, before=older_copy),
                expect_parallel=existing != "keep")


def test_a_name_listed_twice_ends_as_its_last_member(tmp_path):
    filler = b"".join(member(b"d/other%03d" % n, b"x" * n) for n in range(200))
    stream = write(tmp_path / "s.tar", member(b"d", typeflag=pax.DIRTYPE) + member(b"d/twice", b"first")
                   + filler + member(b"d/twice", b"second") + member(b"d/twice", b"third, last") + END)
    runs = both(stream, tmp_path)
    assert_same(runs)
    assert (runs[1][1] / "d" / "twice").read_bytes() == b"third, last"
    (tmp_path / "keep").mkdir()
    kept = both(stream, tmp_path / "keep", {"existing": "keep"})
    assert_same(kept)
    assert (kept[1][1] / "d" / "twice").read_bytes() == b"first"


def test_a_directory_replaced_by_a_file_and_back(tmp_path):
    stream = write(tmp_path / "s.tar", member(b"a", typeflag=pax.DIRTYPE) + member(b"a/x", b"inside")
                   + member(b"a", b"now a file") + member(b"a/y", b"a file has no inside")
                   + member(b"b", b"a file first") + member(b"b", typeflag=pax.DIRTYPE) + member(b"b/z", b"z")
                   + END)
    runs = both(stream, tmp_path)
    assert_same(runs)
    out = runs[1][1]
    assert (out / "a").read_bytes() == b"now a file" and (out / "b" / "z").read_bytes() == b"z"
    assert runs[1][0].refused_count == 1


def test_a_directory_on_disk_in_the_way_of_a_file(tmp_path):
    def planted(target: Path) -> None:
        (target / "c" / "deeper").mkdir(parents=True)
        (target / "c" / "deeper" / "old").write_bytes(b"old")
    stream = write(tmp_path / "s.tar", b"".join(member(b"n%03d" % n, b"%d" % n) for n in range(50))
                   + member(b"c", b"the image's file") + member(b"after", b"after") + END)
    runs = both(stream, tmp_path, before=planted)
    assert_same(runs)
    assert (runs[1][1] / "c").read_bytes() == b"the image's file"


def test_a_symlink_swapped_in_between_two_files_of_a_directory_leads_nowhere(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    stream = write(tmp_path / "s.tar", member(b"d", typeflag=pax.DIRTYPE) + member(b"d/one", b"1")
                   + b"".join(member(b"d/f%03d" % n, b"f") for n in range(100))
                   + member(b"d", typeflag=pax.SYMTYPE, linkname=str(outside).encode())
                   + member(b"d/two", b"2") + member(b"s", typeflag=pax.SYMTYPE,
                                                    linkname=str(outside / "victim").encode())
                   + member(b"s", b"over the link, never through it") + END)
    (outside / "victim").write_bytes(b"untouched")
    runs = both(stream, tmp_path)
    assert_same(runs)
    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_bytes() == b"untouched"
    out = runs[1][1]
    assert os.readlink(out / "d") == str(outside)
    assert (out / "s").read_bytes() == b"over the link, never through it" and not (out / "s").is_symlink()


def test_a_symlink_on_disk_above_a_file_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    stream = write(tmp_path / "s.tar", b"".join(member(b"n%03d" % n, b"n") for n in range(30))
                   + member(b"link/file", b"must not land outside") + END)
    def planted(target: Path) -> None:
        os.symlink(outside, target / "link")
        os.utime(target / "link", ns=(10**18, 10**18), follow_symlinks=False)
    runs = both(stream, tmp_path, before=planted)
    assert_same(runs)
    assert os.listdir(outside) == [] and runs[1][0].refused_count == 1


def test_hard_links_to_files_a_writer_is_writing(tmp_path):
    body = b"".join(member(b"f%03d" % n, b"data %d" % n) for n in range(100))
    links = b"".join(member(b"l%03d" % n, typeflag=pax.LNKTYPE, linkname=b"f%03d" % n) for n in range(0, 100, 7))
    runs = both(write(tmp_path / "s.tar", body + links + END), tmp_path)
    assert_same(runs)
    out = runs[1][1]
    assert os.stat(out / "l014").st_ino == os.stat(out / "f014").st_ino


def test_an_abort_leaves_only_whole_files(tmp_path):
    data = {b"f%04d" % n: os.urandom(2000 + n) for n in range(3000)}
    stream = write(tmp_path / "s.tar", b"".join(member(name, body) for name, body in data.items()) + END)
    cancel = threading.Event()
    seen = []

    def done(m, placed, failure):
        seen.append(placed)
        if len(seen) == 200:
            cancel.set()
    with open(stream, "rb") as source, pytest.raises(RestoreAborted):
        Restorer(str(tmp_path / "out"), source.fileno(), PARALLEL, cancel=cancel, entry_done=done).run()
    written = os.listdir(tmp_path / "out")
    assert 200 <= len(written) < len(data)
    for name in written:
        assert (tmp_path / "out" / name).read_bytes() == data[os.fsencode(name)]


def test_a_file_too_large_for_the_ring_is_written_inline_in_order(tmp_path):
    big = os.urandom(6 << 20)
    stream = write(tmp_path / "s.tar", b"".join(member(b"small%d" % n, b"s") for n in range(20))
                   + member(b"big", big) + member(b"small3", b"after the big one") + END)
    runs = both(stream, tmp_path)
    assert_same(runs)
    assert (runs[1][1] / "big").read_bytes() == big
    assert (runs[1][1] / "small3").read_bytes() == b"after the big one"


def test_the_readers_shortcut_for_plain_members_reads_what_the_general_path_reads(tmp_path, monkeypatch):
    """StreamReader._plain_member (a pax header of times, then ustar) must give the very members
    the general loop gives, on every kind of member and damage around it."""
    from ndmpd.engine.reader import StreamReader
    tree = build_every_case(tmp_path / "tree")
    dump_to(tree, tmp_path / "ours.tar")
    gnu_tar("--format=pax", "--xattrs", "-cf", str(tmp_path / "gnu.tar"), "-C", str(tree), ".")
    gnu_tar("--format=ustar", "-cf", str(tmp_path / "ustar.tar"), "-C", str(tree / "dir"), ".")
    odd = (member(b"first", b"0")                   # (the reader's first member is read the general way)
           + member(b"t", b"1", records=pax.pax_record(b"mtime", b"12.5") + pax.pax_record(b"atime", b"1"))
           + member(b"bad-time", b"2", records=pax.pax_record(b"mtime", b"x"))
           + member(b"moved", b"3", records=pax.pax_record(b"mtime", b"1") + pax.pax_record(b"path", b"elsewhere"))
           + pax.extended_header(pax.pax_record(b"uname", b"nobody"), pax.XGLTYPE)
           + member(b"after-global", b"4", records=pax.pax_record(b"mtime", b"7")))
    damaged = bytearray(odd)
    damaged[1024 + 100] ^= 0x20           # the pax header of "t": its checksum no longer holds
    streams = [tmp_path / "ours.tar", tmp_path / "gnu.tar", tmp_path / "ustar.tar",
               write(tmp_path / "odd.tar", odd + END), write(tmp_path / "damaged.tar", bytes(damaged) + END)]

    def read_all(path: Path) -> list:
        with open(path, "rb") as source:
            reader = StreamReader(source.fileno())
            return [(m, reader.read_exact(min(m.size, 64))) for m in reader.members()]
    fast = [read_all(path) for path in streams]
    monkeypatch.setattr(StreamReader, "_plain_member", lambda self: None)
    assert [read_all(path) for path in streams] == fast
    assert sum(len(members) for members in fast) > 40


def test_the_shortcuts_lone_mtime_and_remembered_header_read_what_the_general_path_reads(tmp_path, monkeypatch):
    """The shortcut matches a lone ``mtime`` record in one expression and takes a pax header
    block the same as the last one as checked: every near miss of either (odd lengths, digits,
    signs, fractions, a record and NULs, a damaged copy of the remembered block) must read as
    the general path reads it, faults included."""
    from ndmpd.engine.reader import StreamReader
    raw = [b"30 mtime=1796306752.828804836\n", b"030 mtime=1796306752.828804836\n",
           b"11 mtime=7\n", b"13 mtime=7.5\n", b"20 mtime=7.0000000001\n", b"18 mtime=-12.25\n",
           b"12 mtime=7.\n", b"12 mtime=.5\n", b"13 mtime= 7.5\n", b"31 mtime=" + b"9" * 21 + b"\n",
           b"30 mtime=9999999999.999999999\n", b"12 mtime=7\n", b"11 mtime=7\n\0\0\0", b"11 mtime=\xd9\n",
           b"11 mtime=7\n11 atime=8\n", b"11 atime=8\n", b"+11 mtime=7\n"]
    body = member(b"first", b"0")
    for n, records in enumerate(raw):
        body += member(b"m%02d" % n, b"%d" % n, records=records) + member(b"again%02d" % n, b"x", records=records)
    damaged = bytearray(member(b"damaged", b"d", records=raw[0]))
    damaged[100] ^= 0x20                  # the same pax header block as the last one, but its checksum fails
    stream = write(tmp_path / "near.tar", body + bytes(damaged) + member(b"after", b"a", records=raw[0]) + END)

    def read_all() -> tuple[list, list]:
        warnings: list[str] = []
        with open(stream, "rb") as source:
            reader = StreamReader(source.fileno(), warn=warnings.append)
            return [(m, reader.read_exact(m.size)) for m in reader.members()], warnings
    fast = read_all()
    monkeypatch.setattr(StreamReader, "_plain_member", lambda self: None)
    assert read_all() == fast
    times = {m.name: m.mtime_ns for m, _ in fast[0]}
    assert times[b"m00"] == times[b"after"] == 1796306752_828804836
    assert times[b"damaged"] == 1_000_000_000 * 1_000_000_000     # its pax header skipped: the ustar time
    assert any("damaged header" in warning for warning in fast[1])


@pytest.mark.parametrize("build", [build_every_case, build_many_small])
def test_the_restores_shortcuts_restore_what_the_general_paths_restore(tmp_path, monkeypatch, build):
    """The reader's shortcut and the name splitter's memory off (the general paths alone), a
    restore through the writers ends with the very tree (contents, modes, owners, times,
    xattrs, links, directory times), results, refusals and warnings as with them."""
    import ndmpd.engine.restore as restore_module
    from ndmpd.engine.reader import StreamReader
    stream = tmp_path / "s.tar"
    dump_to(build(tmp_path / "tree"), stream)
    fast_target, general_target = tmp_path / "fast", tmp_path / "general"
    fast = restore_from(stream, fast_target, PARALLEL)
    monkeypatch.setattr(StreamReader, "_plain_member", lambda self: None)
    monkeypatch.setattr(restore_module, "NameSplitter", lambda: lambda name: tuple(split_safe(name)))
    general = restore_from(stream, general_target, PARALLEL)
    assert differences(describe(general_target), describe(fast_target)) == []
    same = lambda result, target: (result.entries, result.files, result.written_by_writers, result.complete,
                                   sorted(m.replace(str(target), "T") for m in [*result.refused, *result.warnings]))
    assert same(fast, fast_target) == same(general, general_target)
    assert fast.written_by_writers > 0


def test_a_writer_that_dies_ends_the_restore_and_says_so(tmp_path):
    import signal
    from ndmpd.engine.writers import WritersFailed
    stream = write(tmp_path / "s.tar", b"".join(member(b"f%04d" % n, b"x" * 3000) for n in range(4000)) + END)
    restorer = None

    def done(m, placed, failure):
        assert failure is None                       # no file is refused for the writer's death
        if restorer.result.entries == 100:
            os.kill(restorer._pool._procs[0].pid, signal.SIGKILL)
    with open(stream, "rb") as source:
        restorer = Restorer(str(tmp_path / "out"), source.fileno(), PARALLEL, entry_done=done)
        with pytest.raises(WritersFailed, match=r"writer process .* ended \(killed by signal 9\)"):
            restorer.run()
    assert restorer.result.refused_count == 0
