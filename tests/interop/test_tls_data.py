"""TLS data connections between two real ndmpd processes (two loopback addresses), asked for by
``ndmp`` when both hosts say ``tls = true``: a copy, a three-way backup and restore, and a
replication update succeed, and a loopback capture of all traffic between the two holds no
32-byte window of the data written, while the same copy without TLS does (the capture sees
plaintext when there is some)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.server_process import ServerProcess
from tests.tls_helpers import pair

from .conftest import PASSWORD, free_loopback_address, write_config
from .ndmp_cli import ndmp, summary

pytestmark = pytest.mark.interop
TLS_PORT = 10001
UNIT = b"ndmpd-tls-canary:plaintext-must-not-cross-the-wire!0123456789abcdef"   # 68 bytes
PATTERN = (UNIT * ((1 << 20) // len(UNIT) + 1))[:1 << 20]                    # a known 1 MiB


def windows(pattern: bytes, size: int = 32) -> set[bytes]:
    """Every distinct ``size``-byte window of the repeating pattern."""
    return {pattern[i:i + size] for i in range(len(UNIT))}


class Side:
    """One ndmpd with a plain and a TLS listener, and its certificate."""

    def __init__(self, root: Path, extra: str = "") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.host = free_loopback_address()
        self.pair = pair(root / "tls", name=self.host, hosts=(self.host,))
        config = write_config(root, self.host, ["md5", "text"], extra=extra, server_extra=(
            f'tls_listen = "{self.host}:{TLS_PORT}"\ntls_certificate = "{self.pair.certificate}"\n'
            f'tls_key = "{self.pair.key}"'))
        self.root, self.log = root, root / "ndmpd.log"
        self.server = ServerProcess(self.host, config, self.log, PASSWORD)
        _wait_for_port(self.host, TLS_PORT)


def _wait_for_port(host: str, port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port}")


@pytest.fixture
def sides(tmp_path):
    started = []
    try:
        for name in ("src", "dst"):
            started.append(Side(tmp_path / name))
        yield started
    finally:
        for side in started:
            if side.server.proc.poll() is None:
                side.server.stop()


def hosts_file(home: Path, sides: list[Side], tls: bool) -> None:
    """home/ndmp/ndmp.toml naming both servers: over TLS with pinned certificates, or plain."""
    (home / "ndmp").mkdir(parents=True, exist_ok=True)
    (home / "ndmp" / "pw").write_text(PASSWORD)
    (home / "ndmp" / "pw").chmod(0o600)
    text = ""
    for name, side in zip(("src", "dst"), sides):
        text += f'[host.{name}]\naddress = "{side.host}"\npassword_file = "pw"\n'
        text += (f'port = {TLS_PORT}\ntls = true\nfingerprint = "{side.pair.fingerprint}"\n' if tls
                 else "port = 10000\n")
    (home / "ndmp" / "ndmp.toml").write_text(text)


class Capture:
    """``tshark -i lo`` of everything between the two hosts, bounded by ``-a duration``."""

    def __init__(self, path: Path, hosts: list[str], seconds: int = 120) -> None:
        tshark = shutil.which("tshark")
        if not tshark:
            pytest.skip("tshark not installed (apt-get install tshark)")
        if os.geteuid() != 0:
            pytest.skip("capturing on lo needs root")
        self.path = path
        among = " or ".join(f"host {h}" for h in hosts)
        self.proc = subprocess.Popen([tshark, "-i", "lo", "-B", "64", "-f", f"tcp and ({among})",
                                      "-a", f"duration:{seconds}", "-w", str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line, deadline = b"", time.monotonic() + 20
        while b"Capturing on" not in line and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                pytest.skip("tshark cannot capture here")
        time.sleep(0.5)

    def stop(self) -> bytes:
        time.sleep(1)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        return self.path.read_bytes()


def run_copy(tmp_path: Path, sides: list[Side], tls: bool, label: str) -> tuple[dict, bytes]:
    home = tmp_path / f"home-{label}"
    hosts_file(home, sides, tls)
    capture = Capture(tmp_path / f"{label}.pcap", [s.host for s in sides])
    try:
        result = ndmp("copy", "src:/export/data", "dst:/export/data", "--catalog", str(home / "catalog.db"),
                      "--json", home=home, timeout=120)
    finally:
        captured = capture.stop()
    assert result.returncode == 0, result.stderr + result.stdout
    return summary(result.stdout), captured


def test_a_copy_with_tls_data_connections_carries_no_plaintext(tmp_path, sides):
    src, dst = sides
    (src.root / "vol" / "canary.bin").write_bytes(PATTERN)
    (src.root / "vol" / "canary.txt").write_bytes(PATTERN[:100_000])

    # the control: plain TCP, and the capture does see the pattern
    plain, captured = run_copy(tmp_path, sides, tls=False, label="plain")
    assert plain["status"] == "done"
    assert sum(w in captured for w in windows(PATTERN)) > len(UNIT) // 2
    shutil.rmtree(dst.root / "vol")
    (dst.root / "vol").mkdir()

    secured, captured = run_copy(tmp_path, sides, tls=True, label="tls")
    assert secured["status"] == "done" and secured["bytes"] >= len(PATTERN)
    assert (dst.root / "vol" / "canary.bin").read_bytes() == PATTERN
    assert len(captured) > len(PATTERN)                  # the data did cross the capture, encrypted
    leaked = [w for w in windows(PATTERN) if w in captured]
    assert leaked == [], f"{len(leaked)} windows of the pattern in the capture"
    for side in sides:
        assert "TLS data connection with" in side.log.read_text(), side.log.read_text()[-2000:]


def test_a_three_way_backup_and_restore_with_tls_data_connections_carry_no_plaintext(tmp_path, sides):
    src, dst = sides
    (src.root / "vol" / "canary.bin").write_bytes(PATTERN)
    home = tmp_path / "home"
    hosts_file(home, sides, tls=True)
    catalog = ["--catalog", str(home / "catalog.db"), "--json"]
    capture = Capture(tmp_path / "threeway.pcap", [s.host for s in sides])
    try:
        # the data service connects to the tape server's listening mover (READ), then back
        made = ndmp("backup", "src:/export/data", "--tape", "dst:vtape0", *catalog, home=home, timeout=120)
        assert made.returncode == 0, made.stderr + made.stdout
        backup_id = summary(made.stdout)["id"]
        done = ndmp("restore", backup_id, "--to", "src:/export/data/restored", "--tape", "dst:vtape0", *catalog,
                    home=home, timeout=120)
        assert done.returncode == 0, done.stderr + done.stdout
    finally:
        captured = capture.stop()
    assert (src.root / "vol" / "restored" / "canary.bin").read_bytes() == PATTERN
    assert len(captured) > 2 * len(PATTERN)
    assert [w for w in windows(PATTERN) if w in captured] == []
    for side in sides:
        assert side.log.read_text().count("TLS data connection with") >= 2, side.log.read_text()[-2000:]


def test_a_replication_update_with_tls_data_connections_carries_no_plaintext(tmp_path):
    from tests.loopfs import btrfs_subvolume
    from .test_ndmp_replicate import MASTER, REPLICA, volume_table
    started: list[Side] = []
    with btrfs_subvolume(tmp_path, size=320 << 20) as master_vol:
        try:
            (master_vol.parent / "r").mkdir()
            started.append(Side(tmp_path / "m", volume_table(MASTER, master_vol, False)))
            started.append(Side(tmp_path / "r", volume_table(REPLICA, master_vol.parent / "r" / "rep", True)))
            (master_vol / "canary.bin").write_bytes(PATTERN)
            home = tmp_path / "home"
            hosts_file(home, started, tls=True)              # src = the master, dst = the replica
            catalog = ["--catalog", str(home / "catalog.db")]
            created = ndmp("replicate", "create", "w", f"src:{MASTER}", f"dst:{REPLICA}", *catalog, home=home)
            assert created.returncode == 0, created.stderr
            capture = Capture(tmp_path / "replicate.pcap", [s.host for s in started])
            try:
                done = ndmp("replicate", "run", "w", "--once", *catalog, home=home, timeout=180)
            finally:
                captured = capture.stop()
            assert done.returncode == 0, done.stderr + done.stdout
            assert (master_vol.parent / "r" / "rep" / "canary.bin").read_bytes() == PATTERN
            assert len(captured) > len(PATTERN)
            assert [w for w in windows(PATTERN) if w in captured] == []
            for side in started:
                assert "TLS data connection with" in side.log.read_text(), side.log.read_text()[-2000:]
        finally:
            for side in started:
                if side.server.proc.poll() is None:
                    side.server.stop()
