"""Replica volume settings: ``replica`` and ``keep``, refused with one line naming the key."""

from __future__ import annotations

import pytest

from ndmpd.config import build
from ndmpd.snapshots.mounts import mount_of
from tests.loopfs import btrfs_subvolume
from tests.test_config_checks import base, refused


def test_keep_below_one_is_refused(tmp_path):
    data = base(tmp_path)
    data["volume"][0]["keep"] = 0
    assert refused(tmp_path, data).startswith("volume[0].keep: 0 keeps no replica state")


@pytest.mark.parametrize("key,value", [("replica", "yes"), ("keep", "3")])
def test_wrong_types_name_the_key(tmp_path, key, value):
    data = base(tmp_path)
    data["volume"][0][key] = value
    assert refused(tmp_path, data).startswith(f"volume[0].{key}:")


def test_a_replica_off_btrfs_is_refused(tmp_path):
    if mount_of(tmp_path).fstype == "btrfs":
        pytest.skip("tmp_path is on btrfs here")
    data = base(tmp_path)
    data["volume"][0]["replica"] = True
    message = refused(tmp_path, data)
    assert message.startswith("volume[0].path: replica volumes must be on btrfs")


def test_a_replica_on_btrfs_may_not_exist_yet_and_ignores_snapshot(tmp_path):
    with btrfs_subvolume(tmp_path) as vol:
        data = base(tmp_path)
        data["volume"][0].update(path=str(vol / "replica"), replica=True, keep=5, snapshot="lvm")
        volume = build(data, "<test>", tmp_path).volumes[0]
        assert (volume.replica, volume.keep, volume.snapshot) == (True, 5, "none")
        data["volume"][0]["path"] = str(vol / "missing" / "replica")
        assert "does not exist" in refused(tmp_path, data)


def test_journal_is_off_by_default_and_a_masters_setting(tmp_path):
    data = base(tmp_path)
    assert build(data, "<test>", tmp_path).volumes[0].journal is False
    data["volume"][0]["journal"] = True
    assert build(data, "<test>", tmp_path).volumes[0].journal is True
    data["volume"][0]["journal"] = "yes"
    assert refused(tmp_path, data).startswith("volume[0].journal:")


def test_a_replica_with_a_journal_is_refused(tmp_path):
    with btrfs_subvolume(tmp_path) as vol:
        data = base(tmp_path)
        data["volume"][0].update(path=str(vol / "replica"), replica=True, journal=True)
        assert refused(tmp_path, data).startswith("volume[0].journal: a replica changes only by updates")
