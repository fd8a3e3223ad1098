"""An ndmpd server in its own process on 127.0.0.N:10000, for interop tests and benchmarks
(NDMP's port, so tshark dissects the traffic)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_loopback_address() -> str | None:
    """An address in 127/8 whose port 10000 is free, or None."""
    start = 10 + os.getpid() % 200
    for n in list(range(start, 250)) + list(range(10, start)):
        host = f"127.0.0.{n}"
        with socket.socket() as s:
            try:
                s.bind((host, 10000))
                return host
            except OSError:
                continue
    return None


class ServerProcess:
    """``ndmpd serve --config CONFIG``, started and waited for until it greets."""

    def __init__(self, host: str, config: Path, log: Path, password: str) -> None:
        self.host, self.config, self.log, self.password = host, config, log, password
        self.proc = subprocess.Popen([sys.executable, "-m", "ndmpd", "serve", "--config", str(config)],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ndmpd exited: {log.read_text()}")
            try:
                with socket.create_connection((host, 10000), timeout=1) as s:
                    if s.recv(4):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("ndmpd did not start")

    def agent(self, version: str) -> str:
        """ndmjob's ``HOST:PORT/VERSION,USER,PASSWORD`` for user ndmp."""
        return f"{self.host}:10000/{version},ndmp,{self.password}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9
