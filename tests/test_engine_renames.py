"""Renamed directories travel as GNU tar rename records (R/T in the root's dumpdir), not resent:
random renames (nested, swapped, into a new directory, with changes inside, with hard links to
names outside) over many lean updates leave the replica identical, walked and journal-driven, and
tape incrementals replay the same under GNU tar. Hostile rename records move nothing outside
what the restore places, and nothing it did not put there."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from ndmpd.engine import pax
from ndmpd.engine.job import DumpRequest, dump_volume
from ndmpd.engine.journal import ChangeJournal
from ndmpd.engine.restore import RestoreOptions
from tests.engine_helpers import gnu_tar, restore_from
from tests.loopfs import tmpfs_mount
from tests.trees import describe, differences

REPLICA = RestoreOptions(whole_copy=True)
UPDATES = 12


def _dump(src: Path, state: Path, stream: Path, journal: ChangeJournal | None = None, **kwargs):
    with open(stream, "wb") as out:
        request = DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", journal=journal, **kwargs)
        return dump_volume(request, out.fileno())


def _dirs(root: Path) -> list[Path]:
    found = []
    for top, names, _ in os.walk(root):
        found += [Path(top) / n for n in names if not (Path(top) / n).is_symlink()]
    return sorted(found)


def _files(root: Path) -> list[Path]:
    return sorted(Path(top) / n for top, _, names in os.walk(root) for n in names
                  if not (Path(top) / n).is_symlink())


def _seed(root: Path) -> None:
    for n in range(4):
        leaf = root / f"d{n}" / "mid" / "leaf"
        leaf.mkdir(parents=True)
        for k in range(3):
            (leaf / f"f{k}").write_text(f"{n}.{k}")
            (leaf.parent / f"g{k}").write_text(f"g{n}.{k}")
    os.link(root / "d0" / "mid" / "leaf" / "f0", root / "d1" / "linked-f0")


def _rename_some(root: Path, rng: random.Random, step: int) -> None:
    """Directory renames of every shape, with some changes inside and hard links across."""
    for n in range(rng.randint(1, 4)):
        dirs = _dirs(root)
        if not dirs:
            return
        victim = rng.choice(dirs)
        name = f"r{step}n{n}"
        op = rng.choice(["rename", "nested", "swap", "into-new", "change-inside", "link-across"])
        if op == "rename":
            victim.rename(victim.parent / name)
        elif op == "nested":                 # a directory and one inside it, both renamed
            inner = [d for d in dirs if d.is_relative_to(victim) and d != victim]
            if inner:
                rng.choice(inner).rename(victim / f"{name}.in")
            victim.rename(victim.parent / name)
        elif op == "swap":
            other = rng.choice([d for d in dirs if not d.is_relative_to(victim)
                                and not victim.is_relative_to(d)] or [victim])
            if other != victim:
                victim.rename(victim.parent / f"{name}.tmp")
                other.rename(victim)
                (victim.parent / f"{name}.tmp").rename(other)
        elif op == "into-new":
            target = rng.choice([d for d in dirs + [root] if not d.is_relative_to(victim)]) / name / "new"
            target.mkdir(parents=True)
            victim.rename(target / victim.name)
        elif op == "change-inside":
            moved = victim.parent / name
            victim.rename(moved)
            (moved / f"{name}.new").write_text(name)
            files = [f for f in _files(moved)]
            if files:
                with open(rng.choice(files), "a") as f:
                    f.write(name)
        else:
            files = _files(root)
            if files:
                os.link(rng.choice(files), victim / f"{name}.hl")
            victim.rename(victim.parent / name)


def _replicate(src: Path, tmp_path: Path, seed: int, journal: ChangeJournal | None) -> int:
    """UPDATES lean updates of random renames onto a replica, each compared; the bytes sent."""
    rng = random.Random(seed)
    state, replica, stream = tmp_path / "state", tmp_path / "replica", tmp_path / "image.tar"
    time.sleep(0.15)                          # past the lean rule's ctime slack
    token = _dump(src, state, stream, journal, hold="r").dump_date
    assert restore_from(stream, replica, REPLICA).refused == []
    sent = 0
    for step in range(UPDATES):
        _rename_some(src, rng, step)
        outcome = _dump(src, state, stream, journal, base_token=token, level=1, hold="r")
        sent += outcome.result.bytes_written
        result = restore_from(stream, replica, REPLICA)
        assert result.refused == [] and result.complete, f"update {step}"
        assert [w for w in result.warnings if "not replayed" in w] == [], f"update {step}"
        assert differences(describe(src), describe(replica)) == [], f"update {step}"
        token = outcome.dump_date
    return sent


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_renames_keep_a_walked_replica_identical(tmp_path, seed):
    src = tmp_path / "src"
    _seed(src)
    _replicate(src, tmp_path, seed, None)


@pytest.mark.parametrize("seed", [4, 5])
def test_random_renames_keep_a_journal_driven_replica_identical(tmp_path, seed):
    with tmpfs_mount(tmp_path) as mnt:
        src = mnt / "vol"
        _seed(src)
        journal = ChangeJournal(src)
        journal.start()
        try:
            _replicate(src, tmp_path, seed, journal)
        finally:
            journal.stop()


def test_gnu_tar_replays_tape_incrementals_with_renames(tmp_path):
    src, state, out = tmp_path / "src", tmp_path / "state", tmp_path / "gnu"
    _seed(src)
    out.mkdir()
    rng = random.Random(7)
    for level in range(4):
        stream = tmp_path / f"l{level}.tar"
        _dump(src, state, stream, level=level, update=True)
        gnu_tar("-x", "-G", "-p", "-f", str(stream), cwd=out)
        assert differences(describe(src), describe(out)) == [], f"level {level}"
        time.sleep(0.02)
        _rename_some(src, rng, level)


def test_renaming_a_big_directory_sends_a_listing_not_its_files(tmp_path):
    src, state, replica, stream = tmp_path / "src", tmp_path / "state", tmp_path / "replica", tmp_path / "i.tar"
    (src / "big").mkdir(parents=True)
    for n in range(10_000):
        (src / "big" / f"file{n:05d}").write_bytes(b"x" * 1000)
    time.sleep(0.15)
    token = _dump(src, state, stream, hold="r").dump_date
    restore_from(stream, replica, REPLICA)
    (src / "big").rename(src / "moved")
    outcome = _dump(src, state, stream, base_token=token, level=1, hold="r")
    assert outcome.result.bytes_written < 10_000 * 1000 // 20, "the directory's listing, not its 10 MB"
    assert outcome.result.files == 0
    restore_from(stream, replica, REPLICA)
    assert differences(describe(src), describe(replica)) == []


# -- hostile rename records ------------------------------------------------------------------

def _image(path: Path, dumpdir: list[bytes]) -> None:
    """A level-1 image whose root dumpdir is ``dumpdir`` (and nothing else)."""
    headers = pax.HeaderWriter()
    labels = pax.pax_record(b"NDMPD.level", b"1") + pax.pax_record(b"NDMPD.volume", b"vol")
    records = pax.pax_record(b"GNU.dumpdir", b"".join(e + b"\0" for e in dumpdir) + b"\0")
    data = (pax.extended_header(labels, pax.XGLTYPE)
            + headers.headers(b"./", 0o40755, 0, 0, 0, time.time_ns(), pax.DIRTYPE, b"", 0, 0, records)
            + pax.ZERO_BLOCK * 2)
    path.write_bytes(data + b"\0" * (-len(data) % 10240))


def _changed(before: dict, area: Path) -> list[str]:
    """What differs in ``area`` but the replica root's time (the image sets it)."""
    return [d for d in differences(before, describe(area)) if not d.startswith("b'replica': mtime")]


