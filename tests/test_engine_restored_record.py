"""Deletions replayed from an incremental remove only what the chain itself restored into that
place: the record each restored directory keeps (``user.ndmpd.restored``) decides, an image can
never write that record, and a dump never copies it."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from ndmpd.engine import pax, restored
from ndmpd.engine.job import DumpRequest, dump_volume
from ndmpd.engine.restore import RestoreOptions
from ndmpd.engine.select import Pick
from tests.engine_helpers import restore_from
from tests.test_engine_hostile_images import END, member, write


def _dump(src: Path, state: Path, stream: Path, level: int) -> Path:
    with open(stream, "wb") as out:
        dump_volume(DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", level=level,
                                update=True), out.fileno())
    return stream


def _chain(tmp_path: Path, between) -> list[Path]:
    """A level 0 of ``src`` and, after ``between(src)``, a level 1."""
    src, state = tmp_path / "src", tmp_path / "state"
    (src / "sub").mkdir(parents=True, exist_ok=True)
    (src / "sub" / "kept").write_text("kept")
    (src / "sub" / "removed").write_text("removed later")
    (src / "old").mkdir()
    (src / "old" / "inside").write_text("inside")
    (src / "top").write_text("top")
    level0 = _dump(src, state, tmp_path / "l0.tar", 0)
    time.sleep(0.02)
    between(src)
    return [level0, _dump(src, state, tmp_path / "l1.tar", 1)]


def _remove_and_rename(src: Path) -> None:
    (src / "sub" / "removed").unlink()
    (src / "sub" / "new").write_text("new")
    (src / "top").unlink()
    (src / "old").rename(src / "renamed")


@pytest.fixture
def chain(tmp_path):
    return _chain(tmp_path, _remove_and_rename)


def _foreign(dest: Path) -> None:
    """The admin's own files, at every level the chain restores into."""
    (dest / "sub").mkdir(parents=True)
    (dest / "mine").write_text("the admin's")
    (dest / "mine-dir").mkdir()
    (dest / "mine-dir" / "f").write_text("f")
    (dest / "sub" / "alien").write_text("alien")
    (dest / "old").mkdir()
    (dest / "old" / "notes").write_text("the admin's notes in a restored directory")


def test_a_whole_level_1_restore_keeps_foreign_files_and_deletes_what_level_0_restored(tmp_path, chain):
    dest = tmp_path / "dest"
    _foreign(dest)
    for stream in chain:
        assert restore_from(stream, dest).refused == []
    assert (dest / "mine").read_text() == "the admin's"
    assert (dest / "mine-dir" / "f").read_text() == "f"
    assert sorted(os.listdir(dest / "sub")) == ["alien", "kept", "new"]
    assert not (dest / "top").exists(), "what level 0 restored and level 1 no longer lists goes"
    assert (dest / "renamed" / "inside").read_text() == "inside"
    assert sorted(os.listdir(dest / "old")) == ["notes"], "a renamed directory loses only what was restored"


def test_a_whole_chain_into_a_new_directory_still_ends_as_the_source(tmp_path, chain):
    out = tmp_path / "out"
    for stream in chain:
        restore_from(stream, out)
    assert sorted(os.listdir(out)) == ["renamed", "sub"]
    assert sorted(os.listdir(out / "sub")) == ["kept", "new"]


def test_a_selective_chain_replays_deletions_only_where_it_restored(tmp_path, chain):
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "mine").write_text("mine")
    picks = RestoreOptions(picks=(Pick.parse("sub"),))
    for stream in chain:
        restore_from(stream, dest, picks)
    assert sorted(os.listdir(dest / "sub")) == ["kept", "mine", "new"]


def test_a_subdirectory_restored_onto_a_whole_restore_deletes_nothing_there(tmp_path, chain):
    dest = tmp_path / "dest"
    restore_from(chain[0], dest)
    restore_from(chain[1], dest, RestoreOptions(picks=(Pick.parse("sub="),)))
    assert {"sub", "old", "top", "new"} <= set(os.listdir(dest)), "another image directory's names"


