#!/usr/bin/env python3
"""Mover throughput: a data stream into a virtual cartridge over TCP and LOCAL (the data
service's buffers handed over in-process), against
``cat FILE > CARTRIDGE_DIR/copy`` on the same data in the same run (target: ratio >= 0.8),
and into an encrypted cartridge (``encryption_key``) against the plain one (target >= 0.8);
then the restore direction (MOVER_READ of the whole image back over TCP), encrypted against plain.
Each ratio is printed as the median and the range over the rounds (a round runs every case once,
the order rotated), for the wall clock and for the CPU seconds of this process.

    python benchmarks/mover_bench.py [--size 1GiB] [--record-size 256KiB] [--rounds 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ndmpd.config import build, parse_size          # noqa: E402
from ndmpd.keystore import Keystore, KeySource      # noqa: E402
from ndmpd.wire import C                            # noqa: E402
from tests.server_thread import ServerThread        # noqa: E402

ALL = (1 << 64) - 1


def make_data(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)
        f.write(block[:size & ((1 << 20) - 1)])
    with open(path, "rb") as f:                     # warm the page cache
        while f.read(8 << 20):
            pass


def time_cat(data: Path, workdir: Path, sync: bool = False) -> float:
    """Seconds to copy ``data`` with cat (and, with ``sync``, to get the copy onto the disk)."""
    copy = workdir / "copy"
    start = time.perf_counter()
    subprocess.run(f"cat '{data}' > '{copy}'" + (" && sync" if sync else ""), shell=True, check=True)
    elapsed = time.perf_counter() - start
    copy.unlink()
    return elapsed


def send_file(sock: socket.socket, data: Path) -> None:
    with open(data, "rb") as f:
        sock.sendfile(f)


def hand_over(handoff, data: Path) -> None:
    buffer = memoryview(bytearray(1 << 20))
    with open(data, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            handoff.put(buffer[:n])
    handoff.end()
    handoff.wait_finished(threading.Event())


def time_mover(server: ServerThread, data: Path, cart: Path, record_size: int, local: bool,
               device: str = "bench", keep: bool = False) -> float:
    """Seconds to back ``data`` up into ``cart`` through the mover (the cartridge is removed
    after, unless ``keep``)."""
    with server.client() as dma:
        dma.call("TAPE_OPEN", device=device, mode=C.TAPE_RDWR_MODE)
        dma.call("MOVER_SET_RECORD_SIZE", len=record_size)
        dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        reply = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ,
                         addr_type=C.ADDR_LOCAL if local else C.ADDR_TCP)
        start = time.perf_counter()
        if local:                   # as the data service does: its buffers are handed to the mover
            session = server.only_session()
            sock, handoff = server.on_loop(session.mover.accept_local)
            hand_over(handoff, data)
        else:
            entry = reply.connect_addr.tcp_addr[0]
            sock = socket.create_connection((socket.inet_ntoa(entry.ip_addr.to_bytes(4, "big")), entry.port))
            send_file(sock, data)
        sock.close()
        dma.wait_post(C.NOTIFY_MOVER_HALTED, timeout=600)
        elapsed = time.perf_counter() - start
        moved = dma.call("MOVER_GET_STATE").bytes_moved
        assert moved == data.stat().st_size, (moved, data.stat().st_size)
        dma.call("MOVER_STOP")
        dma.call("TAPE_CLOSE")
    if not keep:
        cart.unlink()
    return elapsed


def time_restore(server: ServerThread, cart: Path, size: int, record_size: int, device: str) -> float:
    """Seconds to read the ``size``-byte image on ``device``'s cartridge ``cart`` back through
    the mover (MOVER_READ of all of it, received over TCP), the cartridge in the page cache
    (the backup's write-behind drops it; a disk's speed is not what is compared here)."""
    with open(cart, "rb") as f:
        while f.read(8 << 20):
            pass
    with server.client() as dma:
        dma.call("TAPE_OPEN", device=device, mode=C.TAPE_READ_MODE)
        dma.call("TAPE_MTIO", tape_op=C.MTIO_REW, count=1)
        dma.call("MOVER_SET_RECORD_SIZE", len=record_size)
        dma.call("MOVER_SET_WINDOW", offset=0, length=ALL)
        reply = dma.call("MOVER_LISTEN", mode=C.MOVER_MODE_WRITE, addr_type=C.ADDR_TCP)
        entry = reply.connect_addr.tcp_addr[0]
        start = time.perf_counter()
        sock = socket.create_connection((socket.inet_ntoa(entry.ip_addr.to_bytes(4, "big")), entry.port))
        dma.call("MOVER_READ", offset=0, length=size)
        buffer = memoryview(bytearray(4 << 20))
        left = size
        while left:
            n = sock.recv_into(buffer, min(len(buffer), left))
            assert n, "data connection closed early"
            left -= n
        elapsed = time.perf_counter() - start
        sock.close()
        dma.wait_post(C.NOTIFY_MOVER_HALTED, timeout=600)
        dma.call("MOVER_STOP")
        dma.call("TAPE_CLOSE")
    return elapsed


class BusiestThread:
    """The most CPU seconds one server thread spent during a run (sampled from /proc every
    20 ms while it runs): the work that cannot be spread over cores, so the run's time on a
    host with cores to spare. The wall clock of a shared host says more about its other load."""

    PERIOD = 0.02

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "BusiestThread":
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()

    @property
    def seconds(self) -> float:
        return max(self._seen.values(), default=0.0)

    def _sample(self) -> None:
        skip = {threading.main_thread().native_id, threading.get_native_id()}   # the sender, this sampler
        while not self._stop.wait(self.PERIOD):
            for thread in threading.enumerate():
                tid = thread.native_id
                if tid in skip or not (thread.name.startswith("mover") or thread.name.startswith("cartridge")):
                    continue
                try:
                    with open(f"/proc/self/task/{tid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue                                     # it ended meanwhile
                self._seen[tid] = (int(fields[11]) + int(fields[12])) / self._tick


def run_rotated(runs: dict[str, Callable[[], float]], rounds: int,
                cpu: dict[str, list[float]] | None = None,
                busiest: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Each run's times over ``rounds`` rounds, the order rotated every round: page-cache
    writeback hits whoever runs late, so no run always pays for the one before. ``cpu``
    gets each run's CPU seconds (this process: server threads, sender and the kernel work
    done for them), which other load on the host disturbs less than the wall clock;
    ``busiest`` the CPU seconds of its busiest mover or cartridge writer thread."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for _ in range(rounds):
        for name in order:
            before = os.times()
            with BusiestThread() as thread:
                results[name].append(runs[name]())
            after = os.times()
            if cpu is not None:
                cpu.setdefault(name, []).append(after.user + after.system - before.user - before.system)
            if busiest is not None:
                busiest.setdefault(name, []).append(thread.seconds)
            time.sleep(1)
        order = order[1:] + order[:1]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--record-size", default="256KiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="where the data and the cartridge go (default: a temp dir)")
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    record_size = parse_size(args.record_size, "--record-size")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        data = work / "data"
        make_data(data, size)
        cart, sealed = work / "bench.img", work / "sealed.img"
        Keystore(KeySource(work / "keys")).create("bench")
        capacity = size * 2 + (64 << 20)
        config = build({
            "server": {"listen": ["127.0.0.1:0"], "state_dir": str(work), "auth": ["md5"]},
            "user": [{"name": "ndmp", "password": "secret"}],
            "tape": [{"name": "bench", "path": str(cart), "capacity": capacity},
                     {"name": "sealed", "path": str(sealed), "capacity": capacity, "encryption_key": "bench"}],
        }, "<bench>", work)
        server = ServerThread(config)
        cpu: dict[str, list[float]] = {}
        busiest: dict[str, list[float]] = {}
        try:
            results = run_rotated({
                "cat": lambda: time_cat(data, work),
                "TCP": lambda: time_mover(server, data, cart, record_size, local=False),
                "LOCAL": lambda: time_mover(server, data, cart, record_size, local=True),
                "TCP encrypted": lambda: time_mover(server, data, sealed, record_size, False, "sealed"),
                "LOCAL encrypted": lambda: time_mover(server, data, sealed, record_size, True, "sealed")},
                args.rounds, cpu, busiest)
            time_mover(server, data, cart, record_size, False, keep=True)
            time_mover(server, data, sealed, record_size, False, "sealed", keep=True)
            results.update(run_rotated({
                "restore": lambda: time_restore(server, cart, size, record_size, "bench"),
                "restore encrypted": lambda: time_restore(server, sealed, size, record_size, "sealed")},
                args.rounds, cpu, busiest))
        finally:
            server.stop()
    mb = size / 1e6
    cat = statistics.median(results["cat"])
    print(f"data {size} bytes, record size {record_size}, {args.rounds} rounds (median)")
    print(f"{'cat FILE > copy':18} {mb / cat:8.0f} MB/s")
    for name in ("TCP", "LOCAL"):
        t = statistics.median(results[name])
        print(f"{'mover ' + name:18} {mb / t:8.0f} MB/s   ratio vs cat {cat / t:.2f} (target >= 0.8)")
    for name in ("TCP", "LOCAL", "restore"):
        label = ("mover " + name if name != "restore" else "restore TCP") + " AES"
        t = statistics.median(results[name + " encrypted"])
        print(f"{label:18} {mb / t:8.0f} MB/s   ratio vs plain {ratio_range(results[name], results[name + ' encrypted'])}"
              f"{' (target >= 0.8)' if name != 'restore' else ''}; CPU {ratio_range(cpu[name + ' encrypted'], cpu[name])}"
              "x the plain run's")
        print(f"{'':18} busiest thread: plain {statistics.median(busiest[name]):.2f} s, encrypted "
              f"{statistics.median(busiest[name + ' encrypted']):.2f} s CPU: ratio "
              f"{ratio_range(busiest[name], busiest[name + ' encrypted'])} (what spare cores make of the wall clock)")


def ratio_range(numerators: list[float], denominators: list[float]) -> str:
    """The median of the per-round ratios, and their range: runs of one round ran side by side."""
    ratios = [n / d for n, d in zip(numerators, denominators)]
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"


if __name__ == "__main__":
    main()
