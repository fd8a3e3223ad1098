"""Several DMA jobs on one server at once, as an admin runs a backup window: one ndmjob per
volume, each to its own drive, v3 and v4, tar and dump, file history on. Every job must end
OKAY with its own tree on its own cartridge (no stream, history or state crossing between
sessions), the restores run at once too, and a job aimed at a drive another session holds is
refused with the reason while the others go on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ndmpd.wire import C
from tests.blocking_client import NdmpClient
from tests.engine_helpers import build_every_case
from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, PASSWORD
from tests.trees import describe, differences

PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB
JOBS = [("4", "tar"), ("3", "dump"), ("4", "dump"), ("3", "tar")]     # volume i -> drive vtape{i}


def tables(tmp_path: Path) -> str:
    """Volumes /export/v1.. and drives vtape1.. beside the fixture's /export/data and vtape0."""
    return "".join(f'\n[[volume]]\nname = "/export/v{i}"\npath = "{tmp_path / f"v{i}"}"\n'
                   f'\n[[tape]]\nname = "vtape{i}"\npath = "{tmp_path / "state" / f"vtape{i}.img"}"\n'
                   for i in range(1, len(JOBS)))


def volume(tmp_path: Path, i: int) -> tuple[str, Path]:
    return ("/export/data", tmp_path / "vol") if i == 0 else (f"/export/v{i}", tmp_path / f"v{i}")


def fill(root: Path, i: int) -> None:
    """A tree unlike the others: every kind of file, files of its own, a large random file."""
    src = build_every_case(root / "src")
    many = src / f"many-{i}"
    many.mkdir()
    for n in range(600 + 150 * i):
        (many / f"f{n:05d}").write_bytes(os.urandom(n % 3000 + i))
    (src / f"large-{i}.bin").write_bytes(os.urandom((6 + 4 * i) << 20))


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(PROGRAM), "-v", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(job: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        out, _ = job.communicate()
        pytest.fail(f"ndmjob did not finish within {timeout} s:\n{out}")
    return out


@pytest.fixture
def busy_server(ndmjob, server_factory, tmp_path):
    for i in range(len(JOBS)):
        fill(volume(tmp_path, i)[1], i)
    return server_factory(extra=tables(tmp_path))


def backups(server, tmp_path: Path, jobs: range) -> dict[int, str]:
    """Start a backup of volume i to vtape{i} for every i in ``jobs`` at once; their outputs."""
    running = {}
    for i in jobs:
        version, butype = JOBS[i]
        name, _ = volume(tmp_path, i)
        running[i] = start("-c", "-D", server.agent(version), "-f", f"vtape{i}", "-B", butype, "-C", name,
                           "-I", str(tmp_path / f"job{i}.idx"))
    return {i: finish(job) for i, job in running.items()}


def test_backups_and_restores_of_four_volumes_run_at_once_each_on_its_own(busy_server, tmp_path):
    server = busy_server
    outs = backups(server, tmp_path, range(len(JOBS)))
    for i, out in outs.items():
        assert "Operation ended OKAY" in out, (i, out)
    for i in range(len(JOBS)):
        index = (tmp_path / f"job{i}.idx").read_text()
        env = dict(line[3:].split("=", 1) for line in index.splitlines() if line.startswith("DE "))
        assert env["FILESYSTEM"] == volume(tmp_path, i)[0] and env["TYPE"] == JOBS[i][1], env
        assert f"many-{i}" in index and f"large-{i}.bin" in index, i        # its own history...
        others = [j for j in range(len(JOBS)) if j != i]
        assert not any(f"large-{j}.bin" in index for j in others), i   # ...and nobody else's

    running = {}
    for i, (version, butype) in enumerate(JOBS):
        _, root = volume(tmp_path, i)
        running[i] = start("-x", "-D", server.agent(version), "-f", f"vtape{i}", "-B", butype,
                           "-C", str(root / "restored"), "-J", str(tmp_path / f"job{i}.idx"))
    for i, job in running.items():
        out = finish(job)
        assert "Operation ended OKAY" in out, (i, out)
        _, root = volume(tmp_path, i)
        assert differences(describe(root / "src"), describe(root / "restored" / "src")) == [], i
    assert server.proc.poll() is None


def test_a_job_on_a_drive_another_session_holds_is_refused_and_the_others_go_on(busy_server, tmp_path):
    server = busy_server
    held = len(JOBS) - 1
    with NdmpClient(server.host, version=4) as holder:
        holder.login("ndmp", PASSWORD)
        holder.call("TAPE_OPEN", device=f"vtape{held}", mode=C.TAPE_RDWR_MODE)   # (an error raises)
        outs = backups(server, tmp_path, range(len(JOBS)))
        for i in range(held):
            assert "Operation ended OKAY" in outs[i], (i, outs[i])
        assert "Operation ended OKAY" not in outs[held], outs[held]
        assert f"vtape{held} is in use by another session (from 127.0.0.1" in outs[held], outs[held]
        assert not (tmp_path / "state" / f"vtape{held}.img").exists() or \
            (tmp_path / "state" / f"vtape{held}.img").stat().st_size < 1 << 20   # nothing written to it
        holder.call("TAPE_CLOSE")
    again = backups(server, tmp_path, range(held, held + 1))[held]
    assert "Operation ended OKAY" in again, again