def test_another_volumes_chain_deletes_nothing_the_first_restored(tmp_path, chain):
    dest = tmp_path / "dest"
    restore_from(chain[0], dest)
    other = tmp_path / "other"
    other.mkdir()
    state = tmp_path / "other-state"
    (other / "x").write_text("x")
    with open(tmp_path / "o0.tar", "wb") as out:
        dump_volume(DumpRequest(source=other, key="other", state_dir=state, snapshot="none", level=0,
                                update=True), out.fileno())
    time.sleep(0.02)
    with open(tmp_path / "o1.tar", "wb") as out:
        dump_volume(DumpRequest(source=other, key="other", state_dir=state, snapshot="none", level=1,
                                update=True), out.fileno())
    restore_from(tmp_path / "o1.tar", dest)
    assert (dest / "top").read_text() == "top" and (dest / "sub" / "removed").exists()


def _record_xattr(names: set[bytes]) -> bytes:
    value = restored._encode(restored.owner_of("vol", b"sub"), names, hashed=False)
    return pax.pax_record(b"SCHILY.xattr." + restored.NAME.encode(), value)


def _image(level: int, sub_records: bytes, listed: bytes) -> bytes:
    return (pax.extended_header(pax.pax_record(b"NDMPD.level", b"%d" % level)
                                + pax.pax_record(b"NDMPD.volume", b"vol"), pax.XGLTYPE)
            + member(b"./", typeflag=pax.DIRTYPE, mode=0o755, records=pax.pax_record(b"GNU.dumpdir", b"Dsub\0\0"))
            + member(b"./sub/", typeflag=pax.DIRTYPE, mode=0o755,
                     records=sub_records + pax.pax_record(b"GNU.dumpdir", listed))
            + member(b"./sub/a", b"a") + END)


def test_an_image_cannot_write_the_record_that_authorises_deletions(tmp_path):
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "victim").write_text("not the image's")
    hostile = write(tmp_path / "h0.tar", _image(0, _record_xattr({b"victim", b"a"}), b"Ya\0\0"))
    result = restore_from(hostile, dest)
    assert any("reserved" in w and restored.NAME in w for w in result.warnings), result.warnings
    record = restored.read(os.open(dest / "sub", os.O_RDONLY | os.O_DIRECTORY))
    assert record is not None and b"a" in record and b"victim" not in record
    restore_from(write(tmp_path / "h1.tar", _image(1, b"", b"Na\0\0")), dest)
    assert (dest / "sub" / "victim").read_text() == "not the image's"


def test_a_file_cannot_carry_the_record_either(tmp_path):
    image = member(b"f", b"x", records=_record_xattr({b"y"})) + END
    dest = tmp_path / "dest"
    result = restore_from(write(tmp_path / "f.tar", image), dest)
    assert (dest / "f").read_bytes() == b"x"
    assert restored.NAME not in os.listxattr(dest / "f")
    assert result.warning_count == 1


def test_a_dump_of_a_restored_tree_carries_no_record(tmp_path, chain):
    out = tmp_path / "out"
    restore_from(chain[0], out)
    assert restored.NAME in os.listxattr(out / "sub")
    os.setxattr(out / "top", restored.NAME, b"planted by hand")
    os.setxattr(out / "top", "user.other", b"kept")
    stream = _dump(out, tmp_path / "state2", tmp_path / "again.tar", 0)
    data = stream.read_bytes()
    assert restored.NAME.encode() not in data and b"user.other" in data


