"""What ``ndmp backup`` shows while it runs, against real ndmpd processes: ``--json`` lines,
the bar on a terminal and nothing animated on a pipe, the servers' log lines with their
level, exit 3 for a backup that completed with warnings, and SIGINT of a three-way backup
(exit 130, both servers idle after, the catalog says interrupted)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import time

import pytest

from .conftest import REPO, servers
from .ndmp_cli import assert_interrupted, json_lines, ndmp, ndmp_env, progress_then_summary, stop_mid_job

pytestmark = pytest.mark.interop


def big_file(path, mib: int) -> None:
    """Incompressible bytes, so the backup takes a while."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(chunk[i % 251:] + chunk[:i % 251])


def backup_args(spec: str, catalog, *more: str) -> list[str]:
    return ["backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--catalog", str(catalog), *more]


def test_json_lines_progress_grows_and_the_summary_ends_them(server_factory, tmp_path):
    server = server_factory()
    big_file(tmp_path / "vol" / "big.bin", 256)
    (tmp_path / "vol" / "small.txt").write_text("x")
    result = ndmp(*backup_args(f"ndmp@{server.host}", tmp_path / "c.db", "--json", "--progress-interval",
                               "0.05"), home=tmp_path)
    assert result.returncode == 0, result.stderr
    progress, summary = progress_then_summary(result.stdout)
    done = [p["bytes"] for p in progress]
    assert all(set(p) >= {"bytes", "total", "rate", "eta", "elapsed"} for p in progress)
    assert any(p["total"] is not None and p["total"] >= p["bytes"] for p in progress), "the server's estimate"
    assert set(summary) >= {"id", "status", "bytes", "file_number", "entries", "env", "warnings"}
    assert summary["status"] == "done" and summary["bytes"] >= done[-1] > 0 and summary["warnings"] == []
    assert summary["entries"] >= 2 and summary["env"]


def _socket_in(vol) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(vol / "live.sock"))
    return sock


def test_a_warning_from_the_server_is_shown_with_its_level_and_exits_3(server_factory, tmp_path):
    """ndmpd's tar skips a socket and logs a LOG_MESSAGE warning: the backup is done, exit 3."""
    server = server_factory()
    (tmp_path / "vol" / "kept.txt").write_text("kept")
    sock = _socket_in(tmp_path / "vol")
    try:
        catalog = tmp_path / "c.db"
        plain = ndmp(*backup_args(f"ndmp@{server.host}", catalog), home=tmp_path)
        assert plain.returncode == 3, plain.stderr
        [line] = [x for x in plain.stderr.splitlines() if "live.sock" in x]
        assert line.startswith(f"ndmp: ndmp@{server.host} warning: ") and "socket skipped" in line
        assert "1 warning" in plain.stdout and " done" in plain.stdout

        as_json = ndmp(*backup_args(f"ndmp@{server.host}", catalog, "--json"), home=tmp_path)
        assert as_json.returncode == 3, as_json.stderr
        lines = json_lines(as_json.stdout)
        logs = [x for x in lines if x["type"] == "log" and "live.sock" in x["text"]]
        assert logs and logs[0]["level"] == "warning" and logs[0]["host"] == f"ndmp@{server.host}"
        assert lines[-1]["status"] == "done" and any("live.sock" in w for w in lines[-1]["warnings"])
    finally:
        sock.close()
    shown = ndmp("backups", "--catalog", str(catalog), "--json", home=tmp_path)
    assert [b["status"] for b in json.loads(shown.stdout)] == ["done", "done"], "the backups are kept"


def _run_on_pty(args: list[str], home) -> tuple[int, bytes]:
    """Run ``ndmp`` with stdout and stderr on a pseudo-terminal; its exit status and all it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))    # a 100x24 terminal
    proc = subprocess.Popen([sys.executable, "-m", "ndmpd.dma", *args], cwd=REPO, env=ndmp_env(home),
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:                  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=60), bytes(out)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_bar_draws_on_a_terminal_and_nothing_animated_goes_to_a_pipe(server_factory, tmp_path):
    server = server_factory()
    big_file(tmp_path / "vol" / "big.bin", 256)
    spec = f"ndmp@{server.host}"
    status, shown = _run_on_pty(backup_args(spec, tmp_path / "c.db", "--progress-interval", "0.05"), tmp_path)
    assert status == 0, shown
    redraws = shown.replace(b"\r\n", b"\n")              # the terminal's own CR LF is not a redraw
    assert b"\r" in redraws and b"B/s" in redraws and b"%|" in redraws, shown   # tqdm redraws in place
    assert b"backup " in shown and b" done: " in shown
    piped = ndmp(*backup_args(spec, tmp_path / "c.db", "--progress-interval", "0.05"), home=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stdout + piped.stderr and "B/s" not in piped.stderr
    assert piped.stderr == "" and " done: " in piped.stdout.splitlines()[-1]
    assert all(line.startswith("ndmp: ") for line in piped.stdout.splitlines()[:-1]), "server lines, then the summary"


def test_a_bad_password_is_one_line_and_exit_1(server_factory, tmp_path):
    server = server_factory()
    result = ndmp(*backup_args(f"ndmp@{server.host}", tmp_path / "c.db", "--json"), home=tmp_path,
                  password="wrong")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("ndmp: ") and ("auth" in line.lower() or "password" in line.lower()), line
    assert result.stdout == ""


def test_sigint_mid_three_way_backup_exit_130_both_servers_idle_catalog_interrupted(tmp_path):
    with servers(tmp_path, "data", "tape") as [data, tape]:
        for i in range(4):
            big_file(tmp_path / "data" / "vol" / f"part{i}.bin", 192)
        catalog = tmp_path / "c.db"
        stopped = stop_mid_job(["backup", f"ndmp@{data.host}:/export/data", "--tape", f"ndmp@{tape.host}:vtape0",
                                "--catalog", str(catalog), "--json", "--progress-interval", "0.1"], tmp_path,
                               line=lambda line: line["type"] == "progress" and line["bytes"] > 0)   # bytes flow
        summary = assert_interrupted(stopped, {"data": "idle", "mover": "idle"})
        assert summary["bytes"] < 4 * 192 << 20, "it stopped before the end"
        shown = ndmp("backups", "--catalog", str(catalog), "--json", home=tmp_path)
        [row] = json.loads(shown.stdout)
        assert row["status"] == "interrupted" and "SIGINT" in row["halt_reason"]


def test_a_failed_backup_with_json_ends_with_a_failed_summary_naming_the_servers_reason(server_factory, tmp_path):
    server = server_factory()
    spec = f"ndmp@{server.host}"
    result = ndmp("backup", f"{spec}:/no/such", "--tape", f"{spec}:vtape0", "--catalog", str(tmp_path / "c.db"),
                  "--json", home=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "not a configured volume" in line, line
    lines = json_lines(result.stdout)
    assert any(x["type"] == "log" and x["level"] == "error" for x in lines), "--json shows every server line"
    assert lines[-1]["type"] == "summary" and lines[-1]["status"] == "failed"
    assert "not a configured volume" in lines[-1]["reason"]
