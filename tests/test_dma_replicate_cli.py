"""``ndmp replicate`` on its own (no servers): HOST:VOLUME splitting, durations, usage errors
with status 2, the run lock that makes promote/delete refuse, and ``status`` from the catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ndmpd.dma.catalog import open_catalog
from ndmpd.dma.commands_replicate import parse_duration, parse_target
from ndmpd.dma.errors import UsageError
from ndmpd.dma.replication_lock import ReplicationBusy, is_locked, lock_path, replication_lock

REPO = Path(__file__).resolve().parents[1]


def ndmp(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home), "NDMP_PASSWORD": "x",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ndmpd.dma", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("text, expected", [
    ("nas:/export/data", ("nas", "/export/data")),
    ("ndmp@127.0.0.5:10000:/export/data", ("ndmp@127.0.0.5:10000", "/export/data")),
    ("[::1]:vol", ("[::1]", "vol")),
    ("ndmp@[2001:db8::1]:10001:/v", ("ndmp@[2001:db8::1]:10001", "/v")),
])
def test_targets_split_at_the_last_colon(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["nas", "nas:", ":vol", "user@:vol"])
def test_a_target_without_host_or_volume_is_a_usage_error(text):
    with pytest.raises(UsageError, match="HOST:VOLUME"):
        parse_target(text)


@pytest.mark.parametrize("text, seconds", [("2s", 2.0), ("500ms", 0.5), ("1.5m", 90.0), ("1h", 3600.0),
                                           ("3", 3.0), (" 10S ", 10.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0s", "-1s", "2d", "fast", ""])
def test_bad_durations_are_refused(text):
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


def test_usage_errors_are_one_line_and_status_2(tmp_path):
    bad = ndmp("replicate", "run", "web", "--every", "soon", home=tmp_path)
    assert bad.returncode == 2 and "duration" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    both = ndmp("replicate", "run", "web", "--every", "2s", "--once", home=tmp_path)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    name = ndmp("replicate", "create", "bad/name", "127.0.0.1:10000:/v", "127.0.0.2:10000:/r", home=tmp_path)
    assert name.returncode == 2 and "replication name" in name.stderr, name.stderr
    target = ndmp("replicate", "create", "web", "127.0.0.1:10000:/v", "nohost", home=tmp_path)
    assert target.returncode == 2 and "HOST:VOLUME" in target.stderr, target.stderr


def test_an_unknown_replication_is_one_line_and_status_1(tmp_path):
    for argv in (("run", "nope", "--once"), ("status", "nope"), ("delete", "nope"),
                 ("promote", "nope", "127.0.0.2:10000:/r")):
        result = ndmp("replicate", *argv, "--catalog", str(tmp_path / "c.db"), home=tmp_path)
        assert result.returncode == 1 and result.stderr.strip() == "ndmp: no replication 'nope'", result.stderr


def test_an_unreachable_master_refuses_create_and_records_nothing(tmp_path):
    result = ndmp("replicate", "create", "web", "127.0.0.1:9:/v", "127.0.0.2:9:/r", "--catalog",
                  str(tmp_path / "c.db"), home=tmp_path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    with open_catalog(tmp_path / "c.db") as c:
        assert c.replications() == []


def test_the_run_lock_refuses_a_second_holder_and_status_shows_it(tmp_path):
    catalog = tmp_path / "c.db"
    with open_catalog(catalog) as c:
        c.create_replication("web", master_host="m", master_volume="/v", master_id="btrfs:u", butype="btrfs",
                             replicas=[("127.0.0.2:10000", "/r")])
        c.record_replica_update("web", "127.0.0.2:10000", "/r", started=time.time() - 3, ended=time.time() - 2,
                                outcome="done", bytes=2048, state_id="s-1", state_time=time.time() - 4)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[2]);"
        "from ndmpd.dma.replication_lock import replication_lock\n"
        "with replication_lock(Path(sys.argv[1]), 'web', 'run'):\n"
        "    print('held', flush=True); time.sleep(30)"), str(catalog), str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(catalog, "web")
        with pytest.raises(ReplicationBusy, match=f"pid {holder.pid}"):
            with replication_lock(catalog, "web", "promote"):
                pass
        for argv in (("delete", "web"), ("promote", "web", "127.0.0.2:10000:/r"), ("run", "web", "--once")):
            result = ndmp("replicate", *argv, "--catalog", str(catalog), home=tmp_path)
            assert result.returncode == 1 and "is active" in result.stderr, result.stderr
        status = json.loads(ndmp("replicate", "status", "web", "--json", "--catalog", str(catalog),
                                 home=tmp_path).stdout)
        assert status["running"] is True
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(catalog, "web") and lock_path(catalog, "web").exists()   # kill -9 frees it
    status = json.loads(ndmp("replicate", "status", "--json", "--catalog", str(catalog), home=tmp_path).stdout)
    [web] = status
    assert web["running"] is False and web["master"] == "m:/v" and web["butype"] == "btrfs"
    [r] = web["replicas"]
    assert (r["replica"], r["state_id"], r["last_bytes"], r["updates"], r["hold"]) == \
        ("127.0.0.2:10000:/r", "s-1", 2048, 1, "ndmp-web-0")
    assert 3.5 < r["lag"] < 60
    plain = ndmp("replicate", "status", "--catalog", str(catalog), home=tmp_path)
    assert plain.returncode == 0 and "127.0.0.2:10000:/r: state s-1, lag" in plain.stdout and "2.0 KiB" in plain.stdout