def test_without_xattrs_nothing_is_deleted_and_one_warning_says_why(tmp_path, chain, monkeypatch):
    def unsupported(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    dest = tmp_path / "dest"
    restore_from(chain[0], dest)
    monkeypatch.setattr(restored.os, "getxattr", unsupported)
    monkeypatch.setattr(restored.os, "setxattr", unsupported)
    result = restore_from(chain[1], dest)
    assert (dest / "top").exists() and (dest / "sub" / "removed").exists()
    assert [w for w in result.warnings if "record of restored names" in w] == result.warnings[:1]
    assert sum("record of restored names" in w for w in result.warnings) == 1


@pytest.mark.parametrize("count, length", [(300, 30), (3000, 200)])
def test_a_directory_with_many_names_keeps_its_record_or_deletes_nothing(tmp_path, count, length):
    names = [f"{n:05d}".ljust(length, "x") for n in range(count)]

    def drop_two(src: Path) -> None:
        (src / "sub" / names[0]).unlink()
        (src / "sub" / "removed").unlink()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name in names:
        (src / "sub" / name).write_text("")
    streams = _chain(tmp_path, drop_two)
    dest = tmp_path / "dest"
    _foreign(dest)
    first = restore_from(streams[0], dest)
    restore_from(streams[1], dest)
    assert (dest / "sub" / "alien").exists() and (dest / "mine").exists()
    too_big = any("do not fit" in w for w in first.warnings)
    if too_big:
        assert (dest / "sub" / names[0]).exists() and (dest / "sub" / "removed").exists()
    else:
        assert not (dest / "sub" / names[0]).exists() and not (dest / "sub" / "removed").exists()
    assert len(os.listdir(dest / "sub")) == count + 3 - (0 if too_big else 2)   # + kept, removed, alien


def test_a_malformed_record_authorises_nothing(tmp_path, chain):
    dest = tmp_path / "dest"
    restore_from(chain[0], dest)
    for value in (b"", b"ndmpd-restored 1\n", b"ndmpd-restored 1\nn99\nvol", b"ndmpd-restored 1\nh4\nvol\0subabc"):
        os.setxattr(dest / "sub", restored.NAME, value)
        assert restored.read(os.open(dest / "sub", os.O_RDONLY | os.O_DIRECTORY)) is None
    restore_from(chain[1], dest)
    assert (dest / "sub" / "removed").exists()


def test_a_hashed_record_knows_its_names_only():
    record = restored._decode(restored._encode(b"o", {b"a", b"b"}, hashed=True))
    assert record is not None and b"a" in record and b"b" in record and b"c" not in record


def _gnu_chain(tmp_path: Path, change) -> list[Path]:
    """A GNU tar (pax format) level 0 and level 1 of ``src``, ``change(src)`` in between."""
    import subprocess
    src = tmp_path / "gsrc"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_text("f")
    (src / "a" / "g").write_text("g")
    streams = [tmp_path / "g0.tar", tmp_path / "g1.tar"]
    for n, stream in enumerate(streams):
        if n:
            time.sleep(1.05)            # GNU tar's snapshot has whole-second resolution
            change(src)
        subprocess.run(["tar", "--format=posix", "-C", str(src), "-g", str(tmp_path / "snap"), "-cf",
                        str(stream), "."], check=True, timeout=60)
    return streams


def test_gnu_renames_move_what_the_chain_restored_and_nothing_foreign(tmp_path):
    def rename(src: Path) -> None:
        (src / "a" / "b").rename(src / "a" / "moved")
        (src / "a").rename(src / "aa")
    streams = _gnu_chain(tmp_path, rename)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_text("the admin's")
    incremental = RestoreOptions(incremental=True)
    for stream in streams:
        restore_from(stream, dest, incremental)
    assert (dest / "aa" / "g").read_text() == "g" and (dest / "aa" / "moved" / "f").read_text() == "f"
    assert not (dest / "a").exists() and (dest / "mine").read_text() == "the admin's"


def test_a_rename_command_cannot_move_a_foreign_file(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "secret").write_text("the admin's")
    image = (pax.extended_header(pax.pax_record(b"NDMPD.level", b"1"), pax.XGLTYPE)
             + member(b"./", typeflag=pax.DIRTYPE, mode=0o755,
                      records=pax.pax_record(b"GNU.dumpdir", b"Rsecret\0Tstolen\0Dstolen\0\0")) + END)
    result = restore_from(write(tmp_path / "r.tar", image), dest)
    assert (dest / "secret").read_text() == "the admin's" and not (dest / "stolen").exists()
    assert any("not replayed" in w for w in result.warnings)


def test_a_file_added_after_the_level_0_restore_survives_the_level_1(tmp_path, chain):
    dest = tmp_path / "dest"
    restore_from(chain[0], dest)
    (dest / "sub" / "note").write_text("written by the admin after the restore")
    (dest / "later").mkdir()
    restore_from(chain[1], dest)
    assert (dest / "sub" / "note").exists() and (dest / "later").is_dir()
    assert not (dest / "sub" / "removed").exists() and not (dest / "top").exists()
    restore_from(chain[1], dest)                 # and again: the record did not take them in
    assert (dest / "sub" / "note").exists() and (dest / "later").is_dir()


def test_an_image_file_replacing_a_foreign_one_is_the_chains_from_then_on(tmp_path, chain):
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "removed").write_text("the admin's, replaced by the image's")
    restore_from(chain[0], dest)
    assert (dest / "sub" / "removed").read_text() == "removed later"
    restore_from(chain[1], dest)
    assert not (dest / "sub" / "removed").exists()


