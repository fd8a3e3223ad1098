"""The asyncio edge: listeners on every configured address, one task per control connection."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import Config, ListenAddress
from .context import ServerContext
from .guard import ConnectionGuard
from .metrics import MetricsEndpoint
from .reload import reload_context, summary
from .sdnotify import Notifier
from .services.data import HALTED as DATA_HALTED, IDLE as DATA_IDLE
from .services.mover import HALTED as MOVER_HALTED, IDLE as MOVER_IDLE
from .session import Edge, Session
from .tcp import acknowledge_now, send_without_delay

log = logging.getLogger("ndmpd.server")
READ_SIZE = 256 * 1024
IDLE_WRITE_LIMIT = 4 << 20       # pause reading while this much output is unsent
CLOSE_GRACE = 5.0                # seconds a closing connection's unsent output gets; then it is dropped


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
        self.loop.run_in_executor(self._executor, work).add_done_callback(
            lambda future: _retrieved(future) and done(future))

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


@dataclass
class _Connection:
    """One control connection as the server tracks it: its session, I/O and watchdog."""

    session: Session
    edge: AsyncioEdge
    writer: asyncio.StreamWriter
    last_input: float = field(default_factory=time.monotonic)    # last message, or a job seen running
    timer: asyncio.TimerHandle | None = None
    torn_down: bool = False             # its teardown has been started


def job_running(session: Session) -> bool:
    """A job or device call is under way: no timeout may cut this session."""
    return (session.busy or session.data.state not in (DATA_IDLE, DATA_HALTED)
            or session.mover.state not in (MOVER_IDLE, MOVER_HALTED))


class NdmpServer:
    """Accepts control connections and runs a :class:`Session` for each.

    ``reload`` (SIGHUP) swaps :attr:`ctx` for new sessions; ``notifier`` tells systemd.
    """

    def __init__(self, ctx: ServerContext, reload_config: Callable[[], Config] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.ctx = ctx
        self.reload_config = reload_config
        self.notifier = notifier or Notifier({})
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._connections: dict[Session, _Connection] = {}
        self._stopping = asyncio.Event()
        self._metrics: MetricsEndpoint | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.stuck = 0                  # sessions that did not stop within server.shutdown_timeout
        self._tls_context: Any = None   # the TLS listeners' ssl.SSLContext (its certificate reloads)
        self.tls_addresses: list[tuple[str, int]] = []

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def guard(self) -> ConnectionGuard:
        return self.ctx.guard

    async def start(self) -> list[tuple[str, int]]:
        """Bind every listen address; returns the bound (host, port) pairs (TLS ones in
        :attr:`tls_addresses`)."""
        bound = await self._listen(self.config.server.listen, None)
        if self.config.server.tls_listen:
            from .tls.contexts import listener_context
            settings = self.config.server
            self._tls_context = listener_context(settings.tls_certificate, settings.tls_key)
            self.tls_addresses = await self._listen(settings.tls_listen, self._tls_context)
        if self.config.server.metrics_listen is not None:
            self._metrics = MetricsEndpoint(self.ctx.metrics)
            try:
                self.metrics_address = await self._metrics.start(self.config.server.metrics_listen)
            except OSError as exc:
                raise OSError(exc.errno, f"{self.config.server.metrics_listen} (server.metrics_listen): "
                                         f"{exc.strerror or exc}") from None
        return bound

    async def _listen(self, addresses: tuple[ListenAddress, ...], tls: Any) -> list[tuple[str, int]]:
        """Bind ``addresses`` (with TLS when ``tls`` is an SSLContext); the bound (host, port) pairs."""
        bound = []
        for addr in addresses:
            try:
                server = await asyncio.start_server(self._on_connection, host=addr.host, port=addr.port,
                                                    family=_family(addr), reuse_address=True,
                                                    limit=READ_SIZE, ssl=tls,
                                                    ssl_handshake_timeout=self.guard.settings.login_timeout
                                                    if tls else None)
            except OSError as exc:          # which address could not be used, in the one-line error
                raise OSError(exc.errno, f"{addr}{' (server.tls_listen)' if tls else ''}: "
                                         f"{exc.strerror or exc}") from None
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound.append((host, port))
                log.info("listening on %s%s", ListenAddress(host, port), " (TLS)" if tls else "")
        return bound

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        name = ListenAddress(peer[0], peer[1]).__str__() if peer else "?"
        ctx = self.ctx                  # this session's configuration, for its whole life
        session = Session(ctx, name)
        conn = _Connection(session, AsyncioEdge(session, writer), writer)
        session.edge = conn.edge
        try:
            await self._serve(conn, reader, peer[0] if peer else "?")
        except asyncio.CancelledError:      # only stop() cancels, once a session outlived shutdown_timeout
            log.error("%s: did not stop within server.shutdown_timeout; left behind", name)
            if not conn.torn_down:
                _in_daemon_thread(session.teardown, f"teardown {name}")
        finally:
            if task:
                self._tasks.discard(task)

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader, host: str) -> None:
        """One connection from admission to close; the session is torn down off the loop."""
        session, writer, ctx = conn.session, conn.writer, conn.session.ctx
        name = session.peer
        sock = writer.get_extra_info("socket")
        if sock is not None:
            send_without_delay(sock)
        try:
            verdict = ctx.guard.arrive(session, host)
            if self._stopping.is_set():
                session.refuse("server shutting down")
            elif verdict.refusal:
                log.warning("%s: refused: %s", name, verdict.refusal)
                session.refuse(verdict.refusal)
            else:
                for other in verdict.evict:
                    self._cut(self._connections.get(other), f"too many logins in progress "
                              f"(server.max_pending_logins = {ctx.guard.settings.max_pending_logins})")
                ctx.sessions.add(session)
                self._connections[session] = conn
                log.info("%s: connected", name)
                session.greet()
                self._watch(conn)
            await self._pump(conn, reader)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("%s: connection lost: %s", name, exc)
        finally:
            if conn.timer:
                conn.timer.cancel()
            ctx.guard.leave(session)
            ctx.sessions.discard(session)
            self._connections.pop(session, None)
        conn.torn_down = True
        try:
            await asyncio.shield(_in_daemon_thread(session.teardown, f"teardown {name}"))
        finally:
            conn.edge.close()
            _close(writer)
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        log.info("%s: closed", name)

    async def _pump(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        session, edge, writer = conn.session, conn.edge, conn.writer
        sock = writer.get_extra_info("socket")
        while True:
            out = session.data_to_send()
            if out:
                writer.write(out)
            if session.closed:              # the rest is flushed while closing, within CLOSE_GRACE
                return
            await writer.drain()            # a peer that does not read stops our reading
            if session.busy:                # a device call is running: read no further meanwhile
                edge.wakeup.clear()
                await edge.wakeup.wait()
                continue
            data = await reader.read(READ_SIZE)
            if not data:
                return
            received = session.messages_received
            session.receive_data(data)          # before login it holds at most PRE_AUTH_MAX_RECORD
            if session.buffered and sock is not None:   # mid-message: the peer may wait for our ACK
                acknowledge_now(sock)
            if session.messages_received != received:  # a message, not a trickle of bytes, is activity
                conn.last_input = time.monotonic()
                if not received:
                    session.ctx.guard.spoke(session)

    # --------------------------------------------------------------- timeouts

    def _watch(self, conn: _Connection) -> None:
        """Cut the connection at its deadline (see :meth:`ConnectionGuard.deadline`), or look again then."""
        session = conn.session
        if session.closed:
            return
        running = job_running(session)
        if running:
            conn.last_input = time.monotonic()      # a running job is activity: idle starts when it stops
        delay, reason = self.guard.deadline(session, session.authenticated, running, conn.last_input)
        if reason:
            self._cut(conn, reason)
        else:
            conn.timer = asyncio.get_running_loop().call_later(delay, self._watch, conn)

    def _cut(self, conn: _Connection | None, reason: str) -> None:
        """Close one connection: tell the peer why, flush, close (its pump then ends)."""
        if conn is None or conn.session.closed:
            return
        log.warning("%s: closing: %s", conn.session.peer, reason)
        _say_goodbye(conn, reason)
        conn.edge.wakeup.set()

    # ------------------------------------------------------- signals, reload

    def reload(self) -> bool:
        """SIGHUP: new sessions get the configuration read again; a bad one is refused and
        the running one stays. Returns whether the new one took effect."""
        if self.reload_config is None:
            log.warning("reload: no configuration file to read again")
            return False
        self.notifier.reloading()
        try:
            outcome = reload_context(self.ctx, self.reload_config)
            if outcome.ctx is None:
                log.error("reload refused, configuration unchanged: %s", outcome.error)
                return False
            for note in outcome.notes:
                log.warning("reload: %s", note)
            level = outcome.ctx.config.server.log_level
            if level != self.config.server.log_level:
                logging.getLogger().setLevel(level.upper())
                log.warning("reload: log level now %s (server.log_level)", level)
            self._reload_certificate(outcome.ctx.config)
            self.ctx = outcome.ctx
            for conn in list(self._connections.values()):     # new deadlines apply to every connection now
                if not conn.session.authenticated:            # not logged in yet: under the new users and methods
                    conn.session.ctx = outcome.ctx
                if conn.timer:
                    conn.timer.cancel()
                self._watch(conn)
            log.info("reloaded %s: %s (running sessions keep theirs)", outcome.ctx.config.source,
                     summary(outcome.ctx.config))
            return True
        except Exception as exc:            # a reload must never take the server down
            log.error("reload failed, configuration unchanged: %s", exc)
            return False
        finally:
            self.notifier.ready()

    def _reload_certificate(self, config: Config) -> None:
        """New TLS handshakes present the certificate as reloaded (renewed in place or moved;
        the loader checked the pair), while the listeners stay bound."""
        new = config.server
        if self._tls_context is None or new.tls_certificate is None:
            return
        try:
            self._tls_context.load_cert_chain(new.tls_certificate, new.tls_key)
        except (OSError, ValueError) as exc:       # ssl.SSLError is an OSError
            log.error("reload: TLS listeners keep their certificate: %s", exc)

    async def serve_until_stopped(self) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`stop`), SIGHUP reloading; then close every
        session cleanly, waiting at most ``server.shutdown_timeout`` for their jobs."""
        loop = asyncio.get_running_loop()
        for sig, action in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop), (signal.SIGHUP, self.reload)):
            try:
                loop.add_signal_handler(sig, action)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        listening = ", ".join([*map(str, self.config.server.listen),
                               *(f"{a} (TLS)" for a in self.config.server.tls_listen)])
        self.notifier.ready(f"listening on {listening}")
        await self._stopping.wait()
        self.notifier.stopping()
        log.info("stopping")
        for server in self._servers:
            server.close()
        for conn in list(self._connections.values()):
            _say_goodbye(conn)          # the pump sees EOF; a device call in progress finishes first
            if not conn.session.authenticated:
                conn.edge.wakeup.set()  # a throttled login has nothing to finish
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=self.guard.settings.shutdown_timeout)
            self.stuck = len(pending)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        for server in self._servers:
            await server.wait_closed()
        if self._metrics is not None:
            await self._metrics.close()

    def stop(self) -> None:
        self._stopping.set()


