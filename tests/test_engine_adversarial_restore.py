"""Hostile and unusual images restored by ndmpd and by GNU tar (the oracle, tests/tar_oracle.py):
the same entries, types, contents, modes, owners, times and xattrs, and nothing outside the
target touched. Where ndmpd refuses on purpose (names climbing out, absolute names, a NUL in a
name) the member is refused with its reason and the rest of the image is restored.

Each image is restored inline and through the writer processes (``parallel_after=0``), and
most put an ordinary member first, so the reader's shortcut (``_plain_member``, which needs
three blocks buffered) sees the members that follow."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ndmpd.engine import pax
from ndmpd.engine.restore import RestoreOptions
from tests.engine_helpers import IS_ROOT, make_level_1_changes, restore_from
from tests.tar_oracle import TAR, compare, snapshot

pytestmark = [pytest.mark.skipif(TAR is None, reason="GNU tar is not installed"),
              pytest.mark.skipif(not IS_ROOT, reason="tar keeps owners and modes only as root")]

END = bytes(10240)
MODES = [pytest.param(RestoreOptions(workers=0), id="inline"),
         pytest.param(RestoreOptions(workers=2, parallel_after=0), id="writers")]


def block(name: bytes, size: int = 0, typeflag: bytes = pax.REGTYPE, mode: int = 0o644, mtime: int = 1000,
          fields: dict[str, bytes] | None = None) -> bytes:
    """A ustar header; ``fields`` replace raw fields, named as in ustar (then re-summed)."""
    raw = bytearray(pax.ustar_block(name, mode, 0, 0, size, mtime, typeflag))
    where = {"mode": (100, 8), "size": (124, 12), "mtime": (136, 12)}
    for field, value in (fields or {}).items():
        at, width = where[field]
        raw[at:at + width] = value.ljust(width, b"\0")[:width]
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw)
    return bytes(raw)


def data(body: bytes) -> bytes:
    return body + bytes(pax.round_up(len(body)) - len(body))


def file(name: bytes, body: bytes = b"", **kw) -> bytes:
    return block(name, len(body), **kw) + data(body)


FIRST = file(b"first", b"1")          # so the shortcut, with three blocks buffered, reads what follows


def python_tar(*members: tuple[tarfile.TarInfo, bytes | None], format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as archive:
        for info, body in members:
            archive.addfile(info, io.BytesIO(body) if body is not None else None)
    return buffer.getvalue()


def info(name: str, body: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.mode, member.mtime = kind, linkname, 0o640, 1_000_000
    member.size = len(body) if kind == tarfile.REGTYPE else 0
    return member, body if member.size else None


def assert_as_tar(tmp_path: Path, image: bytes, options: RestoreOptions) -> None:
    compared = compare(tmp_path, image, options)
    assert compared.differences() == {}, (compared.result.refused, compared.result.warnings, compared.tar_stderr)
    assert not compared.result.refused, compared.result.refused


# -- the reader's shortcut ---------------------------------------------------------------------


@pytest.mark.parametrize("options", MODES)
def test_an_empty_pax_header_is_followed_by_its_own_ustar_block(tmp_path, options):
    """Its ustar block is the next one: read as the third, a file whose data is a tar header
    was lost and a member planted by its data took its place."""
    planted = block(b"planted")
    image = FIRST + pax.extended_header(b"") + block(b"carrier", 512) + planted + file(b"after", b"a") + END
    assert_as_tar(tmp_path, image, options)
    assert (tmp_path / "ndmpd" / "carrier").read_bytes() == planted
    assert not (tmp_path / "ndmpd" / "planted").exists()


@pytest.mark.parametrize("options", MODES)
def test_repeated_pax_headers_and_ones_ahead_of_the_end(tmp_path, options):
    same = pax.extended_header(pax.pax_record(b"mtime", b"1.5"))
    other = pax.extended_header(pax.pax_record(b"mtime", b"-2.25"))
    image = (FIRST + same + file(b"a", b"a") + same + file(b"b", b"bb") + other + file(b"c") + same + file(b"d")
             + pax.extended_header(pax.pax_record(b"mtime", b"7.5")) + END)
    assert_as_tar(tmp_path, image, options)
    assert os.stat(tmp_path / "ndmpd" / "c").st_mtime_ns == -2_250_000_000


@pytest.mark.parametrize("options", MODES)
def test_global_records_apply_to_every_later_member(tmp_path, options):
    late_global = pax.extended_header(pax.pax_record(b"uid", b"777") + pax.pax_record(b"mtime", b"99.25"),
                                      pax.XGLTYPE)
    local = pax.extended_header(pax.pax_record(b"mtime", b"5.5"))
    image = FIRST + file(b"before", b"b") + late_global + file(b"plain", b"p") + local + file(b"timed", b"t") + END
    assert_as_tar(tmp_path, image, options)
    assert os.stat(tmp_path / "ndmpd" / "plain").st_uid == 777
    assert os.stat(tmp_path / "ndmpd" / "before").st_uid == 0


# -- numeric fields as GNU tar reads them ------------------------------------------------------


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize("size", [b"0_1000", b"0o1000", b"00000000019", b"1000x", b"+1000", b"-1000"])
def test_a_size_field_that_is_no_octal_number_is_a_damaged_header(tmp_path, options, size):
    """Python's ``int`` reads ``0_1000`` and ``0o1000`` as 512; GNU tar does not, and skips to
    the next header: the 512 bytes after it are no member's data. (A leading sign is GNU's
    obsolete base-64, which tar still decodes and ndmpd refuses as damaged.)"""
    image = FIRST + block(b"liar", fields={"size": size}) + data(b"Y" * 512) + file(b"after", b"ok") + END
    compared = compare(tmp_path, image, options)
    if size[:1] not in b"+-":
        assert compared.differences() == {}
    assert not (tmp_path / "ndmpd" / "liar").exists()
    assert (tmp_path / "ndmpd" / "after").read_bytes() == b"ok"
    assert any("damaged header" in warning for warning in compared.result.warnings)


@pytest.mark.parametrize("options", MODES)
def test_octal_fields_in_the_forms_old_tars_write(tmp_path, options):
    """Leading blanks, a blank or NUL after the digits and anything past it: the same number."""
    image = (FIRST + file(b"blanks", b"Z", fields={"size": b"      1\0"})
             + file(b"junk", b"Z", fields={"size": b"1 x\0"}) + file(b"mode", b"Z", fields={"mode": b" 600 \0"}) + END)
    assert_as_tar(tmp_path, image, options)


# -- members GNU tar writes that are not plain ustar -------------------------------------------


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize("typeflag", [pax.AREGTYPE, pax.REGTYPE])
def test_a_file_type_named_with_a_slash_is_a_directory(tmp_path, options, typeflag):
    """v7 archives (and bsdtar's convention) mark directories by the trailing slash alone."""
    image = FIRST + block(b"dir/", typeflag=typeflag, mode=0o711, mtime=5000) + file(b"dir/f", b"F") + END
    assert_as_tar(tmp_path, image, options)
    assert os.stat(tmp_path / "ndmpd" / "dir").st_mtime_ns == 5000 * 10 ** 9


@pytest.mark.parametrize("options", MODES)
def test_gnu_dumpdir_members_are_directories(tmp_path, options):
    listing = b"Yf\0Dsub\0\0"
    image = (FIRST + block(b"d/", len(listing), typeflag=b"D", mode=0o750, mtime=5000) + data(listing)
             + file(b"d/f", b"F") + END)
    assert_as_tar(tmp_path, image, options)


def test_a_gnu_volume_label_is_no_entry(tmp_path):
    image = block(b"MY LABEL", typeflag=b"V") + FIRST + file(b"f", b"F") + END
    assert_as_tar(tmp_path, image, RestoreOptions(workers=0))


def _sparse_tree(root: Path) -> None:
    root.mkdir()
    with open(root / "few", "wb") as out:            # fits the old GNU header's four entries
        out.seek(1 << 20)
        out.write(b"end")
    with open(root / "many", "wb") as out:           # needs extension blocks
        for n in range(30):
            out.seek(n * 65536)
            out.write(b"%d" % n)
        out.truncate(31 * 65536)
    (root / "plain").write_bytes(b"p" * 5000)


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize("format_args", [["--format=gnu"], ["--format=oldgnu"],
                                         ["--format=posix", "--sparse-version=0.0"],
                                         ["--format=posix", "--sparse-version=0.1"],
                                         ["--format=posix", "--sparse-version=1.0"]],
                         ids=["gnu", "oldgnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_gnu_tar_sparse_files_in_every_format(tmp_path, options, format_args):
    _sparse_tree(tmp_path / "src")
    image = tmp_path / "sparse.tar"
    subprocess.run([TAR, "--sparse", *format_args, "-cf", str(image), "-C", str(tmp_path / "src"), "."],
                   check=True, timeout=30)
    stream = image.read_bytes()
    if format_args[0] != "--format=posix":
        assert b"S" in {stream[at + 156:at + 157] for at in range(0, len(stream), 512)}, "no old sparse member"
    compared = compare(tmp_path / "run", stream, options)
    assert compared.differences() == {}, compared.result.refused
    many = tmp_path / "run" / "ndmpd" / "many"
    assert os.stat(many).st_blocks * 512 < os.stat(many).st_size, "the holes were filled"


@pytest.mark.parametrize("options", MODES)
def test_a_listed_incremental_of_gnu_tar_restores_as_tar_extracts_it(tmp_path, options):
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    os.chmod(src / "d", 0o750)
    image = tmp_path / "level0.tar"
    subprocess.run([TAR, "-g", str(tmp_path / "snar"), "-cf", str(image), "-C", str(src), "."], check=True,
                   timeout=30)
    assert_as_tar(tmp_path / "run", image.read_bytes(), options)


# -- links and names ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", MODES)
def test_bad_hard_links_lose_nothing(tmp_path, options):
    """A link to itself leaves the file; one to a name that is not there, or over the directory
    that holds its source, refuses without removing what the link's name holds (tar keeps it)."""
    image = python_tar(info("first", b"1"), info("self", b"data"), info("self", kind=tarfile.LNKTYPE, linkname="self"),
                       info("kept", b"kept"), info("kept", kind=tarfile.LNKTYPE, linkname="missing"),
                       info("link", kind=tarfile.LNKTYPE, linkname="first"),
                       info("link", kind=tarfile.LNKTYPE, linkname="first"),
                       info("dir/inside", b"inside"), info("dir", kind=tarfile.LNKTYPE, linkname="dir/inside"))
    compared = compare(tmp_path, image, options)
    assert compared.differences() == {}
    assert (tmp_path / "ndmpd" / "self").read_bytes() == b"data"
    assert (tmp_path / "ndmpd" / "kept").read_bytes() == b"kept"
    assert (tmp_path / "ndmpd" / "dir" / "inside").read_bytes() == b"inside"
    assert [message for message in compared.result.refused if "missing" in message]


@pytest.mark.parametrize("options", MODES)
def test_links_and_names_that_lead_outside_are_refused_and_the_rest_restored(tmp_path, options):
    image = python_tar(info("first", b"1"), info("out", kind=tarfile.SYMTYPE, linkname="../outside"),
                       info("out/canary", b"through a symlink"),
                       info("h1", kind=tarfile.LNKTYPE, linkname="../outside/canary"),
                       info("h2", kind=tarfile.LNKTYPE, linkname="out/canary"),
                       info("h3", kind=tarfile.LNKTYPE, linkname="out"),
                       info("../outside/canary", b"climbing"), info("a/../../x", b"climbing"),
                       info("s", kind=tarfile.SYMTYPE, linkname="../outside/canary"), info("s", b"replaced"),
                       info("last", b"last"))
    compared = compare(tmp_path, image, options)       # (asserts the canaries are untouched)
    restored = tmp_path / "ndmpd"
    assert (restored / "last").read_bytes() == b"last"
    assert (restored / "s").read_bytes() == b"replaced"    # the later member wins
    assert os.path.samefile(restored / "h3", restored / "out") and os.path.islink(restored / "h3")
    for name in ("out/canary", "h1", "h2", "../outside/canary", "a/../../x"):
        assert any(message.startswith(name + ":") for message in compared.result.refused), name
    assert not (restored / "h1").exists() and not (restored / "h2").exists()


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_long_odd_names_links_and_owners(tmp_path, options, tar_format):
    deep = "d" * 120 + "/" + "f" * 150
    members = [info("first", b"1"), info("d" * 120, kind=tarfile.DIRTYPE), info(deep, b"long"),
               info("l", kind=tarfile.SYMTYPE, linkname="t" * 300), info("h", kind=tarfile.LNKTYPE, linkname=deep),
               info("new\nline", b"n"), info("bad\udcff", b"b"), info("sp ace", b"s")]
    owned, body = info("owned", b"o")
    owned.uid, owned.gid, owned.uname, owned.gname, owned.mode = 70000, 80000, "", "", 0o4750
    members.append((owned, body))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for member, content in members:
            archive.addfile(member, io.BytesIO(content) if content is not None else None)
    assert_as_tar(tmp_path, buffer.getvalue(), options)


@pytest.mark.parametrize("options", MODES)
def test_replacements_and_directories_after_their_contents(tmp_path, options):
    image = python_tar(info("first", b"1"), info("d/f", b"x"), info("d", kind=tarfile.DIRTYPE),
                       info("x", b"file"), info("x", kind=tarfile.DIRTYPE), info("x/y", b"y"),
                       info("e", kind=tarfile.DIRTYPE), info("e", b"now a file"),
                       info("dup", b"one"), info("dup", b"two"))
    assert_as_tar(tmp_path, image, options)


@pytest.mark.parametrize("options", MODES)
def test_gnu_tar_listed_incrementals_restore_as_tar_g_extracts_them(tmp_path, options):
    """GNU tar's level 0 and level 1 (its 'D' members, a rename, a deletion, a file become a
    directory), replayed as incrementals: the tree ``tar -G -x`` gives."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "c").mkdir()
    for path, text in (("a/one", "1"), ("a/b/two", "2"), ("c/three", "3"), ("keep", "k")):
        (src / path).write_text(text)
    levels = [tmp_path / "l0.tar", tmp_path / "l1.tar"]

    def gnu_level(stream: Path) -> None:
        subprocess.run([TAR, "-g", str(tmp_path / "snar"), "-cf", str(stream), "-C", str(src), "."],
                       check=True, timeout=30)
    gnu_level(levels[0])
    old = time.time() - 10                    # the base's times, clearly before the changes
    for path in [src, *src.rglob("*")]:
        os.utime(path, (old, old))
    make_level_1_changes(src, "in")
    gnu_level(levels[1])
    by_tar, by_ndmpd = tmp_path / "tar", tmp_path / "ndmpd"
    by_tar.mkdir()
    for stream in levels:
        subprocess.run([TAR, "-G", "-xf", str(stream), "-C", str(by_tar), "--same-owner", "--same-permissions"],
                       check=True, timeout=30)
        result = restore_from(stream, by_ndmpd, replace(options, incremental=True))
        assert not result.refused, result.refused
    expected, got = snapshot(by_tar), snapshot(by_ndmpd)
    expected.pop(b""), got.pop(b"")
    assert got == expected
    assert not (by_ndmpd / "a" / "one").exists() and (by_ndmpd / "a" / "moved" / "two").exists()
