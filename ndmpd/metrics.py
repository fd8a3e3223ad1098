"""Prometheus metrics of one server, in a registry its :class:`ServerContext` owns.

Event counts (sessions, auth failures, error replies, finished jobs) are counters bumped
where the event happens. Everything that changes continuously (sessions connected, jobs
running, bytes moved, snapshots held) is read from the live state at scrape time by
:class:`LiveCollector`, so the hot data and mover paths pay nothing, and bytes move
*during* a job, not only when it ends.

The endpoint is served from the asyncio loop (:class:`MetricsEndpoint`) rather than from
prometheus_client's own server thread: the sessions and their jobs are owned by the loop,
so a scrape reads them on the thread that changes them (no lock, no "set changed size
during iteration"), there is no extra thread to stop, and it closes with the server.
A scrape is O(sessions + volumes) work, bounded like any request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .config import ListenAddress
from .wire import C, protocol

log = logging.getLogger("ndmpd.metrics")

DATA_KINDS = {C.DATA_OP_BACKUP: "backup", C.DATA_OP_RECOVER: "recover",
              C.DATA_OP_RECOVER_FILEHIST: "recover_filehist"}
MOVER_KINDS = {C.MOVER_MODE_READ: "mover_read", C.MOVER_MODE_WRITE: "mover_write"}
JOB_KINDS = (*DATA_KINDS.values(), *MOVER_KINDS.values())
SNAPSHOT_DIR = ".ndmpd-snapshots"          # btrfs snapshots inside a volume (snapshots.btrfs)
LVM_MOUNT_DIR = "snapshots"                # LVM snapshot mounts under state_dir (snapshots.lvm)


def _enum_names(enum: str, prefix: str) -> dict[int, str]:
    members = protocol(4).codec.spec.enums[enum].members
    return {value: name.removeprefix(prefix) for name, value in members.items()}


DATA_HALT_NAMES = _enum_names("ndmp4_data_halt_reason", "NDMP4_DATA_HALT_")
MOVER_HALT_NAMES = _enum_names("ndmp4_mover_halt_reason", "NDMP4_MOVER_HALT_")


class Metrics:
    """The counters of one server and the live view its registry exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.sessions_total = Counter("ndmpd_sessions", "Control connections accepted", registry=self.registry)
        self.auth_failures = Counter("ndmpd_auth_failures", "CONNECT_CLIENT_AUTH requests refused",
                                     registry=self.registry)
        self.error_replies = Counter("ndmpd_error_replies", "Replies sent with an NDMP error, by error",
                                     ["error"], registry=self.registry)
        self.jobs = Counter("ndmpd_jobs", "Jobs finished, by kind and halt reason (outcome)",
                            ["kind", "outcome"], registry=self.registry)
        self._lock = threading.Lock()
        self._bytes_done = {"data": 0, "mover": 0}    # of finished jobs
        self.live = LiveCollector(self)
        self.registry.register(self.live)

    # -------------------------------------------------------------- events

    def session_started(self) -> None:
        self.sessions_total.inc()

    def error_reply(self, error_name: str, auth: bool = False) -> None:
        """An error reply went out; ``auth``: it refused a CONNECT_CLIENT_AUTH."""
        self.error_replies.labels(error=error_name).inc()
        if auth:
            self.auth_failures.inc()

    def data_halted(self, operation: int, reason: int, processed: int) -> None:
        """A data job ended (any thread)."""
        self._job_ended(DATA_KINDS.get(operation), DATA_HALT_NAMES.get(reason, str(reason)), "data", processed)

    def mover_halted(self, mode: int, reason: int, moved: int) -> None:
        """A mover that was moving data halted (any thread)."""
        self._job_ended(MOVER_KINDS.get(mode), MOVER_HALT_NAMES.get(reason, str(reason)), "mover", moved)

    def _job_ended(self, kind: str | None, outcome: str, service: str, count: int) -> None:
        if kind is None:
            return
        self.jobs.labels(kind=kind, outcome=outcome).inc()
        with self._lock:
            self._bytes_done[service] += count

    def bytes_done(self) -> dict[str, int]:
        with self._lock:
            return dict(self._bytes_done)

    def watch(self, ctx: Any) -> None:
        """Read live state from ``ctx`` (its ``sessions`` and ``config``) at each scrape."""
        self.live.ctx = ctx

    def exposition(self) -> bytes:
        """The Prometheus text format of everything, now."""
        return generate_latest(self.registry)


