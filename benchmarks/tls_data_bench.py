#!/usr/bin/env python3
"""TLS data connection against plain TCP: the throughput of one data connection between two
processes (like two ndmpd servers on one host), through ndmpd's own TLS (``ndmpd.tls.data``:
the handshake with pinned certificates and the relay thread on each side) and through a plain
socket, in the same run, rounds alternating (target: TLS >= 0.7x plain).

``--job``: the same comparison on a whole three-way backup between two ndmpd processes on
two loopback addresses (``ndmp backup A:/export/data --tape B:vtape0``, the dump engine
sending into the data connection, the mover writing the cartridge), hosts plain or ``tls =
true`` in ndmp.toml, alternating.

The sender writes from memory and half-closes, as the data service does; the receiver reads
into one buffer, as the mover does; a round ends when the sender sees the receiver's close
(every byte delivered). On loopback both sides share the machine's cores, so the figure is a
floor for two hosts.

    python benchmarks/tls_data_bench.py [--size 1GiB] [--rounds 3] [--job]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ndmpd.config import parse_size                 # noqa: E402
from ndmpd.mover import addresses                   # noqa: E402
from ndmpd.tls import certs                         # noqa: E402
from ndmpd.tls.data import DataTls                  # noqa: E402

BUFFER = 1 << 20


def receive(listener: socket.socket, secure: DataTls | None, rounds: int) -> None:
    """The mover's side: accept, read to the end of stream, close; once per round."""
    buffer = memoryview(bytearray(BUFFER))
    for _ in range(rounds):
        sock = addresses.accept(listener, lambda: False, secure=secure)
        while sock.recv_into(buffer):
            pass
        sock.close()
    time.sleep(1)                       # the relays' close_notify leaves before the process does


def send(endpoint: addresses.Endpoint, secure: DataTls | None, size: int) -> float:
    """The data service's side: connect, send ``size`` bytes, half-close, wait for the close.
    Seconds from connect to delivered."""
    block = memoryview(bytes(range(256)) * (BUFFER // 256))
    started = time.perf_counter()
    sock = addresses.connect([endpoint], secure=secure)
    left = size
    while left > 0:
        sock.sendall(block[:min(left, BUFFER)])
        left -= BUFFER
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()
    return time.perf_counter() - started


def connection_rounds(size: int, rounds: int, tmp: Path) -> dict[str, list[float]]:
    """Bytes per second of one data connection, per round: plain, then TLS."""
    a = certs.create(tmp / "a", "listener", 1, ("127.0.0.1",))
    b = certs.create(tmp / "b", "connector", 1, ("127.0.0.1",))
    der_a, der_b = certs.certificate_der(a.certificate), certs.certificate_der(b.certificate)
    kinds = {"plain": (None, None), "tls": (DataTls(a.certificate, a.key, der_b), DataTls(b.certificate, b.key, der_a))}
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    context = multiprocessing.get_context("fork")
    listeners = {}
    for kind, (listening, _) in kinds.items():
        sock, endpoint = addresses.open_listener("127.0.0.1")
        proc = context.Process(target=receive, args=(sock, listening, rounds), daemon=True)
        proc.start()
        listeners[kind] = (sock, endpoint, proc)
    for round_ in range(rounds):
        for kind, (_, connecting) in kinds.items():
            seconds = send(listeners[kind][1], connecting, size)
            results[kind].append(size / seconds)
            print(f"round {round_ + 1} {kind:5s} {size / seconds / 1e6:8.1f} MB/s", flush=True)
    for sock, _, proc in listeners.values():
        proc.join(30)
        sock.close()
    return results


def job_rounds(size: int, rounds: int, tmp: Path) -> dict[str, list[float]]:
    """Bytes per second of a three-way backup between two ndmpd processes, per round."""
    from tests.interop.conftest import PASSWORD, write_config
    from tests.server_process import ServerProcess, free_loopback_address
    servers, sides = [], []
    try:
        for name in ("data", "tape"):
            root = tmp / name
            (root / "vol").mkdir(parents=True)
            host = free_loopback_address()
            own = certs.create(root / "tls", host, 1, (host,))
            config = write_config(root, host, ["md5", "text"], extra="capacity = \"64GiB\"\n", server_extra=(
                f'tls_listen = "{host}:10001"\ntls_certificate = "{own.certificate}"\ntls_key = "{own.key}"'))
            servers.append(ServerProcess(host, config, root / "ndmpd.log", PASSWORD))
            sides.append((name, host, own.fingerprint, root))
        block = os.urandom(1 << 20)
        for i in range(max(1, size >> 26)):                  # 64 MiB files
            with open(sides[0][3] / "vol" / f"f{i}", "wb") as f:
                for _ in range(min(64, size >> 20)):
                    f.write(block)
        (tmp / "home" / "ndmp").mkdir(parents=True)
        (tmp / "home" / "ndmp" / "pw").write_text(PASSWORD)
        (tmp / "home" / "ndmp" / "pw").chmod(0o600)
        hosts = ""
        for name, host, pin, _ in sides:
            hosts += f'[host.{name}]\naddress = "{host}"\npassword_file = "pw"\n'
            hosts += (f'[host.{name}-tls]\naddress = "{host}"\nport = 10001\npassword_file = "pw"\n'
                      f'tls = true\nfingerprint = "{pin}"\n')
        (tmp / "home" / "ndmp" / "ndmp.toml").write_text(hosts)
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "home"), "XDG_DATA_HOME": str(tmp / "home")}
        results: dict[str, list[float]] = {"plain": [], "tls": []}
        for round_ in range(rounds):
            for kind, suffix in (("plain", ""), ("tls", "-tls")):
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "ndmpd.dma", "backup", f"data{suffix}:/export/data",
                                       "--tape", f"tape{suffix}:vtape0", "--json"], capture_output=True, text=True,
                                      env=env, timeout=1800, cwd=Path(__file__).resolve().parent.parent)
                seconds = time.perf_counter() - started
                if done.returncode != 0:
                    raise SystemExit(f"{kind} backup failed: {done.stderr.strip()}")
                moved = json.loads(done.stdout.splitlines()[-1])["bytes"]
                results[kind].append(moved / seconds)
                print(f"round {round_ + 1} {kind:5s} {moved / seconds / 1e6:8.1f} MB/s "
                      f"({moved / 1e6:.0f} MB in {seconds:.1f} s, whole ndmp run)", flush=True)
        return results
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--job", action="store_true", help="a three-way backup between two ndmpd processes")
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    with tempfile.TemporaryDirectory() as tmp:
        results = (job_rounds if args.job else connection_rounds)(size, args.rounds, Path(tmp))
    plain, tls = statistics.median(results["plain"]), statistics.median(results["tls"])
    ratios = [t / p for t, p in zip(results["tls"], results["plain"])]
    what = "three-way backup" if args.job else "data connection"
    print(f"{what}: plain TCP {plain / 1e6:.1f} MB/s, TLS {tls / 1e6:.1f} MB/s (medians of {args.rounds}); "
          f"ratio {tls / plain:.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}; target >= 0.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