def _close(writer: asyncio.StreamWriter) -> None:
    """Close once the unsent output is flushed, but drop the connection if the peer has not read
    it within CLOSE_GRACE: a peer that never reads must not keep its slot, descriptor and
    buffers (nor hold up a shutdown) after it is cut."""
    writer.close()
    asyncio.get_running_loop().call_later(CLOSE_GRACE, writer.transport.abort)


def _retrieved(future: asyncio.Future) -> bool:
    """Mark a worker's outcome as seen: a session closed meanwhile never asks for it, and asyncio
    would log an unretrieved exception (with a traceback) for an expected error."""
    if not future.cancelled():
        future.exception()
    return True


def _in_daemon_thread(fn: Callable[[], Any], name: str) -> asyncio.Future:
    """Run blocking ``fn`` on a daemon thread: unlike the loop's default executor, a call that
    never returns cannot keep the process from exiting."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if not future.done():
            future.set_exception(exc) if exc else future.set_result(result)

    def run() -> None:
        try:
            result, exc = fn(), None
        except BaseException as error:  # handed to the awaiting task
            result, exc = None, error
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:            # the loop is gone: nobody waits any more
            pass
    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _say_goodbye(conn: _Connection, reason: str | None = None) -> None:
    """Tell the peer why (NOTIFY_CONNECTION_STATUS SHUTDOWN; by default the server is going
    away), flush what is queued, close."""
    if reason is None:
        conn.session.shutdown()
    else:
        conn.session.shutdown(reason)
    out = conn.session.data_to_send()
    if out and not conn.writer.is_closing():
        conn.writer.write(out)
    _close(conn.writer)


def _family(addr: ListenAddress) -> int:
    return socket.AF_INET6 if ":" in addr.host else socket.AF_UNSPEC
