"""A blocking NDMP client for tests that need a raw socket under their control (slowloris
peers, half-sent records, fragmented requests): one connection, requests by name, posts queued.

Not a second codec: messages are built and read by the DMA's own
:class:`~ndmpd.dma.messages.MessageCodec`; only the socket handling is blocking. The DMA
itself is :class:`ndmpd.dma.agent.Agent`.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any

from ndmpd.dma.errors import NdmpReplyError, checked
from ndmpd.dma.messages import MessageCodec, auth_data
from ndmpd.wire import C, REQUEST
from ndmpd.wire.message import Header, unpack_header
from ndmpd.wire.records import RecordReader

__all__ = ["NdmpClient", "NdmpReplyError"]


class NdmpClient:
    """Connects, negotiates ``version``; then :meth:`login`, :meth:`call` and :meth:`wait_post`."""

    max_fragment: int | None = None          # record fragments as sent (None: one per record)

    def __init__(self, host: str, port: int = 10000, version: int = 4, timeout: float = 60.0,
                 source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = RecordReader(1 << 30)
        self.posts: deque[tuple[int, Any]] = deque()
        self._pending: deque[bytes] = deque()
        self.sequence = 0
        self.codec = MessageCodec(4)
        greeting = self._receive()
        if greeting[0].message_code != C.NOTIFY_CONNECTION_STATUS:
            raise ConnectionError("no NDMP greeting")
        self.call("CONNECT_OPEN", protocol_version=version)
        self.codec.set_version(version)

    @property
    def version(self) -> int:
        return self.codec.version

    def close(self) -> None:
        try:
            self._send("CONNECT_CLOSE", {})
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "NdmpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def login(self, user: str, password: str, method: str = "md5") -> None:
        challenge = b""
        if method == "md5":
            challenge = bytes(self.call("CONFIG_GET_AUTH_ATTR", auth_type=C.AUTH_MD5).server_attr.challenge)
        self.call("CONNECT_CLIENT_AUTH", auth_data=auth_data(method, user, password, challenge))

    # --------------------------------------------------------------- wire

    def _send(self, message: str, fields: dict[str, Any]) -> None:
        self.sequence += 1
        self._write(self.codec.request(message, self.sequence, fields, self.max_fragment))

    def _write(self, wire: bytes) -> None:
        self.sock.sendall(wire)

    def _receive(self) -> tuple[Header, bytes]:
        """The next complete message from the server."""
        while not self._pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self._pending.extend(self.reader.feed(data))
        record = self._pending.popleft()
        return unpack_header(record), record

    def call(self, message: str, /, **fields: Any) -> Any:
        """Send request ``message`` (e.g. "TAPE_OPEN") and return its reply body; errors raise."""
        self._send(message, fields)
        while True:
            header, record = self._receive()
            if header.message_type == REQUEST:
                self.posts.append((header.message_code, self.codec.decode(header, record)))
                continue
            if header.reply_sequence != self.sequence:
                continue
            return checked(message, header.error_code, lambda: self.codec.decode(header, record))

    def next_post(self, codes: set[int], timeout: float = 60.0) -> tuple[int, Any]:
        """The first post (in arrival order) whose code is in ``codes``, with its code."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (c, body) in enumerate(self.posts):
                if c in codes:
                    del self.posts[i]
                    return c, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no post {' or '.join(f'0x{c:x}' for c in sorted(codes))} within {timeout} s")
            self.sock.settimeout(left)
            try:
                header, record = self._receive()
            finally:
                self.sock.settimeout(None)
            if header.message_type == REQUEST:
                self.posts.append((header.message_code, self.codec.decode(header, record)))

    def wait_post(self, code: int, timeout: float = 60.0) -> Any:
        """The next post with message ``code`` (others stay queued), waiting up to ``timeout``."""
        return self.next_post({code}, timeout)[1]
