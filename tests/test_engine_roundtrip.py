"""The stream is GNU tar's to read and ours to read back: every kind of file survives."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

import pytest

from ndmpd.engine.dump import DumpOptions
from ndmpd.engine.restore import RestoreOptions, Restorer
from ndmpd.engine.select import Pick
from tests.engine_helpers import IS_ROOT, build_every_case, dump_to, gnu_tar, restore_from
from tests.trees import describe, differences


@pytest.fixture
def tree(tmp_path):
    return build_every_case(tmp_path / "src")


def test_gnu_tar_extracts_our_stream_identically(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    result = dump_to(tree, stream)
    assert result.warning_count == 0, result.warnings
    out = tmp_path / "gnu-out"
    out.mkdir()
    gnu_tar("-x", "--xattrs", "--xattrs-include=*", "-p", "-f", str(stream), cwd=out)
    assert differences(describe(tree), describe(out)) == []
    assert describe(out)[b"sparse"]["sparse"], "GNU tar must get the holes back"


def test_we_restore_gnu_tar_pax_streams_identically(tree, tmp_path):
    stream = tmp_path / "gnu.tar"
    gnu_tar("-c", "--xattrs", "--xattrs-include=*", "--sparse", "-H", "pax", "-f", str(stream), ".", cwd=tree)
    out = tmp_path / "ours-out"
    result = restore_from(stream, out)
    assert result.refused == [] and result.complete
    assert differences(describe(tree), describe(out)) == []


def test_our_stream_restores_through_our_restore(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    dump_to(tree, stream)
    out = tmp_path / "out"
    result = restore_from(stream, out)
    assert result.refused == [] and result.complete
    assert differences(describe(tree), describe(out)) == []


def test_python_tarfile_and_bsdtar_list_every_member(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    result = dump_to(tree, stream)
    with tarfile.open(stream) as archive:
        names = archive.getnames()
        sparse_member = archive.getmember("./sparse")
        assert sparse_member.size == 64 << 20
    assert len(names) == result.entries
    assert "./deep/" + "/".join(["d" * 60] * 5) + "/" + "n" * 200 in names
    if shutil.which("bsdtar"):
        listing = subprocess.run(["bsdtar", "-tf", str(stream)], capture_output=True, check=True).stdout
        assert len(listing.splitlines()) == result.entries


def test_ns_mtimes_owner_names_and_long_targets_are_in_the_headers(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    dump_to(tree, stream)
    with tarfile.open(stream) as archive:
        link = archive.getmember("./long_link")
        assert link.linkname == "/nonexistent/" + "x" * 290
        member = archive.getmember("./dir/file")
        assert member.pax_headers["mtime"] == "981173106.987654321"
        assert member.pax_headers["SCHILY.xattr.user.comment"]
        assert archive.getmember("./dir/sub/hard").islnk()
        assert archive.getmember("./dir/sub/hard").linkname == "./dir/file"
        if IS_ROOT:
            assert (member.uid, member.gid) == (1234, 5678)
            assert archive.getmember("./chr").ischr()
            assert archive.getmember("./blk").devminor == 200
        import pwd
        assert archive.getmember("./").uname == pwd.getpwuid(os.getuid()).pw_name


def test_file_history_offsets_are_aligned_and_restore_each_entry_alone(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    seen = []
    dump_to(tree, stream, history=seen.append)
    by_path = {entry.path: entry for entry in seen}
    assert all(entry.offset % 512 == 0 for entry in seen)
    assert by_path[b""].parent_ino == by_path[b""].ino
    assert by_path[b"dir/file"].parent_ino == by_path[b"dir"].ino
    for path in [b"dir/file", b"sparse", os.fsencode("ünïcödé name"), b"caf\xe9-latin1"]:
        out = tmp_path / f"one-{seen.index(by_path[path])}"
        result = restore_from(stream, out, RestoreOptions(picks=(Pick.parse(path + b"=copy"),),
                                                          stop_when_done=True),
                              offset=by_path[path].offset)
        assert result.restored == [path]
        assert (out / "copy").read_bytes() == (tree / os.fsdecode(path)).read_bytes()
        assert result.bytes_read < 2 * (tree / os.fsdecode(path)).stat().st_blocks * 512 + 8192


def test_selected_directory_restores_recursively_under_a_new_name(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    dump_to(tree, stream)
    out = tmp_path / "out"
    result = restore_from(stream, out, RestoreOptions(picks=(Pick.parse("dir=moved/here"),)))
    assert sorted(p.name for p in (out / "moved" / "here").rglob("*")) == ["file", "hard", "sub"]
    assert (out / "moved" / "here" / "sub" / "hard").stat().st_ino == (out / "moved" / "here" / "file").stat().st_ino
    assert not (out / "sparse").exists()
    assert result.refused == []


def test_existing_file_policies(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    dump_to(tree, stream)
    pick = (Pick.parse("dir/file"),)
    for policy, stamp, expect_restored in [("keep", 0, False), ("newer", 2**62, False),
                                           ("newer", 10**9, True), ("overwrite", 2**62, True)]:
        out = tmp_path / f"out-{policy}-{stamp}"
        (out / "dir").mkdir(parents=True)
        (out / "dir" / "file").write_bytes(b"local edit")
        os.utime(out / "dir" / "file", ns=(stamp, stamp))
        restore_from(stream, out, RestoreOptions(picks=pick, existing=policy))
        restored = (out / "dir" / "file").read_bytes() == (tree / "dir" / "file").read_bytes()
        assert restored == expect_restored, (policy, stamp)


def test_excluded_names_are_left_out_and_kept_on_incremental_restore(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    result = dump_to(tree, stream, DumpOptions(excludes=("sparse", "dir/sub", "*.latin1", "caf*")))
    with tarfile.open(stream) as archive:
        names = archive.getnames()
    assert "./sparse" not in names and "./dir/sub/" not in names and "./dir/sub/hard" not in names
    assert "./dir/file" in names and result.entries == len(names)


def test_only_selected_paths_and_the_directories_leading_to_them_are_dumped(tree, tmp_path):
    """FILES: the chosen entries (a directory with all it holds), their parent directories, nothing
    else; the parents' dumpdirs still name their other entries, so an incremental restore keeps them."""
    stream = tmp_path / "some.tar"
    result = dump_to(tree, stream, DumpOptions(only=(b"dir/sub", b"zero", b"/deep/" + b"d" * 60)))
    with tarfile.open(stream) as archive:
        names = set(archive.getnames())
    deep = "./deep/" + "d" * 60
    assert {"./dir/sub/hard", "./zero", deep + "/" + "d" * 60} <= names
    assert not {n for n in names if n.startswith("./dir/") and not n.startswith("./dir/sub")}
    assert "./sparse" not in names and "./empty/" not in names and "./dir/file" not in names
    assert result.entries == len(names)
    target = tmp_path / "back"
    target.mkdir()
    (target / "sparse").write_bytes(b"already here")
    restore_from(stream, target, RestoreOptions(incremental=True))
    assert (target / "sparse").read_bytes() == b"already here"     # named in the root's dumpdir: kept
    assert (target / "dir" / "sub" / "hard").read_bytes() == (tree / "dir" / "sub" / "hard").read_bytes()


