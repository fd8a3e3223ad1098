"""Under systemd: the unit verifies, sd_notify tells the manager the truth, logs suit journald."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ndmpd.sdnotify import Notifier

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "conf" / "ndmpd.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_is_a_hardened_notify_service_that_reloads_on_sighup():
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["NoNewPrivileges"] == ["yes"] and s["PrivateTmp"] == ["yes"] and s["ProtectSystem"]
    assert s["StateDirectory"] == ["ndmpd"]
    caps = set(s["CapabilityBoundingSet"][0].split())
    assert {"CAP_DAC_READ_SEARCH", "CAP_CHOWN", "CAP_MKNOD", "CAP_SYS_ADMIN"} <= caps
    assert "CAP_NET_ADMIN" not in caps and "CAP_SETUID" not in caps
    assert any("serve --config" in v for v in s["ExecStart"])


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    # verify insists that ExecStart's binary exists: point it at this interpreter's entry point
    entry = Path(sys.executable).parent / "ndmpd"
    if not entry.exists():
        pytest.skip(f"no ndmpd entry point next to {sys.executable} (pip install -e .)")
    unit = tmp_path / "ndmpd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ndmpd", str(entry)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ndmpd.service" not in result.stderr, result.stderr       # no warning about our unit


def test_notifier_speaks_to_abstract_and_path_sockets(tmp_path):
    for address, env in ((str(tmp_path / "notify"), str(tmp_path / "notify")),
                         (f"\0ndmpd-test-{os.getpid()}", f"@ndmpd-test-{os.getpid()}")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            assert Notifier({"NOTIFY_SOCKET": env}).ready("up")
            assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    assert not Notifier({}).ready()


def wait_for(sock: socket.socket, wanted: str, timeout: float = 20) -> list[str]:
    sock.settimeout(timeout)
    got = []
    while True:
        message = sock.recv(4096).decode()
        got.append(message)
        if wanted in message:
            return got


def test_serve_notifies_ready_reloading_and_stopping(tmp_path):
    config = tmp_path / "ndmpd.toml"
    (tmp_path / "vol").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.write_text(f'[server]\nlisten = ["127.0.0.1:{port}"]\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[[user]]\nname = "ndmp"\npassword = "pw"\n')
    config.chmod(0o600)
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        proc = subprocess.Popen([sys.executable, "-m", "ndmpd", "serve", "--config", str(config)], cwd=REPO,
                                env=dict(os.environ, NOTIFY_SOCKET=str(notify)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = wait_for(sock, "READY=1")
            socket.create_connection(("127.0.0.1", port), timeout=5).close()    # listening by then
            assert f"127.0.0.1:{port}" in ready[-1]
            proc.send_signal(signal.SIGHUP)
            reload = wait_for(sock, "READY=1")
            assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reload[0])
            usec = int(reload[0].rsplit("=", 1)[1])
            assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30_000_000
            proc.send_signal(signal.SIGTERM)
            assert wait_for(sock, "STOPPING=1")
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_logs_under_journald_carry_a_priority_and_no_timestamp(tmp_path):
    config = tmp_path / "ndmpd.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[[user]]\nname = "ndmp"\npassword = "pw"\n')
    config.chmod(0o600)
    log = tmp_path / "journal"
    with open(log, "wb") as stream:
        st = os.fstat(stream.fileno())
        proc = subprocess.Popen([sys.executable, "-m", "ndmpd", "serve", "--config", str(config)], cwd=REPO,
                                env=dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"),
                                stdout=subprocess.DEVNULL, stderr=stream)
        try:
            deadline = time.monotonic() + 20
            while "listening on" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log.read_text().splitlines()
    assert any(line == "<6>ndmpd.server: stopping" for line in lines), lines
    assert all(re.match(r"<[0-7]>ndmpd[.\w]*: ", line) for line in lines), lines
