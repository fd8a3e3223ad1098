"""An asyncio NDMP client: one control connection to one NDMP server (DATA, TAPE, ROBOT).

The DMA side of the same wire code the server uses (``ndmpd/wire``: the codec compiled from
``protocol/*.x``, record marking, version translation). Bodies are the internal (v4) form
whatever version was negotiated, so a job is written once.

Requests may be in flight from several tasks at once (replies are matched by their
reply_sequence), each with its own timeout. Posts (NOTIFY_*, LOG_*, FH_*) are read while
requests wait: they go, in arrival order, to the handlers registered with :meth:`Agent.on`
(plain or async functions; one dispatcher task runs them in order, so a handler may itself
``await agent.call(...)``), or, for a message with no handler, into a queue that
:meth:`Agent.wait_post` takes from. A lost connection fails every pending call and wait
with :class:`NdmpConnectionLost`.

Example::

    from ndmpd.dma.agent import Agent
    from ndmpd.wire import C

    async def query():
        async with Agent.connect("127.0.0.1", user="ndmp", password="secret") as agent:
            print("NDMPv%d" % agent.version)
            info = await agent.call("CONFIG_GET_HOST_INFO")
            print(info.hostname, info.os_type)
            agent.on(C.LOG_MESSAGE, lambda body: print(body.entry))
            await agent.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)
            ...
            halted = await agent.wait_post(C.NOTIFY_MOVER_HALTED, timeout=600)

Several agents (a DATA and a TAPE server, or three hosts) are just several ``Agent``
objects on the same event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import ssl
import time
from collections import deque
from typing import Any, Awaitable, Callable, Iterable

from ..wire import C, REPLY, REQUEST, XdrError, protocol
from ..wire.message import Header, unpack_header
from ..wire.records import OversizedRecord, RecordReader, frame
from .messages import MessageCodec, auth_data
from .errors import NdmpAuthError, NdmpConnectError, NdmpConnectionLost, NdmpProtocolError, NdmpReplyError, checked

log = logging.getLogger("ndmpd.dma")
MAX_RECORD = 1 << 30                 # what a reply (a big FS_INFO, an FH batch) may reach
PostHandler = Callable[[Any], "Awaitable[None] | None"]
RawHandler = Callable[[int, int, bytes], "Awaitable[None] | None"]


class Agent:
    """One negotiated, authenticated NDMP control connection; open with :meth:`connect`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                 timeout: float) -> None:
        self.peer = peer
        self.timeout = timeout
        self.sequence = 0
        self.auth = ""                       # the auth method that logged in: "md5", "text" or "none"
        self._reader, self._writer = reader, writer
        self._records = RecordReader(MAX_RECORD)
        self._replies: dict[int, asyncio.Future[tuple[Header, bytes]]] = {}
        self._handlers: dict[int, list[PostHandler]] = {}
        self._raw_handlers: dict[int, RawHandler] = {}
        self._lost_callbacks: list[Callable[[NdmpConnectionLost], None]] = []
        self._posts: deque[tuple[int, Any]] = deque()
        self._post_waiters: list[tuple[int, asyncio.Future[Any]]] = []
        self._dispatch: asyncio.Queue[tuple[int, Any] | asyncio.Future[None] | None] = asyncio.Queue()
        self._lost: NdmpConnectionLost | None = None
        self._greeting: asyncio.Future[tuple[Header, bytes]] = asyncio.get_running_loop().create_future()
        self.codec = MessageCodec(4)
        self._set_version(4)
        self._read_task = asyncio.create_task(self._read_loop(), name=f"ndmp-read {peer}")
        self._dispatch_task = asyncio.create_task(self._dispatch_loop(), name=f"ndmp-posts {peer}")

    # ---------------------------------------------------------------- opening

    @staticmethod
    def connect(host: str, port: int = 10000, *, user: str, password: str,
                versions: Iterable[int] = (4, 3), auth: Iterable[str] = ("md5", "text"),
                timeout: float = 60.0, source: str | None = None, tls: Any = None) -> "_Opening":
        """Connect, negotiate the first of ``versions`` the server accepts, and log in with the
        first of ``auth`` it offers (``auth=()``: no login, for pre-authentication requests). Use as ``async with Agent.connect(...) as agent`` (closed
        on exit) or ``agent = await Agent.connect(...)`` (then :meth:`close` it).
        ``tls`` (a :class:`~ndmpd.dma.hosts.TlsPeer`): over TLS, the server's certificate checked
        against its CA or pinned fingerprint before anything is sent."""
        return _Opening(_open(host, port, user, password, tuple(versions), tuple(auth), timeout, source, tls))

    async def _negotiate(self, versions: tuple[int, ...]) -> None:
        header, record = await self._wait(self._greeting, self.timeout, "greeting")
        greeting = self._trusted(header, record, "the greeting", C.NOTIFY_CONNECTION_STATUS)
        if greeting.reason != C.CONNECTED:
            why = greeting.text_reason or ("shut down" if greeting.reason == C.SHUTDOWN else "refused")
            raise NdmpConnectError(f"{self.peer}: the server refused the connection: {why}")
        refusals = []
        for version in versions:
            try:
                await self.call("CONNECT_OPEN", protocol_version=version)
            except NdmpReplyError as exc:
                refusals.append(f"v{version}: {protocol(4).error_name(exc.code)}")
                continue
            self._set_version(version)
            return
        raise NdmpConnectError(f"{self.peer}: no common NDMP version (server offers up to "
                               f"v{greeting.protocol_version}; {', '.join(refusals) or 'none asked'})")

    async def _login(self, user: str, password: str, methods: tuple[str, ...]) -> None:
        if not methods:
            return
        for method in methods:
            challenge = b""
            if method == "md5":
                try:
                    attr = await self.call("CONFIG_GET_AUTH_ATTR", auth_type=C.AUTH_MD5)
                except NdmpReplyError:
                    continue                 # MD5 not offered: the next method
                challenge = bytes(attr.server_attr.challenge)
            data = auth_data(method, user, password, challenge)
            try:
                await self.call("CONNECT_CLIENT_AUTH", auth_data=data)
            except NdmpReplyError as exc:
                if exc.code == C.NOT_AUTHORIZED_ERR:
                    raise NdmpAuthError(f"{self.peer}: authentication failed for user {user!r} "
                                        f"({method.upper()}): wrong user or password") from None
                if exc.code in (C.ILLEGAL_ARGS_ERR, C.NOT_SUPPORTED_ERR):
                    continue
                raise
            self.auth = method
            return
        raise NdmpAuthError(f"{self.peer}: the server offers none of the auth methods {', '.join(methods)}")

    # ---------------------------------------------------------------- use

    @property
    def peer_certificate(self) -> bytes:
        """The DER certificate the server presented (b"" over plain TCP)."""
        from ..tls.certs import peer_der
        return peer_der(self._writer.get_extra_info("ssl_object"))

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def on(self, code: int, handler: PostHandler) -> None:
        """Run ``handler(body)`` for every post ``code`` (a C.NOTIFY_/LOG_/FH_ value), in order.

        Posts of that code already queued go to the handler first."""
        self._handlers.setdefault(code, []).append(handler)
        kept: deque[tuple[int, Any]] = deque()
        for post in self._posts:
            (self._dispatch.put_nowait(post) if post[0] == code else kept.append(post))
        self._posts = kept

    def on_raw(self, code: int, handler: RawHandler | None) -> None:
        """Give every post ``code`` to ``handler(version, code, record)`` undecoded, from the read
        loop itself (None: stop). For the high-volume FH_* posts: the handler only queues the
        record (header included) for a worker, so the control path never decodes them. If it
        returns an awaitable, nothing more is read until that is done — the handler's
        back-pressure, for a worker that falls behind — except while a request waits for its
        reply: then reading goes on (within 10 ms), so replies are never held back. Posts
        with a raw handler are not queued for :meth:`wait_post`; :meth:`on` handlers of the
        same code still get them decoded."""
        if handler is None:
            self._raw_handlers.pop(code, None)
        else:
            self._raw_handlers[code] = handler

    def on_lost(self, callback: Callable[[NdmpConnectionLost], None]) -> None:
        """Call ``callback(error)`` once the connection is lost (closed, failed, or closed for a
        reply that could not be trusted), after every post received before that went through
        its handlers: a job waiting for NOTIFY posts hears of the loss in the posts' order, so
        a loss never passes for an end the server never sent. At once when already lost."""
        if self._dispatch_task.done() and self._lost is not None:
            callback(self._lost)
        else:
            self._lost_callbacks.append(callback)

    def off_lost(self, callback: Callable[[NdmpConnectionLost], None]) -> None:
        """Stop calling ``callback`` on a loss (a job that ended, on an agent that goes on)."""
        if callback in self._lost_callbacks:
            self._lost_callbacks.remove(callback)

    def off(self, code: int, handler: PostHandler) -> None:
        """Stop sending posts ``code`` to ``handler``."""
        handlers = self._handlers.get(code, [])
        if handler in handlers:
            handlers.remove(handler)

    async def call(self, message: str, /, timeout: float | None = None, *,
                   body_fields: dict[str, Any] | None = None, **fields: Any) -> Any:
        """Send request ``message`` (e.g. "TAPE_OPEN", fields of its internal body as keywords)
        and return its reply body; a header or reply error raises :class:`NdmpReplyError`,
        no reply within ``timeout`` (default: the agent's) raises TimeoutError.
        ``body_fields`` carries fields a keyword cannot (EXECUTE_CDB's own ``timeout``)."""
        fields = {**fields, **(body_fields or {})}
        if self._lost:
            raise self._lost
        self.codec.spec(message)             # a message this version lacks fails here, before a sequence
        self.sequence += 1
        sequence = self.sequence
        reply: asyncio.Future[tuple[Header, bytes]] = asyncio.get_running_loop().create_future()
        self._replies[sequence] = reply
        try:
            self._writer.write(self.codec.request(message, sequence, fields))
            await self._writer.drain()
            header, record = await self._wait(reply, self.timeout if timeout is None else timeout, message)
        except TimeoutError:                 # an OSError too, but not a lost connection
            raise
        except (ConnectionError, OSError) as exc:
            raise self._lost or NdmpConnectionLost(f"{self.peer}: {message}: {exc}") from None
        finally:
            self._replies.pop(sequence, None)
        return checked(message, header.error_code,
                       lambda: self._trusted(header, record, f"the {message} reply", self.codec.spec(message).code))

    async def delivered(self) -> None:
        """Until every post received so far has been through its :meth:`on` handlers. Posts go
        to their handlers on another task than replies, so a reply can be seen before the posts
        the server sent ahead of it (the LOG_MESSAGE saying why it refused, the NOTIFY_DATA_HALTED
        before a GET_STATE that reads HALTED): awaiting this after the reply sees them, where a
        sleep would be a guess that a loaded machine beats."""
        if self._dispatch_task.done():
            return
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._dispatch.put_nowait(marker)
        await asyncio.wait({marker, self._dispatch_task}, return_when=asyncio.FIRST_COMPLETED)

    async def wait_post(self, code: int, timeout: float | None = 60.0) -> Any:
        """The next post ``code`` that no handler takes (earlier ones first), waiting up to
        ``timeout`` seconds (TimeoutError); posts of other codes stay queued."""
        for i, (c, body) in enumerate(self._posts):
            if c == code:
                del self._posts[i]
                return body
        if self._lost:
            raise self._lost
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (code, waiter)
        self._post_waiters.append(entry)
        try:
            spec = protocol(4).messages.get(code) or self.proto.messages.get(code)
            return await self._wait(waiter, timeout, f"post {spec.name if spec else hex(code)}")
        finally:
            if entry in self._post_waiters:
                self._post_waiters.remove(entry)

    def posts(self) -> list[tuple[int, Any]]:
        """The queued posts nobody took yet, as (code, body), oldest first (left queued)."""
        return list(self._posts)

    async def close(self) -> None:
        """Say CONNECT_CLOSE and close; pending calls fail with NdmpConnectionLost."""
        if self._lost is None:
            try:
                self._writer.write(frame(Header(self.sequence + 1, int(time.time()), REQUEST,
                                                C.CONNECT_CLOSE, 0, 0).pack()))
                self.sequence += 1
                async with asyncio.timeout(5):
                    await self._writer.drain()
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
        self._fail(NdmpConnectionLost(f"{self.peer}: connection closed by this DMA"))
        self._writer.close()
        try:
            async with asyncio.timeout(5):
                await self._writer.wait_closed()
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass
        for task in (self._read_task, self._dispatch_task):
            task.cancel()
        await asyncio.gather(self._read_task, self._dispatch_task, return_exceptions=True)

    async def __aenter__(self) -> "Agent":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- internals

    def _set_version(self, version: int) -> None:
        self.codec.set_version(version)
        self.version = version
        self.proto = self.codec.proto

    def _decode(self, header: Header, record: bytes) -> Any:
        return self.codec.decode(header, record)

    def _trusted(self, header: Header, record: bytes, what: str, code: int) -> Any:
        """The body of a reply (or the greeting) the rest of the session depends on. One that is
        of another message, or that does not decode (any failure: the bytes are the server's),
        closes the connection with :class:`NdmpProtocolError` saying what came."""
        try:
            if header.message_code != code:
                raise ValueError(f"it is a message 0x{header.message_code:x}, not 0x{code:x}")
            return self._decode(header, record)
        except Exception as exc:
            error = NdmpProtocolError(f"{self.peer}: {what} could not be decoded ({exc}); connection closed")
        self._fail(error)
        self._writer.close()
        raise error

    async def _wait(self, future: asyncio.Future, timeout: float | None, what: str) -> Any:
        try:
            async with asyncio.timeout(timeout):       # not wait_for: on 3.11 it loses a cancel
                return await asyncio.shield(future)      # that lands as the reply arrives
        except asyncio.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.peer}: {what}: no answer within {timeout:g} s") from None

    async def _read_loop(self) -> None:
        why = "the server closed the connection"
        try:
            while True:
                data = await self._reader.read(1 << 20)
                if not data:
                    break
                for record in self._records.feed(data):
                    if isinstance(record, OversizedRecord):
                        why = f"a message of {record.length} bytes exceeds {MAX_RECORD}"
                        return
                    waiting = self._received(record)
                    if waiting is not None:
                        await self._hold(waiting)
        except (OSError, ConnectionError) as exc:
            why = f"connection failed: {exc}"
        except XdrError as exc:
            why = f"undecodable message: {exc}"
        finally:
            self._fail(NdmpConnectionLost(f"{self.peer}: {why}"))

    async def _hold(self, waiting: Awaitable[None]) -> None:
        """Read no further until ``waiting`` is done, or a request is waiting for its reply."""
        task = asyncio.ensure_future(waiting)
        try:
            while not task.done() and not self._replies:
                await asyncio.wait({task}, timeout=0.01)
        finally:
            if not task.done():
                task.cancel()

    def _received(self, record: bytes) -> Awaitable[None] | None:
        header = unpack_header(record)
        if header.message_type == REPLY:
            reply = self._replies.get(header.reply_sequence)
            if reply is not None and not reply.done():
                reply.set_result((header, record))
            return None
        if header.message_code == C.NOTIFY_CONNECTION_STATUS and not self._greeting.done():
            self._greeting.set_result((header, record))
            return None
        raw = self._raw_handlers.get(header.message_code)
        if raw is not None:
            waiting = raw(self.version, header.message_code, record)
            if not self._handlers.get(header.message_code):
                return waiting
            self._post_decoded(header, record)
            return waiting
        self._post_decoded(header, record)
        return None

    def _post_decoded(self, header: Header, record: bytes) -> None:
        try:
            body = self._decode(header, record)
        except (XdrError, KeyError) as exc:
            log.warning("%s: post 0x%x dropped: %s", self.peer, header.message_code, exc)
            return
        self._post(header.message_code, body)

    def _post(self, code: int, body: Any) -> None:
        if self._handlers.get(code):
            self._dispatch.put_nowait((code, body))
            return
        for entry in self._post_waiters:
            if entry[0] == code and not entry[1].done():
                entry[1].set_result(body)
                self._post_waiters.remove(entry)
                return
        self._posts.append((code, body))

    async def _dispatch_loop(self) -> None:
        while True:
            item = await self._dispatch.get()
            if item is None:                            # _fail's marker: after the last post
                for callback in self._lost_callbacks:
                    try:
                        callback(self._lost)            # type: ignore[arg-type]
                    except Exception:
                        log.exception("%s: a connection-lost callback failed", self.peer)
                return
            if isinstance(item, asyncio.Future):    # delivered(): everything before it is
                if not item.done():
                    item.set_result(None)
                continue
            code, body = item
            for handler in list(self._handlers.get(code, [])):
                try:
                    result = handler(body)
                    if inspect.isawaitable(result):
                        await result
                except Exception:                       # a handler's bug must not stop the others
                    log.exception("%s: handler for post 0x%x failed", self.peer, code)

    def _fail(self, error: NdmpConnectionLost) -> None:
        if self._lost is not None:
            return
        self._lost = error
        for future in [*self._replies.values(), self._greeting, *(w for _, w in self._post_waiters)]:
            if not future.done():
                future.set_exception(error)
                future.exception()           # retrieved: nobody may be left awaiting it (no warning)
        self._dispatch.put_nowait(None)