def test_files_changing_size_while_read_are_padded_or_cut_and_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-shrinks").write_bytes(b"A" * 100_000)
    (src / "b-grows").write_bytes(b"B" * 5000)
    (src / "c-after").write_bytes(b"C" * 3000)

    def meddle(entry):
        if entry.path == b"a-shrinks":
            os.truncate(src / "a-shrinks", 10_000)
        elif entry.path == b"b-grows":
            with open(src / "b-grows", "ab") as f:
                f.write(b"b" * 7000)

    stream = tmp_path / "s.tar"
    result = dump_to(src, stream, DumpOptions(live=True), history=meddle)
    assert result.changed == 2
    assert any("a-shrinks: shrank" in w for w in result.warnings)
    assert any("b-grows: changed while being read" in w for w in result.warnings)
    out = tmp_path / "out"
    out.mkdir()
    gnu_tar("-xf", str(stream), cwd=out)
    assert (out / "a-shrinks").read_bytes() == b"A" * 10_000 + bytes(90_000)
    assert (out / "b-grows").read_bytes() == b"B" * 5000
    assert (out / "c-after").read_bytes() == b"C" * 3000


def test_sizes_over_8_gib_go_into_pax_and_base_256(tmp_path):
    from ndmpd.engine import pax
    from ndmpd.engine.reader import StreamReader

    size = 9 << 30
    headers = pax.HeaderWriter().headers(b"./huge", 0o100644, 0, 0, size, 1_700_000_000 * 10**9, pax.REGTYPE)
    assert b" size=%d\n" % size in headers
    info = tarfile.TarInfo.frombuf(headers[-512:], "utf-8", "surrogateescape")
    assert info.size == size                                     # base-256 in the ustar field too
    stream = tmp_path / "huge-header.tar"
    stream.write_bytes(headers)
    with open(stream, "rb") as source:
        member = next(StreamReader(source.fileno()).members())
    assert (member.name, member.size) == (b"./huge", size)