def running_jobs(session: Any) -> Iterator[tuple[str, str, int]]:
    """(kind, service, bytes so far) of each job a session is running."""
    data = session.data
    if data.state == C.DATA_STATE_ACTIVE and data.operation in DATA_KINDS:
        yield DATA_KINDS[data.operation], "data", data.processed()
    mover = session.mover
    if mover.state in (C.MOVER_STATE_ACTIVE, C.MOVER_STATE_PAUSED) and mover.mode in MOVER_KINDS:
        yield MOVER_KINDS[mover.mode], "mover", mover.bytes_moved


def snapshots_held(volumes: Iterable[Path], state_dir: Path) -> int:
    """Snapshots present now: btrfs ones inside each volume, LVM ones mounted under state_dir."""
    count = 0
    for folder in [Path(v) / SNAPSHOT_DIR for v in volumes] + [Path(state_dir) / LVM_MOUNT_DIR]:
        try:
            count += len(os.listdir(folder))
        except OSError:
            pass
    return count


class LiveCollector:
    """Metrics read from the server's live state when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.ctx: Any = None
        self._reported = {"data": 0, "mover": 0}    # bytes counters never go back

    def collect(self) -> Iterator[Any]:
        sessions = list(self.ctx.sessions) if self.ctx is not None else []
        current = GaugeMetricFamily("ndmpd_sessions_current", "Control connections open now")
        current.add_metric([], len(sessions))
        yield current
        active = {kind: 0 for kind in JOB_KINDS}
        moving = self.metrics.bytes_done()
        for session in sessions:
            for kind, service, count in running_jobs(session):
                active[kind] += 1
                moving[service] += count
        jobs = GaugeMetricFamily("ndmpd_jobs_active", "Jobs running now, by kind", labels=["kind"])
        for kind, count in active.items():
            jobs.add_metric([kind], count)
        yield jobs
        moved = CounterMetricFamily("ndmpd_bytes", "Bytes moved by the data service and the mover "
                                    "(finished and running jobs)", labels=["service"])
        for service, count in moving.items():
            self._reported[service] = max(self._reported[service], count)
            moved.add_metric([service], self._reported[service])
        yield moved
        if self.ctx is not None:
            config = self.ctx.config
            held = snapshots_held([v.path for v in config.volumes], config.server.state_dir)
            snapshots = GaugeMetricFamily("ndmpd_snapshots", "Snapshots held now")
            snapshots.add_metric([], held)
            yield snapshots


HEAD_LIMIT = 8192
HEAD_TIMEOUT = 5.0           # seconds for the request head to arrive
EXCHANGE_TIMEOUT = 10.0      # seconds for the whole exchange, the response's sending included
MAX_CLIENTS = 16             # connections held at once; a new one cuts the oldest


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.0 on the asyncio loop (one response per connection).

    Whatever scrapers do, the endpoint holds at most :data:`MAX_CLIENTS` connections, each for at
    most :data:`EXCHANGE_TIMEOUT`: idle, slow or non-reading clients cannot use up the file
    descriptors the NDMP listener needs, nor memory, and the newest scrape always gets in.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._server: asyncio.base_events.Server | None = None
        self._clients: dict[asyncio.StreamWriter, None] = {}      # oldest first

    async def start(self, address: ListenAddress) -> tuple[str, int]:
        """Listen on ``address``; returns the bound (host, port)."""
        self._server = await asyncio.start_server(self._serve, host=address.host, port=address.port,
                                                  reuse_address=True, limit=HEAD_LIMIT)
        host, port = self._server.sockets[0].getsockname()[:2]
        log.info("metrics on http://%s/metrics", ListenAddress(host, port))
        return host, port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            oldest = next(iter(self._clients))
            del self._clients[oldest]
            oldest.transport.abort()                 # its exchange then ends at once
        self._clients[writer] = None
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                await self._exchange(reader, writer)
        except (asyncio.TimeoutError, ConnectionError):
            writer.transport.abort()                 # unsent output is dropped, not kept
        finally:
            self._clients.pop(writer, None)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
                status, body, kind = b"405 Method Not Allowed", b"GET /metrics\n", b"text/plain"
            elif parts[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
                status, body, kind = b"404 Not Found", b"GET /metrics\n", b"text/plain"
            else:
                status, body, kind = b"200 OK", self.metrics.exposition(), CONTENT_TYPE_LATEST.encode()
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + (b"" if parts and parts[0] == b"HEAD" else body))
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
