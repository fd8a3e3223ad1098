"""Two network namespaces joined by a veth pair shaped to a rate (``tc ... tbf`` on each end):
a real link between two "hosts" on one machine, for the benchmarks where a network, not the
loopback's shared CPU, should be the limit (a 10 Gbit/s link is what a storage admin has
between two servers). Root only; :meth:`Link.close` removes everything it made.

Sockets belong to the namespace of the thread that creates them, so a benchmark enters one
side (:meth:`Link.inside`) to open a listener or start a server there, and the other to
connect; processes it starts inherit the side it is in.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
ADDRESSES = ("198.18.0.1", "198.18.0.2")    # RFC 2544's benchmarking range, only on this veth
_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


def rate_bits(rate: str) -> int:
    """``10gbit`` -> 10_000_000_000 (tc's units: bit, kbit, mbit, gbit)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)", rate.strip().lower())
    if not match:
        raise ValueError(f"rate {rate!r}: give a number and bit, kbit, mbit or gbit (as tc does)")
    return int(float(match[1]) * _UNITS[match[2]])


def unavailable_reason() -> str | None:
    """Why no link can be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (iproute2)"
    here = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
    taken = [address for address in ADDRESSES if f" {address}/" in here]
    if taken:                                  # never a link whose addresses this host already uses
        return f"{', '.join(taken)} already on this host"
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Link:
    """Namespaces ``<tag>-a`` and ``<tag>-b``, ADDRESSES[0] and [1] on the two ends of a veth
    pair, each end shaped by tbf to ``rate``."""

    def __init__(self, rate: str, tag: str | None = None) -> None:
        self.rate = rate
        bits = rate_bits(rate)
        tag = tag or f"ndmpd-{os.getpid()}"
        self.names = (f"{tag}-a", f"{tag}-b")
        self.devices = (f"nd{os.getpid() % 100000}a", f"nd{os.getpid() % 100000}b")
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._made: list[str] = []
        burst = max(bits // 8 // 1000, 256 << 10)      # a millisecond at the rate, and GSO-sized packets
        try:
            for name in self.names:
                self._ip("netns", "add", name)
                self._made.append(name)
            self._ip("link", "add", self.devices[0], "type", "veth", "peer", "name", self.devices[1])
            for name, device, address in zip(self.names, self.devices, ADDRESSES):
                self._ip("link", "set", device, "netns", name)
                self._ip("-n", name, "addr", "add", f"{address}/30", "dev", device)
                self._ip("-n", name, "link", "set", device, "up")
                self._ip("-n", name, "link", "set", "lo", "up")
                self._run("tc", "-n", name, "qdisc", "add", "dev", device, "root", "tbf", "rate", rate,
                          "burst", str(burst), "latency", "10ms")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _run(*argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise OSError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")

    def _ip(self, *argv: str) -> None:
        self._run("ip", *argv)

    @contextmanager
    def inside(self, side: int) -> Iterator[str]:
        """The calling thread in namespace ``side`` (0 or 1) meanwhile; yields its address."""
        fd = os.open(f"/run/netns/{self.names[side]}", os.O_RDONLY)
        try:
            _setns(fd)
            yield ADDRESSES[side]
        finally:
            os.close(fd)
            _setns(self._home)

    def close(self) -> None:
        """Back home, and both namespaces gone (the veth pair goes with them)."""
        if self._home < 0:
            return
        try:
            _setns(self._home)
        except OSError:
            pass
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self._made.clear()
        os.close(self._home)
        self._home = -1

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
