"""Replication is standard NDMP on the wire: tshark dissects every control message of an
initial sync and an incremental between two ndmpd servers, none of them malformed, and the
data goes data-to-data (DATA_LISTEN + START_RECOVER on the replica, DATA_CONNECT +
START_BACKUP on the master), never through the DMA."""

from __future__ import annotations

import subprocess

import pytest

from tests.loopfs import btrfs_subvolume

from .conftest import servers
from .ndmp_cli import ndmp
from .test_ndmp_replicate import MASTER, REPLICA, target, volume_table

pytestmark = pytest.mark.interop


FS_INFO, BACKUP, RECOVER, DATA_LISTEN, DATA_CONNECT = 0x105, 0x401, 0x402, 0x409, 0x40A
MOVER = range(0xA00, 0xB00)


def _requests(pcap, host: str) -> list[int]:
    """The codes of the NDMP requests the DMA sent to ``host``, in order."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", f"ndmp && ip.dst == {host} && ndmp.msg_type == 0",
                          "-T", "fields", "-e", "ndmp.msg"], capture_output=True, text=True, timeout=120).stdout
    return [int(code, 16) for line in out.split() for code in line.split(",") if code]


def _updates(codes: list[int], listen_or_connect: int, start: int) -> int:
    """How many times ``listen_or_connect`` is directly followed by ``start``."""
    return sum(1 for a, b in zip(codes, codes[1:]) if (a, b) == (listen_or_connect, start))


def test_replication_control_traffic_dissects_cleanly(tmp_path, tshark_capture):
    home, catalog = tmp_path / "home", tmp_path / "home" / "catalog.db"
    home.mkdir()
    with btrfs_subvolume(tmp_path, size=320 << 20) as master_vol:
        (master_vol.parent / "r").mkdir()
        extra = {"m": volume_table(MASTER, master_vol, False),
                 "r": volume_table(REPLICA, master_vol.parent / "r" / "rep", True)}
        with servers(tmp_path, "m", "r", extra=extra) as (m, r):
            stop = tshark_capture(m.host, r.host)
            (master_vol / "a").write_bytes(b"first" * 1000)
            cli = ["--catalog", str(catalog)]
            assert ndmp("replicate", "create", "w", target(m, MASTER), target(r, REPLICA), *cli,
                        home=home).returncode == 0
            for change in (b"second", b"third"):
                done = ndmp("replicate", "run", "w", "--once", *cli, home=home, timeout=120)
                assert done.returncode == 0, done.stderr
                (master_vol / "a").write_bytes(change * 1000)
            pcap = stop()
            assert (master_vol.parent / "r" / "rep" / "a").read_bytes() == b"second" * 1000
    malformed = subprocess.run(["tshark", "-r", str(pcap), "-Y", "_ws.malformed"],
                               capture_output=True, text=True, timeout=120).stdout
    assert malformed.strip() == "", malformed
    to_master, to_replica = _requests(pcap, m.host), _requests(pcap, r.host)
    assert _updates(to_master, DATA_CONNECT, BACKUP) == 2, to_master         # two updates, data to data
    assert _updates(to_replica, DATA_LISTEN, RECOVER) == 2, to_replica
    assert RECOVER not in to_master and BACKUP not in to_replica
    assert not [c for c in to_master + to_replica if c in MOVER], "the data went through a mover"
    assert to_replica.index(FS_INFO) < to_replica.index(RECOVER)            # its state asked first
