"""Faults in the middle of an ``ndmp replicate`` update, against real ``ndmpd serve`` processes
on btrfs (a loop device): ``kill -9`` of the replica's ndmpd, of the master's, of ``ndmp
replicate run`` itself, and a dropped data connection (``ss -K``).

What a user relies on, after each fault: the replica still shows exactly the master snapshot
it showed before (never half an update), nothing is left behind (no partial receive, no
half-done switch, no extra snapshot held on the master), ``status`` says what went wrong,
and the next ``run --once`` resumes from the replica's state: it succeeds, the replica equals
the new master snapshot, and it sends no more than twice what one normal update of the same
change sends (no full resend). A killed ``run`` leaves no lock (the next run works) and no
data job running on either server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ndmpd.engine.dumpdates import DumpDates, parse_token
from ndmpd.snapshots import holds
from tests.loopfs import btrfs_subvolume, sh
from tests.server_process import ServerProcess
from tests.trees import describe, differences

from .conftest import PASSWORD, REPO, servers
from .ndmp_cli import json_lines, ndmp, ndmp_env

pytestmark = pytest.mark.interop

MASTER, REPLICA = "/export/master", "/export/rep"
CHANGE = 96 << 20            # changed bytes per update: long enough to be caught mid-way
MID = 4 << 20                # received bytes that make an update "under way"
HOLD = "ndmp-web-0"
REASONS = {"replica": "the replica's ndmpd", "master": "the master's ndmpd"}   # what status must say
BROKE = re.compile(r"Connection reset by peer|Software caused connection abort|Broken pipe")  # ss -K


def volume_table(name: str, path: Path, replica: bool) -> str:
    return f'\n[[volume]]\nname = "{name}"\npath = "{path}"\n' + ("replica = true\n" if replica else "")


def target(server: ServerProcess, volume: str) -> str:
    return f"ndmp@{server.host}:10000:{volume}"


class Setup:
    """One master volume, one replica volume (same btrfs), a home with the catalog."""

    def __init__(self, tmp_path: Path, master_vol: Path, replica_vol: Path, m: ServerProcess,
                 r: ServerProcess) -> None:
        self.home, self.catalog = tmp_path / "home", tmp_path / "home" / "catalog.db"
        self.m, self.r = m, r
        self.master_vol, self.replica_vol = master_vol, replica_vol
        self.held = is_btrfs(master_vol)       # btrfs: the master holds its snapshots (else dump)
        self.t = target(r, REPLICA)
        self.round = 0
        self.shown: dict = {}                  # the master as the replica's state saw it

    def ndmp(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return ndmp(*args, "--catalog", str(self.catalog), home=self.home, timeout=timeout)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ndmpd.dma", *args, "--catalog", str(self.catalog)]

    def change(self) -> None:
        """One update's worth of change: a big file rewritten, a small one added."""
        self.round += 1
        with open(self.master_vol / "big.bin", "wb") as f:
            for _ in range(CHANGE >> 20):
                f.write(os.urandom(1 << 20))
        (self.master_vol / f"small-{self.round}").write_text(f"round {self.round}\n")

    def run_once(self) -> tuple[int, dict, str]:
        result = self.ndmp("replicate", "run", "web", "--once", "--json", timeout=300)
        updates = {line["replica"]: line for line in json_lines(result.stdout) if line["type"] == "update"}
        if result.returncode == 0:
            self.shown = describe(str(self.master_vol))
        return result.returncode, updates.get(self.t, {}), result.stderr

    def start_run(self) -> subprocess.Popen:
        return subprocess.Popen(self.argv("replicate", "run", "web", "--once", "--json"), cwd=REPO,
                                env=ndmp_env(self.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def row(self) -> dict:
        result = self.ndmp("replicate", "status", "web", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        return next(r for r in doc["replicas"] if r["replica"] == self.t) | {"running": doc["running"]}


# ------------------------------------------------------------------ what the servers show

def data_connections(host: str) -> list[int]:
    """Local ports of ESTABLISHED TCP connections on ``host`` other than NDMP's 10000 (the
    replica's side of the data connection), from /proc/net/tcp."""
    want = socket.inet_aton(host)
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        addr, port = fields[1].split(":")
        if fields[3] != "01":
            continue
        if struct.pack("<I", int(addr, 16)) == want and int(port, 16) != 10000:
            ports.append(int(port, 16))
    return ports


def store_recv(replica_vol: Path) -> Path:
    return replica_vol.parent / f".{replica_vol.name}.ndmpd-replica" / "recv"


def partial_receives(replica_vol: Path) -> list[str]:
    """Entries of the store's recv/ that are not recorded states (a receive in progress or
    left behind)."""
    recv = store_recv(replica_vol)
    if not recv.is_dir():
        return []
    return sorted(e.name for e in recv.iterdir() if not e.name.startswith("state-"))


def bytes_received(host: str, port: int) -> int:
    """What the replica's side of the data connection has received so far (``ss -ti``)."""
    shown = sh("ss", "-tinH", "src", host, "sport", "=", str(port)).stdout
    found = re.search(r"bytes_received:(\d+)", shown)
    return int(found.group(1)) if found else 0


def wait_mid_update(s: Setup, proc: subprocess.Popen, timeout: float = 60) -> int:
    """Wait until the update is under way: a data connection established on the replica, a
    partial subvolume (or stage) in its store, and part of the change received; the replica's
    data port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = data_connections(s.r.host)
        if ports and partial_receives(s.replica_vol) and MID <= bytes_received(s.r.host, ports[0]) < CHANGE:
            return ports[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the update ended before it could be caught mid-way: {out}{err}")
        time.sleep(0.01)
    pytest.fail("no update in flight after 60 s")


def job_processes(tmp_path: Path) -> list[str]:
    """``btrfs send``/``btrfs receive`` processes still working on this test's filesystem."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if len(words) >= 2 and words[0].endswith("btrfs") and words[1] in ("send", "receive") \
                and any(str(tmp_path) in w for w in words):
            found.append(" ".join(words))
    return found


def wait_no_jobs(tmp_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while job_processes(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job_processes(tmp_path) == []


def halts(log: Path) -> list[str]:
    """A server's "data halted (reason N), ..." log lines, oldest first."""
    return [line.split(": ", 2)[-1] for line in log.read_text().splitlines() if ": data halted (" in line]


def wait_halt(log: Path, before: int, timeout: float = 30) -> str:
    """Until the server logs a halt after the ``before`` it had: its DATA job ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(halts(log)) > before:
            return halts(log)[before]
        time.sleep(0.1)
    pytest.fail(f"{log}: no data halt after the control connection closed (still ACTIVE?)")


def same(a: Path, b: Path) -> None:
    assert differences(describe(str(a)), describe(str(b))) == []


def assert_kept_state(s: Setup, state_id: str) -> None:
    """The replica shows exactly master snapshot ``state_id``, with no debris anywhere."""
    assert differences(s.shown, describe(str(s.replica_vol))) == []
    if s.held:
        kept = holds.find(s.master_vol, state_id)
        assert kept is not None, f"the master no longer holds the replica's state {state_id}"
        same(kept.path, s.replica_vol)
        held = holds.held(s.master_vol, HOLD)
        assert len(held) <= 2 and state_id in {h.uuid for h in held}, [h.name for h in held]
    else:                                    # the dump master holds the base's directory index
        dates = DumpDates(s.m.config.parent / "state").held(MASTER).get(HOLD, [])
        assert len(dates) <= 2 and parse_token(state_id) in dates, (dates, state_id)
    assert partial_receives(s.replica_vol) == []
    assert not os.path.lexists(s.replica_vol.parent / f".{s.replica_vol.name}.ndmpd-next")
    server_side = subprocess.run([sys.executable, "-m", "ndmpd", "replica", "--config", str(s.r.config),
                                  "status", REPLICA, "--json"], cwd=REPO, capture_output=True, text=True,
                                 timeout=60)
    assert server_side.returncode == 0, server_side.stderr
    doc = json.loads(server_side.stdout)
    assert doc["state"] == state_id and not doc["needs_full_update"], doc
    assert [k["id"] for k in doc["states"] if k["current"]] == [state_id], doc


def assert_resumes(s: Setup, reference: int) -> None:
    """The next run succeeds incrementally from the replica's state, within 2x one update."""
    before = s.row()["state_id"]
    code, update, err = s.run_once()
    assert code == 0, err + str(update)
    assert not update["full"], update
    assert update["bytes"] <= 2 * reference, (update["bytes"], reference)
    row = s.row()
    assert row["state_id"] == update["state_id"] != before and row["last_error"] is None
    assert row["last_bytes"] == update["bytes"]
    if s.held:
        newest = holds.find(s.master_vol, update["state_id"])
        assert newest is not None
        same(newest.path, s.replica_vol)
    same(s.master_vol, s.replica_vol)


def restart(server: ServerProcess) -> ServerProcess:
    return ServerProcess(server.host, server.config, server.log, PASSWORD)


def is_btrfs(path: Path) -> bool:
    return sh("stat", "-f", "-c", "%T", str(path)).stdout.strip() == "btrfs"


@pytest.fixture
def btrfs(tmp_path):
    with btrfs_subvolume(tmp_path, size=3 << 30) as vol:
        yield vol.parent


@pytest.mark.parametrize("kind", ["btrfs", "dump"])
def test_kill_and_drop_mid_update_keep_the_replica_and_resume(tmp_path, btrfs, kind):
    """``btrfs``: a btrfs subvolume master (butype btrfs, held snapshots); ``dump``: a master on
    a filesystem without snapshots (/tmp's), the file-level path into the same btrfs replica."""
    if not Path("/usr/bin/ss").exists() and not Path("/bin/ss").exists():
        pytest.skip("ss (iproute2) is not installed: cannot drop a connection")
    (tmp_path / "home").mkdir()
    (btrfs / "r").mkdir()
    master_vol = btrfs / "vol" if kind == "btrfs" else tmp_path / "plain"
    master_vol.mkdir(exist_ok=True)
    if kind == "dump" and is_btrfs(master_vol):
        pytest.skip(f"{tmp_path} is on btrfs: no filesystem without snapshots for the dump path")
    extra = {"m": volume_table(MASTER, master_vol, False), "r": volume_table(REPLICA, btrfs / "r" / "rep", True)}
    with servers(tmp_path, "m", "r", extra=extra) as started:
        m, r = started
        s = Setup(tmp_path, master_vol, btrfs / "r" / "rep", m, r)
        s.change()
        created = s.ndmp("replicate", "create", "web", target(m, MASTER), s.t)
        assert created.returncode == 0, created.stderr
        code, update, err = s.run_once()
        assert code == 0 and update["full"], err

        s.change()                                          # the reference: one normal update
        code, update, err = s.run_once()
        assert code == 0 and not update["full"], err
        reference = update["bytes"]
        assert reference >= CHANGE

        def kill_replica(port: int) -> str:
            s.r.proc.kill()
            s.r.proc.wait(10)
            return "replica"

        def kill_master(port: int) -> str:
            s.m.proc.kill()
            s.m.proc.wait(10)
            return "master"

        def drop(port: int) -> str:
            dropped = sh("ss", "-K", "dst", s.r.host, "dport", "=", str(port))
            assert dropped.returncode == 0, dropped.stderr
            return "drop"

        for fault in (kill_replica, kill_master, drop):
            state = s.row()["state_id"]
            failures = s.row()["failures"]
            s.change()
            proc = s.start_run()
            port = wait_mid_update(s, proc)
            what = fault(port)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 1, (what, out, err)
            if what == "replica":
                s.r = started[1] = restart(s.r)
            elif what == "master":
                s.m = started[0] = restart(s.m)
            wait_no_jobs(tmp_path)
            row = s.row()
            assert row["state_id"] == state and row["failures"] == failures + 1, (what, row)
            if what == "drop":                              # whichever side halted first says so
                assert BROKE.search(row["last_error"]) and "went away" not in row["last_error"], row
            else:
                assert REASONS[what] in row["last_error"], (what, row)
            if what == "master" and s.held:
                assert "taken by a backup that never ended" in s.m.log.read_text()
            if what == "replica":
                assert "left by an interrupted replica update" in s.r.log.read_text()
            assert_kept_state(s, state)
            assert_resumes(s, reference)

        # kill -9 of ``ndmp replicate run``: no lock left, both servers abort their jobs
        state = s.row()["state_id"]
        s.change()
        proc = s.start_run()
        wait_mid_update(s, proc)
        before = {server: len(halts(server.log)) for server in (s.m, s.r)}
        proc.kill()
        proc.communicate(timeout=30)
        for server in (s.m, s.r):            # each saw its session (or the data connection) close
            halt = wait_halt(server.log, before[server])
            assert not halt.startswith("data halted (reason 1)"), halt       # never SUCCESSFUL
        wait_no_jobs(tmp_path)
        assert s.row()["running"] is False
        assert_kept_state(s, state)
        assert_resumes(s, reference)
        promoted = s.ndmp("replicate", "promote", "web", s.t, "--json", timeout=300)
        assert promoted.returncode == 0, promoted.stderr     # the lock is free
        same(s.master_vol, s.replica_vol)


def test_run_every_rides_out_a_killed_and_restarted_server_without_a_full_resend(tmp_path, btrfs):
    """``run --every 1s`` keeps going through a kill -9 and restart of the replica's ndmpd, then
    of the master's: each time the next update it makes resumes from the replica's state."""
    (tmp_path / "home").mkdir()
    (btrfs / "r").mkdir()
    extra = {"m": volume_table(MASTER, btrfs / "vol", False), "r": volume_table(REPLICA, btrfs / "r" / "rep", True)}
    with servers(tmp_path, "m", "r", extra=extra) as started:
        s = Setup(tmp_path, btrfs / "vol", btrfs / "r" / "rep", *started)
        s.change()
        assert s.ndmp("replicate", "create", "web", target(s.m, MASTER), s.t).returncode == 0
        assert s.run_once()[0] == 0
        s.change()
        code, update, err = s.run_once()
        assert code == 0 and not update["full"], err
        reference = update["bytes"]

        proc = subprocess.Popen(s.argv("replicate", "run", "web", "--every", "1s", "--json"), cwd=REPO,
                                env=ndmp_env(s.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for side in (1, 0):                           # the replica's ndmpd, then the master's
                state = s.row()["state_id"]
                s.change()
                wait_mid_update(s, proc)
                started[side].proc.kill()
                started[side].proc.wait(10)
                started[side] = restart(started[side])
                s.m, s.r = started
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    row = s.row()
                    if row["state_id"] != state and row["last_error"] is None:
                        break
                    time.sleep(0.5)
                else:
                    pytest.fail(f"run --every did not catch up after the restart: {row}")
                assert row["running"] is True and row["failures"] >= 1
                same(s.master_vol, s.replica_vol)
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        updates = [line for line in json_lines(out) if line["type"] == "update"]
        resumed = [b for a, b in zip(updates, updates[1:]) if a["status"] != "done" and b["status"] == "done"]
        assert len(resumed) == 2, updates
        for update in resumed:
            assert not update["full"] and update["bytes"] <= 2 * reference, (update, reference)
