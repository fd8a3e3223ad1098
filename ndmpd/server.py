"""The asyncio edge: listeners on every configured address, one task per control connection."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from .config import Config, ListenAddress
from .context import ServerContext
from .metrics import MetricsEndpoint
from .session import Edge, Session

log = logging.getLogger("ndmpd.server")
READ_SIZE = 256 * 1024
IDLE_WRITE_LIMIT = 4 << 20       # pause reading while this much output is unsent


class AsyncioEdge(Edge):
    """A session's I/O side: one worker thread for its blocking device calls, the loop for the rest."""

    def __init__(self, session: Session, writer: asyncio.StreamWriter) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = session
        self.writer = writer
        self.wakeup = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        sockname = writer.get_extra_info("sockname")
        self.local_host = sockname[0] if sockname else "127.0.0.1"

    def run_blocking(self, work: Callable[[], Any], done: Callable[[Future], None]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"session {self.session.peer}")
        self.loop.run_in_executor(self._executor, work).add_done_callback(done)

    def call_soon(self, fn: Callable[[], None]) -> None:
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:            # loop closed: the server is gone
            pass

    def when_drained(self, fn: Callable[[], None]) -> None:
        transport = self.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() < IDLE_WRITE_LIMIT:
            fn()
        else:
            self.loop.call_later(0.01, self.when_drained, fn)

    def output_ready(self) -> None:
        out = self.session.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)
        self.wakeup.set()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class NdmpServer:
    """Accepts control connections and runs a :class:`Session` for each."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._writers: dict[Session, asyncio.StreamWriter] = {}
        self._stopping = asyncio.Event()
        self._metrics: MetricsEndpoint | None = None
        self.metrics_address: tuple[str, int] | None = None

    @property
    def config(self) -> Config:
        return self.ctx.config

    async def start(self) -> list[tuple[str, int]]:
        """Bind every listen address; returns the bound (host, port) pairs."""
        bound = []
        for addr in self.config.server.listen:
            server = await asyncio.start_server(self._on_connection, host=addr.host, port=addr.port,
                                                family=_family(addr), reuse_address=True,
                                                limit=READ_SIZE)
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound.append((host, port))
                log.info("listening on %s", ListenAddress(host, port))
        if self.config.server.metrics_listen is not None:
            self._metrics = MetricsEndpoint(self.ctx.metrics)
            self.metrics_address = await self._metrics.start(self.config.server.metrics_listen)
        return bound

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        name = ListenAddress(peer[0], peer[1]).__str__() if peer else "?"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(self.ctx, name)
        edge = session.edge = AsyncioEdge(session, writer)
        try:
            if len(self.ctx.sessions) >= self.config.server.max_sessions:
                log.warning("%s: refused, %d sessions already", name, len(self.ctx.sessions))
                session.refuse("too many sessions")
            else:
                self.ctx.sessions.add(session)
                self._writers[session] = writer
                log.info("%s: connected", name)
                session.greet()
            await self._pump(session, edge, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("%s: connection lost: %s", name, exc)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, session.teardown)
            edge.close()
            self.ctx.sessions.discard(session)
            self._writers.pop(session, None)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            log.info("%s: closed", name)
            if task:
                self._tasks.discard(task)

    async def _pump(self, session: Session, edge: AsyncioEdge, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        while True:
            out = session.data_to_send()
            if out:
                writer.write(out)
            await writer.drain()
            if session.closed:
                return
            if session.busy:                # a device call is running: read no further meanwhile
                edge.wakeup.clear()
                await edge.wakeup.wait()
                continue
            data = await reader.read(READ_SIZE)
            if not data:
                return
            session.receive_data(data)

    async def serve_until_stopped(self) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`stop`), then close every session cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                pass
        await self._stopping.wait()
        log.info("stopping")
        for server in self._servers:
            server.close()
        for session, writer in list(self._writers.items()):
            session.shutdown()
            writer.write(session.data_to_send())
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for server in self._servers:
            await server.wait_closed()
        if self._metrics is not None:
            await self._metrics.close()

    def stop(self) -> None:
        self._stopping.set()


def _family(addr: ListenAddress) -> int:
    return socket.AF_INET6 if ":" in addr.host else socket.AF_UNSPEC
