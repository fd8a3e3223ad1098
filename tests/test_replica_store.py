"""The replica store alone, on real btrfs: the switch is atomic, a crash at any step leaves a
consistent replica that the next store object cleans up, ``keep`` states are kept, and P is
read-only for users and for root.

States are made the way a master's stream makes them: ``btrfs send [-p] | btrfs receive`` into
the store's ``recv/`` directory (the NDMP path is tested in tests/interop/test_replica_recover.py).
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest

from ndmpd.config import Volume
from ndmpd.replica import checks
from ndmpd.replica.state import ReplicaError
from ndmpd.replica.store import ReplicaStore
from ndmpd.snapshots import btrfs_send
from tests.loopfs import btrfs_subvolume, sh


class Master:
    """A master subvolume and its read-only snapshots, sent into a store like a master would."""

    def __init__(self, vol: Path) -> None:
        self.vol = vol
        self.snaps = vol.parent / "snaps"
        self.snaps.mkdir()
        self.taken: list[Path] = []

    def write(self, **files: str) -> None:
        for name, text in files.items():
            (self.vol / name).write_text(text)

    def snapshot(self) -> Path:
        snap = self.snaps / f"s{len(list(self.snaps.iterdir())) + 1}"
        assert sh("btrfs", "subvolume", "snapshot", "-r", str(self.vol), str(snap)).returncode == 0
        self.taken.append(snap)
        return snap

    def receive(self, store: ReplicaStore, snap: Path, parent: Path | None = None) -> Path:
        """``btrfs send | btrfs receive`` into recv/: what a finished receive leaves there."""
        store.prepare()
        send = subprocess.Popen(["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(snap)],
                                stdout=subprocess.PIPE)
        done = subprocess.run(["btrfs", "receive", "-q", "-e", "--chroot", str(store.recv)], stdin=send.stdout,
                              capture_output=True, timeout=120)
        send.stdout.close()
        assert send.wait(60) == 0 and done.returncode == 0, done.stderr
        return store.recv / snap.name

    def uuid(self, snap: Path) -> str:
        return btrfs_send.subvolume_info(snap).uuid

    def update(self, store: ReplicaStore, **files: str) -> str:
        """One whole update: receive, record, switch, prune; returns the state id."""
        parent = self.taken[-1] if self.taken else None
        self.write(**files)
        snap = self.snapshot()
        with store.locked():
            store.clean()
            added = store.add(self.receive(store, snap, parent if store.current() else None), self.uuid(snap), 0.0)
            store.switch(added)
            store.prune()
        return added.id


@pytest.fixture
def world(tmp_path):
    with btrfs_subvolume(tmp_path, 512 << 20) as vol:
        yield Master(vol), tmp_path


def store_of(tmp_path: Path, vol: Path, keep: int = 3) -> ReplicaStore:
    return ReplicaStore(Volume("/replica", vol.parent / "replica", "none", True, keep), tmp_path / "state")


def listing(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir()) if p.is_file()}


def test_initial_and_incremental_updates_show_each_master_snapshot(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    first = master.update(store, a="1", b="1")
    assert listing(store.path) == {"a": "1", "b": "1"}
    assert store.current().id == first
    second = master.update(store, a="2")
    assert listing(store.path) == {"a": "2", "b": "1"}
    fresh = store_of(tmp, master.vol)
    assert fresh.current().id == second
    assert [s.id for s in fresh.states()] == [second, first]
    assert sorted(os.listdir(master.vol.parent)) == sorted(["vol", "snaps", "replica", ".replica.ndmpd-replica",
                                                            ".replica.ndmpd-old"])
    assert os.stat(store.root).st_mode & 0o777 == 0o700


def test_a_reader_holding_a_directory_sees_old_or_new_never_a_mix(world):
    master, tmp = world
    store = store_of(tmp, master.vol, keep=2)
    master.update(store, a="0", b="0")
    mixed: list[tuple[str, str]] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                fd = os.open(store.path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                mixed.append(("P", "missing"))
                continue
            try:
                pair = tuple(_read_at(fd, name) for name in ("a", "b"))
            except FileNotFoundError:       # held across two switches: its view was retired
                continue
            finally:
                os.close(fd)
            reads[0] += 1
            if pair[0] != pair[1]:
                mixed.append(pair)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 9):
            master.update(store, a=str(n), b=str(n))
    finally:
        stop.set()
        thread.join(30)
    assert mixed == [] and reads[0] > 0
    assert listing(store.path) == {"a": "8", "b": "8"}


def _read_at(fd: int, name: str) -> str:
    file = os.open(name, os.O_RDONLY, dir_fd=fd)
    try:
        return os.read(file, 100).decode()
    finally:
        os.close(file)


def test_an_open_directory_keeps_the_old_view_after_a_switch(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    master.update(store, a="old")
    fd = os.open(store.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        master.update(store, a="new")
        assert _read_at(fd, "a") == "old"
        assert (store.path / "a").read_text() == "new"
    finally:
        os.close(fd)


# -- a crash at each step: the debris that step leaves, then a fresh store ---------------------

def _received_not_renamed(master, store, snap, parent):
    master.receive(store, snap, parent)


def _renamed_not_recorded(master, store, snap, parent):
    received = master.receive(store, snap, parent)
    os.rename(received, store.recv / f"state-{store.record().next_seq}")


def _partial_receive(master, store, snap, parent):
    store.prepare()
    assert sh("btrfs", "subvolume", "create", str(store.recv / snap.name)).returncode == 0
    (store.recv / snap.name / "half").write_text("x")


def _recorded_not_switched(master, store, snap, parent):
    store.add(master.receive(store, snap, parent), master.uuid(snap), 0.0)


def _next_made_not_exchanged(master, store, snap, parent):
    added = store.add(master.receive(store, snap, parent), master.uuid(snap), 0.0)
    btrfs_send.snapshot(store.state_path(added), store.next, readonly=True)


def _exchanged_old_not_deleted(master, store, snap, parent):
    added = store.add(master.receive(store, snap, parent), master.uuid(snap), 0.0)
    btrfs_send.snapshot(store.state_path(added), store.next, readonly=True)
    btrfs_send.exchange(store.next, store.path)


STEPS = {   # step: does P show the new state afterwards?
    _partial_receive: False, _received_not_renamed: False, _renamed_not_recorded: False,
    _recorded_not_switched: False, _next_made_not_exchanged: False, _exchanged_old_not_deleted: True,
}


@pytest.mark.parametrize("step", list(STEPS), ids=lambda f: f.__name__.strip("_"))
def test_a_crash_at_any_step_leaves_a_consistent_replica_and_is_cleaned(world, step):
    master, tmp = world
    store = store_of(tmp, master.vol)
    first = master.update(store, a="1", b="1")
    master.write(a="2", b="2")
    snap = master.snapshot()
    step(master, store, snap, master.taken[-2])
    fresh = store_of(tmp, master.vol)
    shows_new = STEPS[step]
    assert fresh.current().id == (master.uuid(snap) if shows_new else first)
    assert listing(fresh.path) == ({"a": "2", "b": "2"} if shows_new else {"a": "1", "b": "1"})
    with fresh.locked():
        fresh.clean()
    assert not os.path.lexists(fresh.next)
    kept = {s.name for s in fresh.record().states}
    assert set(os.listdir(fresh.recv)) == kept
    assert fresh.current().id == (master.uuid(snap) if shows_new else first)
    if not shows_new:               # the next update resumes from the state P shows
        master.taken.pop()
        third = master.update(fresh, a="3", b="3")
        assert fresh.current().id == third and listing(fresh.path) == {"a": "3", "b": "3"}


def test_a_killed_update_process_leaves_a_consistent_replica(world):
    """A child process killed with SIGKILL between its exchange and the old view's deletion."""
    master, tmp = world
    store = store_of(tmp, master.vol)
    first = master.update(store, a="1")
    master.write(a="2")
    snap = master.snapshot()
    received = master.receive(store, snap, master.taken[-2])
    pid = os.fork()
    if pid == 0:                                 # the child: record, make next, then die
        try:
            child = store_of(tmp, master.vol)
            added = child.add(received, master.uuid(snap), 0.0)
            btrfs_send.snapshot(child.state_path(added), child.next, readonly=True)
            os.kill(os.getpid(), 9)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    fresh = store_of(tmp, master.vol)
    assert fresh.current().id == first and (fresh.path / "a").read_text() == "1"
    with fresh.locked():
        assert str(fresh.next) in fresh.clean()


