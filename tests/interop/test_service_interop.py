"""ndmpd as a service under a real DMA: hostile peers beside a backup, SIGHUP during a backup."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, PASSWORD, free_loopback_address, run
from tests.server_process import ServerProcess
from tests.trees import describe, differences
from tests.waiting import wait_for

pytestmark = pytest.mark.interop
PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB


def dma(*args: str, timeout: int = 120) -> str:
    done = run([PROGRAM, "-v", *args], timeout=timeout)
    return done.stdout + done.stderr


def write_config(tmp: Path, host: str, server_extra: str = "", volumes: tuple[str, ...] = ("data",)) -> Path:
    (tmp / "state").mkdir(exist_ok=True)
    text = (f'[server]\nlisten = ["{host}:10000"]\nstate_dir = "{tmp / "state"}"\nlog_level = "info"\n'
            f'{server_extra}\n[[user]]\nname = "ndmp"\npassword = "{PASSWORD}"\n')
    for name in volumes:
        (tmp / name).mkdir(exist_ok=True)
        text += f'[[volume]]\nname = "/export/{name}"\npath = "{tmp / name}"\n'
    text += f'[[tape]]\nname = "vtape0"\npath = "{tmp / "state" / "vtape0.img"}"\ncapacity = "4GiB"\n'
    config = tmp / "ndmpd.toml"
    config.write_text(text)
    config.chmod(0o600)
    return config


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fill(tree: Path, big_mib: int, small: int) -> None:
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "big.bin").write_bytes(os.urandom(big_mib << 20))
    for i in range(small):
        sub = tree / f"d{i % 20}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.txt").write_text(f"file {i}\n" * (i % 50))


class HostilePeers:
    """``idle`` connections that never speak and ``slow`` ones sending one byte every
    ``interval`` seconds, from loopback addresses other than the DMA's; a connection the
    server closes is opened again, so the pressure lasts."""

    def __init__(self, host: str, idle: int, slow: int, interval: float) -> None:
        self.host, self.interval = host, interval
        self.stop = threading.Event()
        self.lifetimes: list[float] = []        # how long each slow connection lived
        self.opened = 0
        self.threads = [threading.Thread(target=self._idle, args=(idle,), daemon=True),
                        threading.Thread(target=self._slow, args=(slow,), daemon=True)]

    def _connect(self, n: int) -> socket.socket | None:
        source = f"127.0.{1 + n % 25}.{2 + n % 200}"           # never 127.0.0.1, the DMA's
        try:
            sock = socket.create_connection((self.host, 10000), timeout=5, source_address=(source, 0))
        except OSError:
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    def _closed(self, sock: socket.socket) -> bool:
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _idle(self, count: int) -> None:
        socks = {n: self._connect(n) for n in range(count)}
        while not self.stop.wait(0.5):
            for n, sock in socks.items():
                if sock is None or self._closed(sock):
                    if sock is not None:
                        sock.close()
                    socks[n] = self._connect(n)
        for sock in socks.values():
            if sock is not None:
                sock.close()

    def _slow(self, count: int) -> None:
        socks = {n: (self._connect(1000 + n), time.monotonic()) for n in range(count)}
        while not self.stop.wait(self.interval):
            for n, (sock, since) in socks.items():
                if sock is not None:
                    try:
                        sock.send(b"\x80")               # one byte of a record that never ends
                    except OSError:
                        pass
                if sock is None or self._closed(sock):
                    if sock is not None:
                        self.lifetimes.append(time.monotonic() - since)
                        sock.close()
                    socks[n] = (self._connect(1000 + n), time.monotonic())
        for sock, _ in socks.values():
            if sock is not None:
                sock.close()

    def __enter__(self) -> "HostilePeers":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def test_idle_and_slowloris_peers_never_keep_a_dma_out(ndmjob, tmp_path):
    host = free_loopback_address()
    config = write_config(tmp_path, host, "login_timeout = 10")
    fill(tmp_path / "data" / "tree", 40, 2000)
    server = ServerProcess(host, config, tmp_path / "ndmpd.log", PASSWORD)
    agent = server.agent("4")
    try:
        warm = dma("-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", "/export/data",
                      "-I", str(tmp_path / "warm.idx"))
        assert "Operation ended OKAY" in warm, warm
        time.sleep(1)
        idle_rss = rss_kib(server.proc.pid)
        peak = idle_rss
        started = time.monotonic()
        with HostilePeers(host, idle=200, slow=20, interval=5) as peers:
            time.sleep(2)
            rounds = 0
            while time.monotonic() - started < 28:
                out = dma("-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", "/export/data",
                             "-I", str(tmp_path / f"b{rounds}.idx"))
                assert "Operation ended OKAY" in out, out
                peak = max(peak, rss_kib(server.proc.pid))
                for flags in ("4m", "3t"):
                    query = dma("-q", "-D", server.agent(flags))
                    assert "File system /export/data" in query and "REFUSED" not in query, query
                    peak = max(peak, rss_kib(server.proc.pid))
                rounds += 1
            opened, lifetimes = peers.opened, list(peers.lifetimes)
        print(f"RSS idle {idle_rss} KiB, peak {peak} KiB; {rounds} backup+query rounds; {opened} hostile "
              f"connections opened; slow ones lived at most {max(lifetimes, default=0):.1f} s")
        assert rounds >= 2 and opened >= 200
        assert lifetimes and max(lifetimes) < 10 + 5 + 3     # cut at the login deadline, trickle or not
        assert peak <= 2 * idle_rss, (peak, idle_rss)
    finally:
        server.stop()
    log = (tmp_path / "ndmpd.log").read_text()
    # 220 hostile peers overflow the 128-login pool: each is cut, at its login deadline or for a
    # newer one, and the log names the setting either way
    assert ("server.login_timeout" in log or "server.max_pending_logins" in log) and "Traceback" not in log


def test_sighup_during_a_backup_reloads_without_touching_it(ndmjob, tmp_path):
    host = free_loopback_address()
    config = write_config(tmp_path, host)
    fill(tmp_path / "data" / "tree", 100, 30000)
    server = ServerProcess(host, config, tmp_path / "ndmpd.log", PASSWORD)
    agent = server.agent("4")
    try:
        write_config(tmp_path, host, volumes=("data", "new"))      # the file now names a second volume
        hups = threading.Event()
        sent = []

        def hangup() -> None:
            while not hups.wait(0.02):
                os.kill(server.proc.pid, signal.SIGHUP)
                sent.append(time.monotonic())
        index = tmp_path / "b.idx"
        sender = threading.Thread(target=hangup, daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            out = dma("-c", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", "/export/data", "-I", str(index))
        finally:
            hups.set()
            sender.join(5)
        ended = time.monotonic()
        assert "Operation ended OKAY" in out, out
        assert sum(started < t < ended for t in sent) >= 5      # reloads happened during the backup
        assert server.proc.poll() is None
        restored = tmp_path / "data" / "restored"
        back = dma("-x", "-D", agent, "-f", "vtape0", "-B", "tar", "-C", str(restored), "-J", str(index))
        assert "Operation ended OKAY" in back, back
        assert differences(describe(tmp_path / "data" / "tree"), describe(restored / "tree")) == []

        query = dma("-q", "-D", agent)
        assert "File system /export/new" in query and "File system /export/data" in query, query

        config.write_text(config.read_text().replace('name = "/export/new"', 'nmae = "/export/new"'))
        os.kill(server.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "reload refused" in (tmp_path / "ndmpd.log").read_text(), 60), \
            "the bad reload was not seen"
        assert server.proc.poll() is None
        still = dma("-q", "-D", agent)
        assert "File system /export/new" in still, still            # the old configuration stays
    finally:
        server.stop()
    log = (tmp_path / "ndmpd.log").read_text()
    assert "reload refused, configuration unchanged: volume[1].nmae: unknown key (did you mean 'name'?)" in log
    assert "Traceback" not in log
