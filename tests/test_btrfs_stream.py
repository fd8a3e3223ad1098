"""btrfs send streams through the guard and receive: real streams pass, edited ones are refused
and leave nothing behind (real btrfs on a loop device, as root)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ndmpd.snapshots import SnapshotError
from ndmpd.snapshots import btrfs_send
from ndmpd.snapshots.send_stream import (A_PATH, A_PATH_TO, END, MKFILE, RENAME, HostileStream,
                                         StreamGuard)
from tests.btrfs_streams import join, set_attr, split
from tests.engine_helpers import build_every_case
from tests.loopfs import btrfs_subvolume
from tests.trees import describe, differences


@pytest.fixture(scope="module")
def fs(tmp_path_factory):
    """One btrfs with a tricky tree, snapshots s1 (full) and s2 (after changes), and their streams."""
    tmp = tmp_path_factory.mktemp("btrfs-stream")
    with btrfs_subvolume(tmp) as vol:
        mnt = vol.parent
        build_every_case(vol / "tree")
        (mnt / "snaps").mkdir()
        btrfs_send.snapshot(vol, mnt / "snaps" / "s1", readonly=True)
        (vol / "tree" / "dir" / "file").write_bytes(b"changed\n")
        (vol / "tree" / "new").write_bytes(b"x" * 5000)
        os.rename(vol / "tree" / "zero", vol / "tree" / "zero-renamed")
        os.unlink(vol / "tree" / "rel_link")
        btrfs_send.snapshot(vol, mnt / "snaps" / "s2", readonly=True)
        full, incremental = bytearray(), bytearray()
        btrfs_send.send(mnt / "snaps" / "s1", None, full.extend)
        btrfs_send.send(mnt / "snaps" / "s2", mnt / "snaps" / "s1", incremental.extend)
        yield mnt, bytes(full), bytes(incremental)


def reader(data: bytes, chunk: int = 4096):
    view = memoryview(data)
    at = [0]

    def read(size: int) -> bytes:
        piece = bytes(view[at[0]:at[0] + min(size, chunk)])
        at[0] += len(piece)
        return piece
    return read


def recv_dir(mnt: Path, name: str) -> Path:
    path = mnt / name
    path.mkdir()
    return path


def everything(mnt: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), mnt) for d, dirs, files in os.walk(mnt)
            for n in dirs + files if "snaps" not in d.split("/")}


def test_heads_of_real_streams_match_subvolume_show(fs):
    mnt, full, incremental = fs
    s1, s2 = btrfs_send.subvolume_info(mnt / "snaps" / "s1"), btrfs_send.subvolume_info(mnt / "snaps" / "s2")
    for chunk in (1, 7, 65536):
        guard = StreamGuard()
        for at in range(0, len(full), chunk):
            guard.feed(memoryview(full[at:at + chunk]))
        guard.finish()
        assert (guard.header.name, guard.header.uuid, guard.header.parent_uuid) == ("s1", s1.uuid, None)
        if chunk == 1:
            break                    # byte by byte: once is enough (slow)
    guard = StreamGuard()
    guard.feed(memoryview(incremental))
    guard.finish()
    assert (guard.header.name, guard.header.uuid, guard.header.parent_uuid) == ("s2", s2.uuid, s1.uuid)
    assert s1.readonly and s2.parent_uuid is not None


def test_receive_round_trip_full_then_incremental(fs):
    mnt, full, incremental = fs
    into = recv_dir(mnt, "recv-ok")
    got = btrfs_send.receive(reader(full, 65536), into, StreamGuard())
    assert got.path == into / "s1" and got.bytes == len(full)
    info = btrfs_send.subvolume_info(got.path)
    assert info.readonly and info.received_uuid == btrfs_send.subvolume_info(mnt / "snaps" / "s1").uuid
    assert differences(describe(mnt / "snaps" / "s1" / "tree"), describe(got.path / "tree")) == []
    later = btrfs_send.receive(reader(incremental, 65536), into, StreamGuard())
    assert differences(describe(mnt / "snaps" / "s2" / "tree"), describe(later.path / "tree")) == []
    with pytest.raises(OSError):
        (later.path / "tree" / "new").write_bytes(b"no")
    for name in ("s1", "s2"):
        btrfs_send.delete(into / name)


def _edited(full: bytes, edit) -> bytes:
    version, commands = split(full)
    return join(version, edit(commands))


def _first(commands, cmd):
    return next(i for i, (c, _) in enumerate(commands) if c == cmd)


def _path_edit(value: bytes, cmd: int = MKFILE, kind: int = A_PATH):
    def edit(commands):
        i = _first(commands, cmd)
        commands[i] = set_attr(commands[i], kind, value)
        return commands
    return edit


def _second_subvol(commands):
    return commands[:3] + [commands[0]] + commands[3:]


def _slash_name(commands):
    commands[0] = set_attr(commands[0], A_PATH, b"a/b")
    return commands


HOSTILE = {
    "dotdot": (_path_edit(b"../escape"), HostileStream, "'..'"),
    "dotdot-deep": (_path_edit(b"tree/../../escape"), HostileStream, "'..'"),
    "absolute": (_path_edit(b"/tmp/escape"), HostileStream, "absolute"),
    "rename-out": (_path_edit(b"../escape", RENAME, A_PATH_TO), HostileStream, "'..'"),
    "second-subvol": (_second_subvol, HostileStream, "second subvolume"),
    "slash-name": (_slash_name, HostileStream, "plain name"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_streams_are_refused_and_leave_nothing(fs, case):
    mnt, full, _ = fs
    edit, error, words = HOSTILE[case]
    stream = _edited(full, edit)
    into = recv_dir(mnt, f"recv-{case}")
    before = everything(mnt)
    with pytest.raises(error, match=words):
        btrfs_send.receive(reader(stream), into, StreamGuard())
    assert os.listdir(into) == []
    assert everything(mnt) == before
    assert not os.path.lexists("/tmp/escape")


def test_bad_magic_truncation_and_flipped_bytes_are_refused(fs):
    mnt, full, _ = fs
    into = recv_dir(mnt, "recv-broken")
    before = everything(mnt)
    with pytest.raises(HostileStream, match="magic"):
        btrfs_send.receive(reader(b"not-a-stream" + full[12:]), into, StreamGuard())
    with pytest.raises(HostileStream, match="truncated"):
        btrfs_send.receive(reader(full[:len(full) // 2 + 3]), into, StreamGuard())
    flipped = bytearray(full)
    for at in range(len(full) // 3, len(full) // 3 + 64, 8):
        flipped[at] ^= 0xFF
    with pytest.raises((HostileStream, SnapshotError)):
        btrfs_send.receive(reader(bytes(flipped)), into, StreamGuard())
    assert os.listdir(into) == []
    assert everything(mnt) == before


def test_unknown_command_and_oversized_command_are_refused(fs):
    _, full, _ = fs
    version, commands = split(full)
    guard = StreamGuard()
    with pytest.raises(HostileStream, match="unknown command"):
        guard.feed(memoryview(join(version, [commands[0], (99, [])])))
    assert guard.header is not None and guard.header.name == "s1"
    big = StreamGuard()
    with pytest.raises(HostileStream, match="bytes long"):
        big.feed(memoryview(b"btrfs-stream\0\x01\0\0\0" + (64 << 20).to_bytes(4, "little") + b"\1\0\0\0\0\0"))
    first = StreamGuard()
    with pytest.raises(HostileStream, match="starts with"):
        first.feed(memoryview(join(1, [(END, [])])))


def test_check_head_refusal_and_cancel_mid_receive_leave_nothing(fs):
    mnt, full, _ = fs
    into = recv_dir(mnt, "recv-cancel")

    def refuse(head):
        raise SnapshotError(f"not wanted: {head.name}")
    with pytest.raises(SnapshotError, match="not wanted: s1"):
        btrfs_send.receive(reader(full), into, StreamGuard(), check_head=refuse)
    cancel = threading.Event()
    read = reader(full, 4096)
    calls = [0]

    def slow_read(size: int) -> bytes:
        calls[0] += 1
        if calls[0] == 3:
            cancel.set()
        return read(size)
    with pytest.raises(SnapshotError, match="cancelled"):
        btrfs_send.receive(slow_read, into, StreamGuard(), cancel)
    assert os.listdir(into) == []


def test_send_cancelled_or_refused_write_kills_send(fs):
    mnt, _, _ = fs
    cancel = threading.Event()

    def write(chunk):
        cancel.set()
    with pytest.raises(SnapshotError, match="cancelled"):
        btrfs_send.send(mnt / "snaps" / "s1", None, write, cancel)

    def broken(chunk):
        raise BrokenPipeError("peer gone")
    with pytest.raises(BrokenPipeError):
        btrfs_send.send(mnt / "snaps" / "s1", None, broken)
    with pytest.raises(SnapshotError, match="btrfs send"):
        btrfs_send.send(mnt / "snaps" / "missing", None, lambda c: None)


def test_exchange_swaps_read_only_subvolumes(fs):
    mnt, _, _ = fs
    (mnt / "x").mkdir()
    btrfs_send.snapshot(mnt / "snaps" / "s1", mnt / "x" / "a", readonly=True)
    btrfs_send.snapshot(mnt / "snaps" / "s2", mnt / "x" / "b", readonly=True)
    a, b = btrfs_send.subvolume_info(mnt / "x" / "a").uuid, btrfs_send.subvolume_info(mnt / "x" / "b").uuid
    btrfs_send.exchange(mnt / "x" / "a", mnt / "x" / "b")
    assert btrfs_send.subvolume_info(mnt / "x" / "a").uuid == b
    assert btrfs_send.subvolume_info(mnt / "x" / "b").uuid == a
    with pytest.raises(OSError):
        btrfs_send.exchange(mnt / "x" / "a", mnt / "x" / "missing")
    btrfs_send.set_readonly(mnt / "x" / "a", False)
    assert not btrfs_send.subvolume_info(mnt / "x" / "a").readonly
    for name in ("a", "b"):
        btrfs_send.delete(mnt / "x" / name)


def test_a_tapes_zero_padding_after_end_is_not_the_streams_but_other_bytes_are_refused(fs):
    mnt, full, _ = fs
    into = recv_dir(mnt, "recv-padded")
    got = btrfs_send.receive(reader(full + bytes(10240 - len(full) % 10240), 10240), into, StreamGuard())
    assert got.bytes == len(full)
    btrfs_send.delete(got.path)
    guard = StreamGuard()
    assert guard.feed(memoryview(full + bytes(100))) == len(full)
    with pytest.raises(HostileStream, match="after the END"):
        StreamGuard().feed(memoryview(full + b"\0\0junk"))


def test_remove_stale_keeps_held_snapshots_and_clears_a_dead_jobs_snapshot(fs, tmp_path):
    from ndmpd.snapshots import SNAPSHOT_DIR, holds, remove_stale
    from ndmpd.snapshots.base import job_tag
    mnt, _, _ = fs
    vol = mnt / "vol"
    inside = vol / SNAPSHOT_DIR / "held" / "h"             # the fallback place of holds
    inside.mkdir(parents=True)
    btrfs_send.snapshot(vol, inside / "ndmpd-20260101T000000.000000-abcdef", readonly=True)
    kept = holds.take(vol, "h")                             # beside the volume
    mine = holds.take_temporary(vol, job_tag())             # this process is alive: kept
    dead = holds.take_temporary(vol, "999999-1-abcdef")     # its process is gone: removed
    assert holds.held(vol) == [kept]
    removed = remove_stale([vol], tmp_path)
    assert removed == [str(dead.parent)] and not dead.parent.exists() and mine.exists()
    assert (inside / "ndmpd-20260101T000000.000000-abcdef").is_dir() and kept.path.is_dir()
    assert holds.release(vol, "h") == [kept.name] and holds.held(vol) == []
    holds.remove_temporary(mine)
    assert not mine.parent.exists()
    btrfs_send.delete(inside / "ndmpd-20260101T000000.000000-abcdef")


def test_a_held_snapshot_whose_backup_never_ended_is_removed_at_start_up(fs):
    """take() marks the snapshot pending; settle() (the backup ended) keeps it for good;
    remove_unsettled() (start-up, after a kill -9) deletes only the still-pending ones."""
    from ndmpd.snapshots import holds
    mnt, _, _ = fs
    vol = mnt / "vol"
    settled = holds.take(vol, "h")
    holds.settle(settled)
    orphan = holds.take(vol, "h")                           # its server was killed mid-backup
    assert holds.held(vol, "h") == [settled, orphan]         # the marks are not snapshots
    assert holds.remove_unsettled(vol) == [str(orphan.path)]
    assert holds.held(vol, "h") == [settled] and not orphan.path.exists()
    assert sorted(os.listdir(settled.path.parent)) == [settled.name]
    assert holds.release(vol, "h") == [settled.name] and not settled.path.parent.exists()


def test_delete_removes_nested_subvolumes_of_a_read_only_one(fs):
    mnt, _, _ = fs
    outer = mnt / "outer"
    btrfs_send.snapshot(mnt / "vol", outer, readonly=False)
    (outer / "a").mkdir()
    assert os.system(f"btrfs -q subvolume create {outer / 'a' / 'inner'}") == 0
    btrfs_send.set_readonly(outer, True)
    btrfs_send.delete(outer)
    assert not outer.exists()