def _flat_image(level: int, listed: dict[bytes, bool], subdir: bytes = b"") -> bytes:
    """An image of one directory (the root, or ``subdir`` in it) whose dumpdir lists ``listed``
    (name -> whether this image holds it)."""
    labels = pax.extended_header(pax.pax_record(b"NDMPD.level", b"%d" % level)
                                 + pax.pax_record(b"NDMPD.volume", b"vol"), pax.XGLTYPE)
    entries = b"".join((b"Y" if held else b"N") + name + b"\0" for name, held in sorted(listed.items()))
    head = b"./" + subdir + b"/" if subdir else b"./"
    image = labels
    if subdir:
        image += member(b"./", typeflag=pax.DIRTYPE, mode=0o755,
                        records=pax.pax_record(b"GNU.dumpdir", b"D" + subdir + b"\0\0"))
    image += member(head, typeflag=pax.DIRTYPE, mode=0o755, records=pax.pax_record(b"GNU.dumpdir", entries + b"\0"))
    return image + b"".join(member(head + name, name) for name, held in sorted(listed.items()) if held) + END


def test_any_chain_removes_exactly_what_it_restored_and_later_dropped(tmp_path):
    from hypothesis import HealthCheck, given, settings, strategies as st
    name = st.binary(min_size=1, max_size=8).filter(lambda n: b"/" not in n and b"\0" not in n
                                                    and n not in (b".", b".."))

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(image=st.sets(name, max_size=8), dropped=st.sets(name, max_size=8), foreign=st.sets(name, max_size=6),
           subdir=st.sampled_from([b"", b"sub"]))
    def chain(image, dropped, foreign, subdir):
        image, foreign = image | dropped, foreign - image - dropped
        case = Path(tempfile_dir(tmp_path))
        dest = case / "dest"
        (dest / os.fsdecode(subdir)).mkdir(parents=True, exist_ok=True)
        where = dest / os.fsdecode(subdir)
        for n in foreign:
            (where / os.fsdecode(n)).write_bytes(b"foreign")
        restore_from(write(case / "l0.tar", _flat_image(0, {n: True for n in image}, subdir)), dest)
        restore_from(write(case / "l1.tar", _flat_image(1, {n: False for n in image - dropped}, subdir)), dest)
        on_disk = {os.fsencode(n) for n in os.listdir(where)}
        assert on_disk == (image - dropped) | foreign
        assert all((where / os.fsdecode(n)).read_bytes() == b"foreign" for n in foreign)
    chain()


def tempfile_dir(base: Path) -> str:
    import tempfile
    return tempfile.mkdtemp(dir=base)