def test_keep_n_states_and_always_the_current_one(world):
    master, tmp = world
    store = store_of(tmp, master.vol, keep=2)
    ids = [master.update(store, a=str(n)) for n in range(5)]
    assert [s.id for s in store.states()] == ids[:-3:-1]
    assert sorted(os.listdir(store.recv)) == sorted(s.name for s in store.record().states)


def test_rollback_shows_an_older_state_and_requires_a_full_update(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    first = master.update(store, a="1")
    second = master.update(store, a="2")
    with store.locked():
        assert store.rollback(None).id == first
    assert (store.path / "a").read_text() == "1" and store.current().id == first
    with pytest.raises(ReplicaError, match="a full update is needed"):
        checks.check_base("/replica", store.record(), store.current(), first)
    checks.check_base("/replica", store.record(), store.current(), "0")
    with pytest.raises(ReplicaError, match=f"stream is based on {second} but /replica is at {first}"):
        checks.check_base("/replica", store.record(), store.current(), second)


def test_the_replica_is_read_only_for_root(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    master.update(store, a="1")
    for attempt in (lambda: (store.path / "new").write_text("x"), lambda: (store.path / "a").write_text("x"),
                    lambda: os.chmod(store.path / "a", 0o777), lambda: os.unlink(store.path / "a")):
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno == errno.EROFS


def test_the_replica_is_read_only_for_a_user(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    master.write(a="1")
    os.chmod(master.vol, 0o777)
    os.chmod(master.vol / "a", 0o666)
    master.update(store)
    os.chmod(master.vol.parent, 0o755)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            for target in (store.path / "new", store.path / "a"):
                try:
                    with open(target, "w") as file:
                        file.write("x")
                    code = 2
                    break
                except OSError as exc:
                    code = 0 if exc.errno in (errno.EROFS, errno.EACCES) else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_a_non_empty_unmanaged_path_is_never_clobbered(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    store.path.mkdir()
    checks.check_unmanaged("/replica", store.path, store.managed())     # empty: fine
    (store.path / "precious").write_text("data")
    with pytest.raises(ReplicaError, match="not empty and holds no replica"):
        checks.check_unmanaged("/replica", store.path, store.managed())


def test_a_replica_refuses_another_master_until_reset(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    master.update(store, a="1")
    store.set_master("btrfs:aaaa")
    with pytest.raises(ReplicaError, match="ndmpd replica reset /replica"):
        checks.check_master("/replica", store.record(), "btrfs:bbbb", False)
    store.reset()
    checks.check_master("/replica", store.record(), "btrfs:bbbb", False)
    assert store.record().reseed


def test_one_update_of_a_replica_at_a_time(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    with store.locked():
        with pytest.raises(ReplicaError, match="another update of this replica is running"):
            with store_of(tmp, master.vol).locked(wait=False):
                pass
    with store_of(tmp, master.vol).locked(wait=False):
        pass


def test_a_damaged_record_refuses_until_reset_and_then_takes_a_full_update(world):
    master, tmp = world
    store = store_of(tmp, master.vol)
    master.update(store, a="1")
    store.record_path.write_text("{not json")
    with pytest.raises(ReplicaError, match="ndmpd replica reset"):
        store.current()
    with store.locked():
        store.reset()
        store.clean()
    assert (store.path / "a").read_text() == "1"          # what P shows stays until the re-seed
    assert store.current() is None and store.record().reseed
    master.taken.clear()                                   # the next update is a full one
    fresh = master.update(store, a="2")
    assert store.current().id == fresh and (store.path / "a").read_text() == "2"
