"""The fanotify change journal drives lean replication updates: each update lists only the
directories the journal names, and applied onto the replica's copy it still leaves the
replica identical to the master, through many random change sets, on tmpfs and ext4. When
the journal cannot prove continuity (stopped, started after the base, a hard-linked file
changed) the update walks, and the replica stays identical all the same."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

from ndmpd.engine.job import DumpRequest, dump_volume
from ndmpd.engine.journal import ChangeJournal
from ndmpd.engine.restore import RestoreOptions
from tests.engine_helpers import restore_from
from tests.loopfs import ext4_mount, tmpfs_mount
from tests.trees import describe, differences

REPLICA = RestoreOptions(whole_copy=True)        # as ndmpd/data/replica_jobs.py restores a dump image
UPDATES = 20
MASTERS = {"tmpfs": tmpfs_mount, "ext4": ext4_mount}


def _dump(src: Path, state: Path, stream: Path, journal: ChangeJournal | None = None, **kwargs):
    with open(stream, "wb") as out:
        request = DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", journal=journal, **kwargs)
        return dump_volume(request, out.fileno())


def _entries(root: Path) -> tuple[list[Path], list[Path]]:
    dirs, files = [], []
    for top, dnames, fnames in os.walk(root):
        dirs += [Path(top) / d for d in dnames if not (Path(top) / d).is_symlink()]
        files += [Path(top) / f for f in fnames]
    return sorted(dirs), sorted(files)


def _seed(root: Path, rng: random.Random) -> None:
    for n in range(6):
        deep = root / f"top{n}" / "mid" / f"deep{n}" / "leaf"
        deep.mkdir(parents=True)
        for k in range(4):
            (deep / f"f{k}").write_text(f"{n}.{k}" * rng.randint(1, 50))
            (deep.parent / f"g{k}").write_text(f"g{n}.{k}")
    os.symlink("top0/mid", root / "link-to-mid")


def _mutate(root: Path, rng: random.Random, step: int, hard_links: bool) -> None:
    """A handful of random changes anywhere in the tree."""
    for n in range(rng.randint(1, 6)):
        dirs, files = _entries(root)
        files = [f for f in files if not f.is_symlink()]
        op = rng.choice(["create", "write", "delete", "rename", "move", "mkdir", "rmtree", "mvdir",
                         "chmod", "chmoddir", "xattr", "xattrdir", "truncate", "symlink"]
                        + (["hardlink"] if hard_links else []))
        where = rng.choice(dirs + [root])
        name = f"s{step}n{n}"
        if op == "create":
            (where / name).write_text(name * rng.randint(1, 100))
        elif op == "mkdir":
            deep = where / name / "x" / "y"
            deep.mkdir(parents=True)
            (deep / "inside").write_text(name)
        elif op == "symlink":
            os.symlink(name, where / f"{name}.sym")
        elif op in ("rmtree", "mvdir", "chmoddir", "xattrdir") and dirs:
            victim = rng.choice(dirs)
            if op == "rmtree":
                shutil.rmtree(victim)
            elif op == "mvdir":
                target = rng.choice([d for d in dirs + [root] if not d.is_relative_to(victim)])
                victim.rename(target / name)
            elif op == "chmoddir":
                victim.chmod(rng.choice([0o700, 0o750, 0o755]))
            else:
                os.setxattr(victim, "user.tag", name.encode())
        elif files:
            victim = rng.choice(files)
            if op == "write":
                with open(victim, "a") as f:
                    f.write(name)
            elif op == "delete":
                victim.unlink()
            elif op == "rename":
                victim.rename(victim.parent / name)
            elif op == "move":
                victim.rename(where / name)
            elif op == "chmod":
                victim.chmod(rng.choice([0o600, 0o640, 0o644]))
            elif op == "xattr":
                os.setxattr(victim, "user.note", name.encode())
            elif op == "truncate":
                os.truncate(victim, rng.randint(0, 3))
            elif op == "hardlink":
                os.link(victim, where / f"{name}.hl")


def _walked_index(src: Path, state: Path, stream: Path) -> dict[int, bytes]:
    """What a full walk finds: the directory index a journal-driven update must hold too."""
    return _dump(src, state / "walk", stream).result.dir_index


def _replicate(tmp_path: Path, src: Path, seed: int, stop_at: int | None = None,
               restart_at: int | None = None, hard_links: bool = True) -> tuple[int, int]:
    """UPDATES lean updates of ``src`` onto a replica, each checked; (journal-driven, walked)."""
    rng = random.Random(seed)
    state, replica, stream = tmp_path / "state", tmp_path / "replica", tmp_path / "image.tar"
    _seed(src, rng)
    journal = ChangeJournal(src)
    journal.start()
    used = walked = 0
    try:
        token = _dump(src, state, stream, journal, hold="r").dump_date
        assert restore_from(stream, replica, REPLICA).refused == []
        for step in range(UPDATES):
            if step == stop_at:
                journal.stop()
            if step == restart_at:
                journal = ChangeJournal(src)
                journal.start()
            _mutate(src, rng, step, hard_links)
            answer = journal.changed_since(int(token))
            used, walked = used + (answer is not None), walked + (answer is None)
            outcome = _dump(src, state, stream, journal, base_token=token, level=1, hold="r")
            result = restore_from(stream, replica, REPLICA)
            assert result.refused == [] and result.complete, f"update {step}"
            assert differences(describe(src), describe(replica)) == [], f"update {step} (journal: {answer})"
            assert outcome.result.dir_index == _walked_index(src, state, tmp_path / "walk.tar"), f"update {step}"
            token = outcome.dump_date
    finally:
        journal.stop()
    return used, walked


@pytest.mark.parametrize("fs", sorted(MASTERS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_journal_driven_updates_keep_the_replica_identical(tmp_path, fs, seed):
    with MASTERS[fs](tmp_path) as mnt:
        used, walked = _replicate(tmp_path, mnt / "vol", seed, hard_links=seed != 1)
    assert used >= UPDATES // 2, f"the journal answered only {used} of {UPDATES} updates"


@pytest.mark.parametrize("fs", sorted(MASTERS))
def test_a_stopped_journal_falls_back_to_the_walk_and_stays_identical(tmp_path, fs):
    with MASTERS[fs](tmp_path) as mnt:
        used, walked = _replicate(tmp_path, mnt / "vol", 4, stop_at=4, restart_at=8, hard_links=False)
    assert walked == 5, "stopped (4 updates), then started after the base (1)"
    assert used == UPDATES - 5, "journal-driven before the stop and after the restart's first update"


def test_a_lean_update_lists_only_the_directories_the_journal_names(tmp_path):
    with tmpfs_mount(tmp_path) as mnt:
        src, state = mnt / "vol", tmp_path / "state"
        _seed(src, random.Random(0))
        time.sleep(0.15)           # past the lean rule's ctime slack (dump.CTIME_SLACK_NS)
        journal = ChangeJournal(src)
        journal.start()
        try:
            token = _dump(src, state, tmp_path / "base.tar", journal, hold="r").dump_date
            (src / "top3" / "mid" / "deep3" / "leaf" / "f1").write_text("changed")
            assert journal.changed_since(int(token)) == {b"top3/mid/deep3/leaf"}
            outcome = _dump(src, state, tmp_path / "inc.tar", journal, base_token=token, level=1, hold="r")
        finally:
            journal.stop()
    assert outcome.result.entries == 2, "the changed file and its directory's times, nothing else"
    assert journal.changed_since(int(token)) is None, "a stopped journal proves nothing"


def test_a_moved_directory_keeps_a_hard_link_to_a_name_outside_it(tmp_path):
    """Found by the random test above; it fails the same with the walk (no journal)."""
    src, state, replica, stream = tmp_path / "src", tmp_path / "state", tmp_path / "replica", tmp_path / "i.tar"
    (src / "a" / "moved").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "moved" / "f").write_text("shared")
    os.link(src / "a" / "moved" / "f", src / "b" / "f.link")
    time.sleep(0.15)
    token = _dump(src, state, stream, hold="r").dump_date
    restore_from(stream, replica, REPLICA)
    time.sleep(0.15)
    (src / "a" / "moved").rename(src / "a" / "renamed")
    _dump(src, state, stream, base_token=token, level=1, hold="r")
    restore_from(stream, replica, REPLICA)
    assert differences(describe(src), describe(replica)) == []


def test_lost_events_make_the_journal_walk_until_it_has_seen_a_whole_update(tmp_path):
    """A queue overflow (the reader held up while more changes came than the kernel queues)
    loses events: the journal says so (None) for any base before it, and answers again for
    bases after it."""
    limit = int(Path("/proc/sys/fs/fanotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"fanotify queues {limit} events here: too many to overflow in a test")
    with tmpfs_mount(tmp_path, size=256 << 20) as mnt:
        src = mnt / "vol"
        (src / "many").mkdir(parents=True)
        journal = ChangeJournal(src)
        journal.start()
        try:
            before = time.time_ns()
            with journal._lock:                   # the reader thread cannot drain meanwhile
                for n in range(limit + 100):
                    (src / "many" / f"f{n}").touch()
            assert journal.changed_since(before) is None
            after = time.time_ns()
            (src / "one").mkdir()
            assert journal.changed_since(after) == {b"", b"one"}       # the new directory, and where it is
        finally:
            journal.stop()