async def _open(host: str, port: int, user: str, password: str, versions: tuple[int, ...],
                auth: tuple[str, ...], timeout: float, source: str | None, tls: Any = None) -> Agent:
    peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    context = _tls_context(peer, tls)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, local_addr=(source, 0) if source else None, ssl=context,
                server_hostname=host if context else None)
    except asyncio.TimeoutError:
        raise NdmpConnectError(f"{peer}: no connection within {timeout:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise NdmpConnectError(f"{peer}: TLS: the server's certificate was refused: "
                               f"{exc.verify_message or exc.reason}") from None
    except ssl.SSLError as exc:
        raise NdmpConnectError(f"{peer}: TLS handshake failed: {exc.reason or exc} "
                               "(is this the server's tls_listen port?)") from None
    except OSError as exc:
        why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise NdmpConnectError(f"{peer}: cannot connect: {why}") from None
    if tls is not None and tls.fingerprint:
        from ..tls.contexts import PinMismatch, check_pin
        try:
            check_pin(writer.get_extra_info("ssl_object"), tls.fingerprint, peer)
        except PinMismatch as exc:      # before the Agent exists: not one byte of NDMP was sent
            writer.transport.abort()
            raise NdmpConnectError(str(exc)) from None
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    agent = Agent(reader, writer, peer, timeout)
    try:
        await agent._negotiate(versions)
        await agent._login(user, password, auth)
    except NdmpConnectionLost as exc:
        await agent.close()
        raise NdmpConnectError(str(exc)) from None
    except BaseException:
        await agent.close()
        raise
    return agent


def _tls_context(peer: str, tls: Any) -> ssl.SSLContext | None:
    if tls is None:
        return None
    from ..tls.certs import CertificateError
    from ..tls.contexts import dma_context
    try:
        return dma_context(tls.ca)
    except CertificateError as exc:
        raise NdmpConnectError(f"{peer}: {exc}") from None


class _Opening:
    """What :meth:`Agent.connect` returns: awaitable, or an async context manager."""

    def __init__(self, opening: Awaitable[Agent]) -> None:
        self._opening = opening
        self._agent: Agent | None = None

    def __await__(self):
        return self._opening.__await__()

    async def __aenter__(self) -> Agent:
        self._agent = await self._opening
        return self._agent

    async def __aexit__(self, *exc: object) -> None:
        if self._agent is not None:
            await self._agent.close()
