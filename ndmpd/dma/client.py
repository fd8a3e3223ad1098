"""A blocking NDMP client: one control connection, requests by message name, posts queued.

Bodies are the internal (v4) form whatever version is spoken, so callers write one code
path; the client translates like the server does.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any

from ..wire import C, REQUEST, T, Translator, protocol
from ..wire.auth import md5_digest
from ..wire.message import Header, unpack_header
from ..wire.records import RecordReader, frame
from .errors import NdmpReplyError, checked

__all__ = ["NdmpClient", "NdmpReplyError"]


class NdmpClient:
    """Connects, negotiates ``version`` and authenticates; then :meth:`call` and :meth:`wait_post`."""

    def __init__(self, host: str, port: int = 10000, version: int = 4, timeout: float = 60.0,
                 source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = RecordReader(1 << 30)
        self.posts: deque[tuple[int, Any]] = deque()
        self._pending: deque[bytes] = deque()
        self.sequence = 0
        self.version = 4
        self._set_version(4)
        greeting = self._receive()
        if greeting[0].message_code != C.NOTIFY_CONNECTION_STATUS:
            raise ConnectionError("no NDMP greeting")
        self.posts.clear()
        self.call("CONNECT_OPEN", protocol_version=version)
        self._set_version(version)

    def _set_version(self, version: int) -> None:
        self.version = version
        self.proto = protocol(version)
        self.translator = Translator(self.proto)

    def close(self) -> None:
        try:
            self._send(C.CONNECT_CLOSE, None)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "NdmpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def login(self, user: str, password: str, method: str = "md5") -> None:
        if method == "md5":
            attr = self.call("CONFIG_GET_AUTH_ATTR", auth_type=C.AUTH_MD5)
            digest = md5_digest(password.encode(), attr.server_attr.challenge)
            data = T.auth_data(auth_type=C.AUTH_MD5, auth_md5=T.auth_md5(auth_id=user, auth_digest=digest))
        else:
            data = T.auth_data(auth_type=C.AUTH_TEXT, auth_text=T.auth_text(auth_id=user, auth_password=password))
        self.call("CONNECT_CLIENT_AUTH", auth_data=data)

    # --------------------------------------------------------------- wire

    def _send(self, code: int, body: Any) -> None:
        self.sequence += 1
        payload = b""
        if body is not None:
            payload = self.proto.encode_body(code, REQUEST, self.translator.from_internal(code, REQUEST, body))
        header = Header(self.sequence, int(time.time()), REQUEST, code, 0, 0)
        self.sock.sendall(frame(header.pack() + payload))

    def _receive(self) -> tuple[Header, bytes]:
        """The next complete message from the server."""
        while not self._pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self._pending.extend(self.reader.feed(data))
        record = self._pending.popleft()
        return unpack_header(record), record

    def _decode(self, header: Header, record: bytes) -> Any:
        body = self.proto.decode_body(header.message_code, header.message_type, record)
        return self.translator.to_internal(header.message_code, header.message_type, body)

    def call(self, message: str, /, **fields: Any) -> Any:
        """Send request ``message`` (e.g. "TAPE_OPEN") and return its reply body; errors raise."""
        spec = protocol(4).by_name.get(message) or self.proto.by_name[message]
        body = None
        if spec.request:
            body = self.translator.new_internal_body(spec.code, REQUEST)
            for name, value in fields.items():
                setattr(body, name, value)
        self._send(spec.code, body)
        while True:
            header, record = self._receive()
            if header.message_type == REQUEST:
                self.posts.append((header.message_code, self._decode(header, record)))
                continue
            if header.reply_sequence != self.sequence:
                continue
            return checked(message, header.error_code, lambda: self._decode(header, record))

    def wait_post(self, code: int, timeout: float = 60.0) -> Any:
        """The next post with message ``code`` (others stay queued), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (c, body) in enumerate(self.posts):
                if c == code:
                    del self.posts[i]
                    return body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no post 0x{code:x} within {timeout} s")
            self.sock.settimeout(left)
            try:
                header, record = self._receive()
            finally:
                self.sock.settimeout(None)
            if header.message_type == REQUEST:
                self.posts.append((header.message_code, self._decode(header, record)))
