"""Holds: a replica's base dump stays usable (its directory index kept) however many other
dumps run, and a hold keeps only {the acknowledged base, the newest}."""

from __future__ import annotations

import time
from pathlib import Path

from ndmpd.engine.dumpdates import DumpDates, parse_token
from ndmpd.engine.job import DumpRequest, dump_volume
from tests.engine_helpers import restore_from
from tests.trees import describe, differences


def _dump(src: Path, state: Path, stream: Path, **kwargs):
    with open(stream, "wb") as out:
        request = DumpRequest(source=src, key="vol", state_dir=state, snapshot="none", **kwargs)
        return dump_volume(request, out.fileno())


def test_a_hold_keeps_the_base_and_the_newest_and_never_touches_levels(tmp_path):
    src, state = tmp_path / "src", tmp_path / "state"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    first = _dump(src, state, tmp_path / "0.tar", hold="r1")
    dates = DumpDates(state)
    assert dates.held("vol") == {"r1": [parse_token(first.dump_date)]}
    second = _dump(src, state, tmp_path / "1.tar", base_token=first.dump_date, hold="r1")
    third = _dump(src, state, tmp_path / "2.tar", base_token=second.dump_date, hold="r1")
    assert dates.held("vol") == {"r1": sorted([parse_token(second.dump_date), parse_token(third.dump_date)])}
    assert dates.levels("vol") == {}                # replication never moves the tape levels' dates
    third_again = _dump(src, state, tmp_path / "3.tar", base_token=second.dump_date, hold="r1")
    assert parse_token(third.dump_date) not in dates.held("vol")["r1"]     # the unacknowledged one goes
    assert parse_token(third_again.dump_date) in dates.held("vol")["r1"]


def test_a_held_base_keeps_its_directory_index_past_pruning(tmp_path):
    src, state = tmp_path / "src", tmp_path / "state"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    base = _dump(src, state, tmp_path / "base.tar", hold="slow-replica")
    for n in range(40):                              # another replica and tape dumps run meanwhile
        _dump(src, state, tmp_path / "x.tar", update=True)
    time.sleep(0.02)
    (src / "d").rename(src / "renamed")
    inc = _dump(src, state, tmp_path / "inc.tar", base_token=base.dump_date, hold="slow-replica")
    assert inc.base.known_dirs is not None, "the held base's index was pruned"
    restored = tmp_path / "restored"
    restore_from(tmp_path / "base.tar", restored)
    restore_from(tmp_path / "inc.tar", restored)
    assert differences(describe(str(src)), describe(str(restored))) == []


def test_release_drops_the_hold_and_its_indexes_can_go(tmp_path):
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    (src / "f").write_text("f")
    one = _dump(src, state, tmp_path / "a.tar", hold="gone")
    dates = DumpDates(state)
    assert dates.release("vol", "gone") is True
    assert dates.release("vol", "gone") is False
    assert dates.held("vol") == {}
    for n in range(33):
        _dump(src, state, tmp_path / "x.tar", update=True)
    assert dates.load_index("vol", parse_token(one.dump_date)) is None


def test_an_undelivered_dump_leaves_the_hold_at_its_base(tmp_path):
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    (src / "f").write_text("f")
    base = _dump(src, state, tmp_path / "a.tar", hold="r")
    lost = _dump(src, state, tmp_path / "b.tar", base_token=base.dump_date, hold="r")
    lost.revert_date()
    assert DumpDates(state).held("vol") == {"r": [parse_token(base.dump_date)]}


def test_the_hold_variables_are_checked_at_start():
    import pytest
    from ndmpd.data.env import EnvError, parse
    volumes = ()
    env = parse([("NDMPD_HOLD", "ndmp-r-0")], "dump", "d", volumes, need_volume=False)
    assert env.hold == "ndmp-r-0" and not env.release
    for bad in ("../x", "a/b", "", "x" * 81, ".job-1"):
        with pytest.raises(EnvError, match="NDMPD_HOLD"):
            parse([("NDMPD_HOLD", bad)], "dump", "d", volumes, need_volume=False)
    with pytest.raises(EnvError, match="needs NDMPD_HOLD"):
        parse([("NDMPD_RELEASE", "y")], "dump", "d", volumes, need_volume=False)