def test_sparse_file_over_8_gib_round_trips(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big-sparse", "wb") as f:
        f.seek(9 << 30)
        f.write(b"end of a 9 GiB file")
    stream = tmp_path / "s.tar"
    dump_to(src, stream)
    assert stream.stat().st_size < 1 << 20
    out = tmp_path / "out"
    restore_from(stream, out)
    assert differences(describe(src), describe(out)) == []


def test_modes_and_owners_hold_whatever_the_umask_and_directory_group(tmp_path):
    """Files whose owner is already right skip fchown/fchmod on restore; modes the umask would
    drop, set-id bits and a setgid parent directory's group must still come out exact."""
    src = tmp_path / "src"
    (src / "shared").mkdir(parents=True)
    for name, mode in (("plain", 0o644), ("open", 0o666), ("private", 0o600), ("tool", 0o4755)):
        (src / name).write_bytes(name.encode())
        os.chmod(src / name, mode)
    (src / "shared" / "inside").write_bytes(b"x")
    if IS_ROOT:
        os.chown(src / "tool", 1234, 0)
        os.chmod(src / "tool", 0o4755)
        os.chown(src / "shared", 0, 4242)
        os.chmod(src / "shared", 0o2775)          # a new file inside would get group 4242
    stream = tmp_path / "s.tar"
    dump_to(src, stream)
    out = tmp_path / "out"
    old = os.umask(0o077)
    try:
        result = restore_from(stream, out)
        os.umask(0o022)                            # the fast path, into an existing setgid directory
        again = restore_from(stream, out)
    finally:
        os.umask(old)
    assert result.refused == [] and result.complete and again.refused == []
    assert differences(describe(src), describe(out)) == []
    assert os.stat(out / "open").st_mode & 0o7777 == 0o666
    if IS_ROOT:
        assert os.stat(out / "tool").st_mode & 0o7777 == 0o4755
        assert os.stat(out / "shared" / "inside").st_gid == 0


def test_hard_links_selected_without_their_first_link_get_its_contents(tree, tmp_path):
    """The first link (dir/file) is not selected: the two other names still come back with the
    contents, as one inode, by a scan and by direct access; GNU tar ignores the offset record."""
    stream = tmp_path / "ours.tar"
    seen = []
    dump_to(tree, stream, history=seen.append)
    assert "comment" not in gnu_tar("-tvf", str(stream)).stderr
    want = (tree / "dir" / "file").read_bytes()
    out = tmp_path / "scan"
    result = restore_from(stream, out, RestoreOptions(picks=(Pick.parse("top-hard"), Pick.parse("dir/sub/hard=x"))))
    assert result.refused == []
    assert (out / "top-hard").read_bytes() == want == (out / "x").read_bytes()
    assert (out / "top-hard").stat().st_ino == (out / "x").stat().st_ino
    assert (out / "top-hard").stat().st_mtime_ns == (tree / "dir" / "file").stat().st_mtime_ns
    assert not (out / "dir" / "file").exists()
    offset = next(e.offset for e in seen if e.path == b"top-hard")
    out = tmp_path / "direct"
    result = restore_from(stream, out, RestoreOptions(picks=(Pick.parse("top-hard=copy"),), stop_when_done=True),
                          offset=offset)
    assert (out / "copy").read_bytes() == want and result.refused == []


def test_a_lone_hard_link_from_an_unseekable_stream_is_refused_with_the_way_out(tree, tmp_path):
    stream = tmp_path / "ours.tar"
    dump_to(tree, stream)
    out = tmp_path / "out"
    with subprocess.Popen(["cat", str(stream)], stdout=subprocess.PIPE) as cat:
        result = Restorer(str(out), cat.stdout.fileno(), RestoreOptions(picks=(Pick.parse("top-hard"),))).run()
    assert len(result.refused) == 1 and "select that name too" in str(result.refused)
    assert not (out / "top-hard").exists()
