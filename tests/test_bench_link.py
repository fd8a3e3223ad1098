"""benchmarks/netns_link.py (tls_data_bench.py --link): the two namespaces carry a connection
from one side to the other at the shaped rate, and nothing of them is left afterwards."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "netns_link", Path(__file__).resolve().parents[1] / "benchmarks" / "netns_link.py")
netns_link = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netns_link)

pytestmark = pytest.mark.skipif(netns_link.unavailable_reason() is not None,
                                reason=str(netns_link.unavailable_reason()))
MiB = 1 << 20


def left_over(link) -> str:
    """Any of the link's namespaces or devices still there."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    devices = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return " ".join(n for n in (*link.names, *link.devices) if n in names or f" {n}@" in devices or f" {n}:" in devices)


def test_a_shaped_link_carries_a_connection_at_its_rate_and_leaves_nothing_behind():
    link = netns_link.Link("100mbit")
    try:
        with link.inside(1) as host:
            server = socket.create_server((host, 0))
        server.settimeout(10)
        got = bytearray()

        def take():
            conn, _ = server.accept()
            conn.settimeout(10)
            while data := conn.recv(1 << 16):
                got.extend(data)
            conn.close()
        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        with link.inside(0) as here:
            assert here == netns_link.ADDRESSES[0]
            client = socket.create_connection((host, server.getsockname()[1]), timeout=10)
        with pytest.raises(OSError):          # this thread is home again: the link's address is not here
            with socket.create_server((host, 0)):
                pass
        started = time.perf_counter()
        client.sendall(bytes(4 * MiB))
        client.close()
        taker.join(20)
        seconds = time.perf_counter() - started
        server.close()
        assert len(got) == 4 * MiB
        assert seconds > 0.25                 # 4 MiB at 100 Mbit/s: 0.34 s (less the burst), not loopback's ms
    finally:
        link.close()
    assert left_over(link) == ""


def test_a_bad_rate_is_refused_before_anything_is_made():
    with pytest.raises(ValueError, match="rate"):
        netns_link.Link("fast")