@pytest.fixture
def restored_replica(tmp_path):
    """A replica restored from a real base, with a directory ``outside`` beside it."""
    src, state, replica = tmp_path / "src", tmp_path / "state", tmp_path / "area" / "replica"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_text("mine")
    (tmp_path / "area" / "outside").mkdir(parents=True)
    (tmp_path / "area" / "outside" / "secret").write_text("not the restore's")
    _dump(src, state, tmp_path / "base.tar", hold="r")
    restore_from(tmp_path / "base.tar", replica, REPLICA)
    (replica / "admin").mkdir()                 # not put there by any restore
    return replica


@pytest.mark.parametrize("records", [
    [b"R../outside", b"Tstolen"],                       # climbs out for its source
    [b"Ra", b"T../escaped"],                            # climbs out for its destination
    [b"R/etc", b"Tetc"],                                # absolute
    [b"Radmin", b"Tmoved-admin"],                       # no restore put it there
    [b"Ra", b"Ta/inside"],                              # into itself
    [b"Ra", b"Tadmin"],                                 # onto something
    [b"Ra/f", b"Tf"],                                   # not a directory
])
def test_hostile_rename_records_move_nothing_they_may_not(tmp_path, restored_replica, records):
    before = describe(tmp_path / "area")
    _image(tmp_path / "hostile.tar", [b"Da", b"Dadmin"] + records)
    result = restore_from(tmp_path / "hostile.tar", restored_replica, REPLICA)
    assert any("not replayed" in w for w in result.warnings), result.warnings
    assert _changed(before, tmp_path / "area") == []


def test_a_rename_record_through_a_planted_symlink_is_refused(tmp_path, restored_replica):
    os.symlink("../outside", restored_replica / "a" / "via")
    _image(tmp_path / "hostile.tar", [b"Da", b"Dadmin", b"Ra/via/secret", b"Tgot", b"Ra", b"Tvia/x"])
    result = restore_from(tmp_path / "hostile.tar", restored_replica, REPLICA)
    assert sum("not replayed" in w for w in result.warnings) == 1, result.warnings
    assert (tmp_path / "area" / "outside" / "secret").read_text() == "not the restore's"
    assert not (tmp_path / "area" / "outside" / "x").exists()
    assert (restored_replica / "via" / "x").is_dir(), "the legitimate one moved, making its parent"
