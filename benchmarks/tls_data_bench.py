#!/usr/bin/env python3
"""TLS data connection against plain TCP, in the same run, rounds alternating (target: TLS
>= 0.7x plain), as throughput and as CPU seconds per GiB (both ends together: on a shared
host the CPU figure is the steadier one).

``raw``: one data connection between two processes (like two ndmpd servers on one host),
through ndmpd's own TLS (``ndmpd.tls.data``: pinned certificates, the relay thread on each
side) and through a plain socket. The sender writes from memory and half-closes, as the data
service does through a plain socket, and reads into one buffer as the mover does (``tls``:
both ends through the relay's socket pairs), or both hand the stream through a Handoff, as a
data service sending and a mover receiving a backup do (``tls-handed``). A round ends when
the sender sees the receiver's close (every byte delivered).

``job``: a whole three-way backup between two ndmpd processes on two loopback addresses
(``ndmp backup A:/export/data --tape B:vtape0``: the dump engine sending into the data
connection, the mover writing the cartridge), hosts plain or ``tls = true`` in ndmp.toml.

``--link RATE`` (e.g. ``10gbit``; root): the same rounds across a real link instead of
loopback: two network namespaces joined by a veth pair shaped to RATE by tbf on each end
(``benchmarks/netns_link.py``), the receiving side (the mover, the tape server) in one, the
sending side (the data service, the data server and the DMA) in the other. There a network,
not the loopback's shared CPU, is meant to be the limit; both ends still share this machine's
cores. Skipped, with the reason, where it cannot run; its namespaces are removed at the end.

Also printed: AES-GCM's own cost here (``cryptography``, 16 KiB records, one core), the CPU
floor TLS adds per GiB on each end, and whether the kernel offers kernel TLS. On loopback
both ends share the machine's cores, so the ratios are floors for two hosts.

    python benchmarks/tls_data_bench.py [--size 1GiB] [--rounds 3] [--only raw|job] [--link 10gbit]
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
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ndmpd.config import parse_size                 # noqa: E402
from ndmpd.mover import addresses                   # noqa: E402
from ndmpd.mover.handoff import Handoff             # noqa: E402
from ndmpd.tls import certs, ktls                   # noqa: E402
from ndmpd.tls.data import DataTls                  # noqa: E402

import netns_link                                   # noqa: E402  (beside this script)
from netns_link import Link                         # noqa: E402

BUFFER = 1 << 20
GIB = 1 << 30


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process ``pid`` (all its threads, and its children it reaped) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def receive(listener: socket.socket, secure: DataTls | None, rounds: int, handed: bool) -> None:
    """The mover's side: accept, take to the end of stream, close; once per round."""
    buffer = memoryview(bytearray(BUFFER))
    for _ in range(rounds):
        handoff = Handoff() if handed else None
        sock = addresses.accept(listener, lambda: False, secure=secure.receiving_into(handoff) if handed else secure)
        if handoff is not None:
            while handoff.take() is not None:
                handoff.release()
        else:
            while sock.recv_into(buffer):
                pass
        sock.close()
    time.sleep(1)                       # the relays' close_notify leaves before the process does


