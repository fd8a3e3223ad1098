"""SIGTERM: connected sessions are told and closed without a traceback, and the process exits
within server.shutdown_timeout even when a job is stuck in a call that never returns."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.blocking_client import NdmpClient
from ndmpd.wire import C
from tests.interop.conftest import PASSWORD, write_config as interop_config
from tests.server_process import ServerProcess, free_loopback_address

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, host: str, server_extra: str = "") -> Path:
    return interop_config(tmp, host, ["md5", "text"], server_extra=server_extra)


def test_sigterm_with_sessions_connected_logs_no_traceback(tmp_path):
    host = free_loopback_address()
    server = ServerProcess(host, write_config(tmp_path, host), tmp_path / "ndmpd.log", PASSWORD)
    try:
        clients = []
        for version in (2, 3, 4):
            client = NdmpClient(host, 10000, version)
            client.login("ndmp", PASSWORD, "text")
            clients.append(client)
        clients[2].call("TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
        clients[2].call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=C.ADDR_TCP)
        raw = [socket.create_connection((host, 10000)) for _ in range(3)]
        time.sleep(0.3)
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 5
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    log = (tmp_path / "ndmpd.log").read_text()
    assert "stopping" in log and log.count(": closed") >= 6
    assert "Traceback" not in log and "CancelledError" not in log and "ERROR" not in log
    for sock in raw:
        sock.close()


STUCK_SERVER = """
import sys, threading
from ndmpd import cli
from ndmpd.services import Blocking, Handler, config
from ndmpd.wire import C

never = threading.Event()
config.HANDLERS[C.CONFIG_GET_HOST_INFO] = Handler(lambda session, req: Blocking(never.wait))
sys.exit(cli.main(["serve", "--config", sys.argv[1]]))
"""


def test_sigterm_exits_within_shutdown_timeout_when_a_device_call_never_returns(tmp_path):
    host = free_loopback_address()
    config = write_config(tmp_path, host, "shutdown_timeout = 2")
    log = tmp_path / "ndmpd.log"
    proc = subprocess.Popen([sys.executable, "-c", STUCK_SERVER, str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = NdmpClient(host, 10000, 4, timeout=10)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        client.login("ndmp", PASSWORD, "text")
        client._send("CONFIG_GET_HOST_INFO", {})          # its reply never comes: the call is stuck
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 6
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "did not stop within server.shutdown_timeout" in text and "Traceback" not in text