def send(endpoint: addresses.Endpoint, secure: DataTls | None, size: int, handed: bool) -> float:
    """The data service's side: connect, send ``size`` bytes, half-close, wait for the close.
    Seconds from connect to delivered."""
    block = memoryview(bytes(range(256)) * (BUFFER // 256))
    started = time.perf_counter()
    if handed:
        handoff = Handoff()
        sock = addresses.connect([endpoint], secure=secure.sending_from(handoff))
        for _ in range(size // BUFFER):
            handoff.put(block)
        handoff.end()
        if not handoff.wait_finished(threading.Event()):
            raise SystemExit("the handed stream was not delivered")
        sock.close()
        return time.perf_counter() - started
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


def side(link: Link | None, n: int) -> AbstractContextManager[str]:
    """Side ``n`` (0 sends, 1 receives) of the link, or loopback: yields its address."""
    return link.inside(n) if link is not None else nullcontext("127.0.0.1")


def connection_rounds(size: int, rounds: int, tmp: Path, link: Link | None = None) -> dict[str, list[tuple[float, float]]]:
    """(bytes per second, CPU seconds per GiB) of one data connection, per round and kind;
    across ``link`` when given (the listeners and receivers on its side 1, the sender on 0)."""
    a = certs.create(tmp / "a", "listener", 1, ("127.0.0.1",))
    b = certs.create(tmp / "b", "connector", 1, ("127.0.0.1",))
    der_a, der_b = certs.certificate_der(a.certificate), certs.certificate_der(b.certificate)
    tls = (DataTls(a.certificate, a.key, der_b), DataTls(b.certificate, b.key, der_a))
    kinds = {"plain": (None, None), "tls": tls, "tls-handed": tls}
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    context = multiprocessing.get_context("fork")
    listeners = {}
    with side(link, 1) as host:              # sockets stay in the namespace they were made in
        for kind, (listening, _) in kinds.items():
            sock, endpoint = addresses.open_listener(host)
            proc = context.Process(target=receive, args=(sock, listening, rounds, kind == "tls-handed"), daemon=True)
            proc.start()
            listeners[kind] = (sock, endpoint, proc)
    with side(link, 0):
        for round_ in range(rounds):
            for kind, (_, connecting) in kinds.items():
                pids = (os.getpid(), listeners[kind][2].pid)
                before = sum(cpu_seconds(pid) for pid in pids)
                seconds = send(listeners[kind][1], connecting, size, kind == "tls-handed")
                cpu = (sum(cpu_seconds(pid) for pid in pids) - before) * GIB / size
                results[kind].append((size / seconds, cpu))
                print(f"round {round_ + 1} {kind:10s} {size / seconds / 1e6:8.1f} MB/s  {cpu:5.2f} CPU-s/GiB",
                      flush=True)
    for sock, _, proc in listeners.values():
        proc.join(30)
        sock.close()
    return results


def job_rounds(size: int, rounds: int, tmp: Path, link: Link | None = None) -> dict[str, list[tuple[float, float]]]:
    """(bytes per second, CPU seconds per GiB of both servers) of a three-way backup between
    two ndmpd processes, per round and kind; across ``link`` when given (the data server and
    the DMA on its side 0, the tape server on 1)."""
    from tests.interop.conftest import PASSWORD, write_config
    from tests.server_process import ServerProcess, free_loopback_address
    servers, sides = [], []
    try:
        for n, name in enumerate(("data", "tape")):
            root = tmp / name
            (root / "vol").mkdir(parents=True)
            host = free_loopback_address() if link is None else netns_link.ADDRESSES[n]
            own = certs.create(root / "tls", host, 1, (host,))
            config = write_config(root, host, ["md5", "text"], extra="capacity = \"64GiB\"\n", server_extra=(
                f'tls_listen = "{host}:10001"\ntls_certificate = "{own.certificate}"\ntls_key = "{own.key}"'))
            with side(link, n):              # the server process is started in its namespace
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
        results: dict[str, list[tuple[float, float]]] = {"plain": [], "tls": []}
        pids = [server.proc.pid for server in servers]
        for round_ in range(rounds):
            for kind, suffix in (("plain", ""), ("tls", "-tls")):
                started, before = time.perf_counter(), [cpu_seconds(pid) for pid in pids]
                with side(link, 0):
                    done = subprocess.run([sys.executable, "-m", "ndmpd.dma", "backup", f"data{suffix}:/export/data",
                                           "--tape", f"tape{suffix}:vtape0", "--json"], capture_output=True,
                                          text=True, env=env, timeout=1800, cwd=Path(__file__).resolve().parent.parent)
                seconds = time.perf_counter() - started
                sides_used = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
                used = sum(sides_used)
                if done.returncode != 0:
                    raise SystemExit(f"{kind} backup failed: {done.stderr.strip()}")
                moved = json.loads(done.stdout.splitlines()[-1])["bytes"]
                results[kind].append((moved / seconds, used * GIB / moved))
                print(f"round {round_ + 1} {kind:10s} {moved / seconds / 1e6:8.1f} MB/s  {used * GIB / moved:5.2f} "
                      f"CPU-s/GiB (data {sides_used[0] * GIB / moved:.2f}, tape {sides_used[1] * GIB / moved:.2f}; "
                      f"{moved / 1e6:.0f} MB in {seconds:.1f} s, whole ndmp run)", flush=True)
        return results
    finally:
        for server in servers:
            server.stop()


def aes_gcm_seconds_per_gib() -> float:
    """CPU seconds AES-256-GCM (TLS 1.3's first suite here) takes to seal 1 GiB in 16 KiB
    records on one core: what TLS cannot avoid on each end, whatever the relay does."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    seal = AESGCM(AESGCM.generate_key(bit_length=256)).encrypt
    record, nonce, count = os.urandom(16 << 10), os.urandom(12), 8192          # 128 MiB
    started = time.process_time()
    for _ in range(count):
        seal(nonce, record, None)         # a benchmark: the nonce's reuse does not matter here
    return (time.process_time() - started) * GIB / (count * len(record))


def summarize(what: str, results: dict[str, list[tuple[float, float]]]) -> None:
    """Median and range of each kind's throughput and CPU, and of TLS against plain per round."""
    def span(values: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
        return (f"{statistics.median(values) / scale:{fmt}} ({min(values) / scale:{fmt}}-"
                f"{max(values) / scale:{fmt}})")
    plain = results["plain"]
    for kind, rounds in results.items():
        line = (f"{what} {kind:10s}: {span([r[0] for r in rounds], 1e6, '.0f')} MB/s, "
                f"{span([r[1] for r in rounds])} CPU-s/GiB")
        if kind != "plain":
            ratios = [t[0] / p[0] for t, p in zip(rounds, plain)]
            cpu = [p[1] / t[1] for t, p in zip(rounds, plain)]
            line += f"; throughput ratio {span(ratios)} (target >= 0.7), CPU ratio plain/TLS {span(cpu)}"
        print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("raw", "job"), help="one comparison (default: both)")
    parser.add_argument("--link", metavar="RATE", help="across two network namespaces joined by a veth pair "
                                                        "shaped to RATE (tc's units: 10gbit), not loopback; root")
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    if args.link:
        netns_link.rate_bits(args.link)          # a bad rate fails before anything is made
        why = netns_link.unavailable_reason()
        if why:
            print(f"--link {args.link}: skipped: {why}")
            return 0
    reason = ktls.unavailable_reason()
    print(f"kernel TLS: {'available (not used: Python ssl cannot hand it a connection)' if reason is None else reason}")
    floor = aes_gcm_seconds_per_gib()
    print(f"AES-256-GCM here: {floor:.2f} CPU-s/GiB per end, {2 * floor:.2f} for both ends of a connection")
    summaries = []
    with Link(args.link) if args.link else nullcontext() as link:
        where = f" across a {args.link} link ({link.devices[0]}-{link.devices[1]}, tbf)" if link else " on loopback"
        print(f"rounds{where}", flush=True)
        for what, rounds_of in (("raw", connection_rounds), ("job", job_rounds)):
            if args.only in (None, what):
                with tempfile.TemporaryDirectory() as tmp:
                    summaries.append((what, rounds_of(size, args.rounds, Path(tmp), link)))
    for what, results in summaries:
        summarize({"raw": "data connection", "job": "three-way backup"}[what] + (f" [{args.link}]" if args.link else ""),
                  results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
