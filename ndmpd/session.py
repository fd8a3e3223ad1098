"""One NDMP control connection, sans-IO: records in, framed messages out.

The asyncio edge (server.py) feeds received bytes to :meth:`Session.receive_data` and
writes whatever :meth:`Session.data_to_send` returns; nothing here touches a socket, so
the whole protocol core runs in unit tests and fuzzers without a network.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from . import trace
from .context import ServerContext
from .errors import HeaderError, NdmpError
from .logtext import peer_text
from .services import Blocking
from .services.data import Data
from .services.mover import Mover
from .services.scsi import ScsiSlot
from .services.tape import TapeSlot
from .wire import C, REPLY, REQUEST, T, Protocol, Translator, XdrError, protocol
from .wire.message import Header, partial_header, unpack_header
from .wire.records import OversizedRecord, RecordReader, frame

log = logging.getLogger("ndmpd.session")

GREETING_TEXT = "ndmpd ready"
MAX_AUTH_FAILURES = 3
# Before authentication only CONNECT and CONFIG queries of a few hundred bytes are legal:
# an unauthenticated peer may make the session hold this much, not max_record_size.
PRE_AUTH_MAX_RECORD = 16 << 10
# v4 errors NDMPv2/v3 lack, as the error of theirs that means the same to a DMA of that version
OLDER_ERRORS = {C.CONNECT_ERR: C.IO_ERR, C.SEQUENCE_NUM_ERR: C.ILLEGAL_ARGS_ERR,
                C.READ_IN_PROGRESS_ERR: C.ILLEGAL_STATE_ERR, C.PRECONDITION_ERR: C.ILLEGAL_STATE_ERR,
                C.CLASS_NOT_SUPPORTED_ERR: C.NOT_SUPPORTED_ERR, C.VERSION_NOT_SUPPORTED_ERR: C.NOT_SUPPORTED_ERR,
                C.EXT_DUPL_CLASSES_ERR: C.ILLEGAL_ARGS_ERR, C.EXT_DANDN_ILLEGAL_ERR: C.ILLEGAL_STATE_ERR}


class Edge:
    """What a session needs from the I/O side. This default runs everything inline, for
    unit tests; the asyncio server supplies one that uses worker threads and the loop."""

    local_host = "127.0.0.1"        # the control connection's local address

    def run_blocking(self, work: Callable[[], Any], done: Callable[[Future], None]) -> None:
        """Run ``work`` where it may block; then call ``done(future)`` on the session's thread."""
        future: Future = Future()
        try:
            future.set_result(work())
        except BaseException as exc:   # handed to done(), which re-raises through result()
            future.set_exception(exc)
        done(future)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the session's thread (called from worker threads)."""
        fn()

    def when_drained(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the session's thread once unsent output is below the bound."""
        fn()

    def output_ready(self) -> None:
        """Queued output (a reply or post) should be sent now."""


class Session:
    """Protocol state of one control connection."""

    def __init__(self, ctx: ServerContext, peer: str = "?") -> None:
        self.ctx = ctx
        self.peer = peer
        self.offered_version = ctx.config.server.max_version
        self.version = self.offered_version
        self.version_locked = False
        self._reader = RecordReader(min(PRE_AUTH_MAX_RECORD, ctx.config.server.max_record_size))
        self._authenticated = False
        self.auth_user: str | None = None
        self.auth_failures = 0
        self.max_auth_failures = MAX_AUTH_FAILURES
        self.md5_challenge: bytes | None = None
        self.ext_list_set = False
        self.extensions: dict[int, int] = {}      # NDMPv4 extension class -> version selected
        self.data_tls: Any = None         # TLS data connections (services/tls_data.py), None: plain
        self.closed = False               # no more input is processed; close after flushing
        self._sequence = 0
        self._outbox: list[bytes] = []
        self._after_reply: Callable[[], None] | None = None
        self._busy = False                # a blocking reply is being computed
        self.messages_received = 0        # complete records: a peer is idle unless this grows
        self._tracing = False             # --log-level debug: trace this message and its reply
        self._backlog: deque[bytes | OversizedRecord] = deque()
        self.edge = Edge()
        self.wire_request: Any = None
        self.tape = TapeSlot()
        self.scsi = ScsiSlot()
        self.mover = Mover(self)
        self.data = Data(self)
        self.set_version(self.version)

    @property
    def authenticated(self) -> bool:
        """Has the peer authenticated? The record limit follows: small before, full after."""
        return self._authenticated

    @authenticated.setter
    def authenticated(self, value: bool) -> None:
        self._authenticated = value
        limit = self.ctx.config.server.max_record_size
        self._reader.max_record = limit if value else min(PRE_AUTH_MAX_RECORD, limit)

    # ------------------------------------------------------------------ output

    def set_version(self, version: int) -> None:
        """Speak ``version`` from now on (after CONNECT_OPEN's reply)."""
        self.version = version
        self.proto: Protocol = protocol(version)
        self.translator = Translator(self.proto)

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF or 1
        return self._sequence

    def _send(self, message_type: int, code: int, reply_to: int, error: int, body: bytes) -> int:
        sequence = self._next_sequence()
        header = Header(sequence, int(self.ctx.clock()), message_type, code, reply_to, error)
        self._outbox.append(frame(header.pack() + body))
        return sequence

    def _message_name(self, code: int) -> str:
        spec = self.proto.message(code)
        return spec.name if spec is not None else f"0x{code:x}"

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call, record-marked."""
        out = b"".join(self._outbox)
        self._outbox.clear()
        return out

    def post(self, code: int, body: Any) -> None:
        """Send a NOTIFY/LOG/FH post; ``body`` is in internal (v4) form."""
        sequence = self._send(REQUEST, code, 0, 0, self.encode_post(code, body))
        if trace.enabled():
            trace.post(self.peer, sequence, self._message_name(code), body)

    def post_soon(self, code: int, body: Any) -> None:
        """:meth:`post` from a worker thread: sent on the session's thread, in the order of
        the calls, ahead of a reply the worker returns after it (unless the session closed)."""
        def send() -> None:
            if not self.closed:
                self.post(code, body)
                self.edge.output_ready()
        self.edge.call_soon(send)

    def encode_post(self, code: int, body: Any) -> bytes:
        """A post's body on the wire (pure: worker threads call it too)."""
        return self.proto.encode_body(code, REQUEST, self.translator.from_internal(code, REQUEST, body))

    def post_encoded(self, code: int, body: bytes) -> None:
        """Send a post whose body is already encoded for this version (file history)."""
        sequence = self._send(REQUEST, code, 0, 0, body)
        if trace.enabled():
            self._trace_encoded_post(sequence, code, body)

    def _trace_encoded_post(self, sequence: int, code: int, body: bytes) -> None:
        """File history posts (many, large) by name only; others decoded back for their summary."""
        name = self._message_name(code)
        if name.startswith("FH_"):
            trace.post(self.peer, sequence, name, None, with_body=False)
            return
        try:
            decoded = self.proto.decode_body(code, REQUEST, body, 0)
        except (XdrError, KeyError):
            decoded = None
        trace.post(self.peer, sequence, name, decoded)

    def _post_connection_status(self, reason: int, version: int, text: str) -> None:
        self.post(C.NOTIFY_CONNECTION_STATUS, T.notify_connection_status_post(reason, version, text))

    def greet(self) -> None:
        """The server speaks first: NOTIFY_CONNECTION_STATUS(CONNECTED, highest version)."""
        self.ctx.metrics.session_started()
        self._post_connection_status(C.CONNECTED, self.offered_version, GREETING_TEXT)

    def refuse(self, reason: str) -> None:
        """Greet with REFUSED (e.g. too many sessions) and close."""
        self._post_connection_status(C.REFUSED, self.offered_version, reason)
        self.closed = True

    def _reply_header_error(self, request: Header, error: int) -> None:
        error = self._known_error(error)
        sequence = self._send(REPLY, request.message_code, request.sequence, error, b"")
        self._replied(request, sequence, error, None)

    def _replied(self, request: Header, sequence: int, error: int, body: Any) -> None:
        """Count and trace one reply sent (``error``: the header's, else the body's)."""
        code = request.message_code
        if error == C.NO_ERR and body is not None:
            error = getattr(body, "error", C.NO_ERR)
        if error != C.NO_ERR:
            self.ctx.metrics.error_reply(self.proto.error_name(error), code == C.CONNECT_CLIENT_AUTH)
        if self._tracing:
            trace.reply(self.peer, sequence, request.sequence, self._message_name(code),
                        self.proto.error_name(error), body)

    # ------------------------------------------------------------------- input

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; complete records are processed in order, at once unless a
        blocking reply is outstanding."""
        for record in self._reader.feed(data):
            if self.closed:
                return
            self.messages_received += 1
            if self._busy:
                self._backlog.append(record)
            else:
                self.receive_record(record)

    @property
    def busy(self) -> bool:
        """A reply is waiting on device I/O; the edge should stop reading meanwhile."""
        return self._busy

    @property
    def buffered(self) -> int:
        """Bytes held for incomplete input (bounded by the maximum record size)."""
        return self._reader.pending

    def receive_record(self, record: bytes | OversizedRecord) -> None:
        """Process one complete record (one message)."""
        self._tracing = trace.enabled()         # the one level check per message
        if isinstance(record, OversizedRecord):
            self._oversized(record)
            return
        try:
            header = unpack_header(record)
        except struct.error:
            sequence, code = partial_header(record)
            log.warning("%s: record of %d bytes is shorter than a header", self.peer, len(record))
            self._reply_header_error(Header(sequence, 0, REQUEST, code, 0, 0), C.XDR_DECODE_ERR)
            return
        if header.message_type == REPLY:
            log.warning("%s: unexpected reply to 0x%x ignored", self.peer, header.message_code)
            return
        if header.message_type != REQUEST:
            self._reply_header_error(header, C.XDR_DECODE_ERR)
            return
        self._dispatch(header, record)

    def _oversized(self, record: OversizedRecord) -> None:
        if self.authenticated:
            log.warning("%s: %d-byte message exceeds server.max_record_size %d; refused", self.peer,
                        record.length, self.ctx.config.server.max_record_size)
        else:
            log.warning("%s: %d-byte message before authentication exceeds %d bytes; refused", self.peer,
                        record.length, self._reader.max_record)
        try:
            header = unpack_header(record.head)
        except struct.error:
            return
        if header.message_type != REQUEST:
            return
        spec = self.proto.message(header.message_code)
        if spec is None or spec.post is not None:       # as _dispatch answers one of any size
            self._refuse(header, C.NOT_SUPPORTED_ERR, "not supported")
        elif spec.has_reply:
            self._reply(header, self._error_reply(header.message_code, C.ILLEGAL_ARGS_ERR))

    def _dispatch(self, header: Header, record: bytes) -> None:
        code = header.message_code
        if code != C.CONNECT_OPEN:
            self.version_locked = True
        spec = self.proto.message(code)
        handler = self.ctx.handlers.get(code)
        if code == C.CONNECT_CLOSE and spec is not None:
            log.info("%s: CONNECT_CLOSE", self.peer)
            if self._tracing:
                trace.request(self.peer, header.sequence, spec.name, None)
            self.closed = True
            return
        if spec is None or spec.post is not None or handler is None:
            log.info("%s: message 0x%x not supported in NDMPv%d", self.peer, code, self.version)
            self._refuse(header, C.NOT_SUPPORTED_ERR, "not supported")
            return
        if not handler.pre_auth and not self._authenticated:
            log.info("%s: %s before authentication refused", self.peer, spec.name)
            self._refuse(header, C.NOT_AUTHORIZED_ERR, "before authentication")
            return
        try:
            wire_request = self.proto.decode_body(code, REQUEST, record)
        except XdrError as exc:
            log.warning("%s: undecodable %s: %s", self.peer, spec.name, peer_text(exc))
            self._refuse(header, C.XDR_DECODE_ERR, "undecodable body")
            return
        if self._tracing:
            trace.request(self.peer, header.sequence, spec.name, wire_request)
        self.wire_request = wire_request      # fields only an older version has (v2's mover address)
        # translated inside _answer: a value that has no v4 form costs this request, not the session
        self._answer(header, spec.name,
                     lambda: handler.fn(self, self.translator.to_internal(code, REQUEST, wire_request)))

    def _answer(self, header: Header, name: str, produce: Callable[[], Any]) -> None:
        """Reply with what ``produce`` returns, or the error it raises (one place for both)."""
        code = header.message_code
        try:
            reply = produce()
            if isinstance(reply, Blocking):
                self._start_blocking(header, name, reply)
                return
        except NdmpError as exc:
            log.info("%s: %s -> %s %s", self.peer, name, self.proto.error_name(exc.code), peer_text(exc.message))
            reply = self._error_reply(code, exc.code)
        except HeaderError as exc:
            self._reply_header_error(header, exc.code)
            return
        except Exception:   # a bug must cost one request, never the session
            log.exception("%s: %s failed", self.peer, name)
            reply = self._error_reply(code, C.UNDEFINED_ERR)
        self._reply(header, reply)

    def _start_blocking(self, header: Header, name: str, blocking: Blocking) -> None:
        self._busy = True

        def done(future: Future) -> None:
            self._busy = False
            if not self.closed:
                self._answer(header, name, future.result)
            while self._backlog and not self._busy and not self.closed:
                self.receive_record(self._backlog.popleft())
            self.edge.output_ready()

        self.edge.run_blocking(blocking.work, done)

    def _refuse(self, header: Header, error: int, why: str) -> None:
        """Answer a request with a header error before its body is decoded."""
        if self._tracing:
            trace.refused(self.peer, header.sequence, header.message_code,
                          self._message_name(header.message_code), self.proto.error_name(error), why)
        self._reply_header_error(header, error)

    def _error_reply(self, code: int, error: int) -> Any:
        """A zero-valued reply body (internal form where one exists) carrying ``error``."""
        body = self.translator.new_internal_body(code, REPLY)
        body.error = error
        return body

    def _reply(self, header: Header, reply: Any) -> None:
        code = header.message_code
        try:
            wire = self.translator.from_internal(code, REPLY, reply)
            if wire is not reply and getattr(wire, "error", C.NO_ERR) not in self.proto.error_names:
                wire.error = self._known_error(wire.error)
            body = self.proto.encode_body(code, REPLY, wire)
        except XdrError as exc:
            log.error("%s: cannot encode reply to 0x%x: %s", self.peer, code, peer_text(exc))
            self._reply_header_error(header, C.XDR_ENCODE_ERR)
            return
        sequence = self._send(REPLY, code, header.sequence, C.NO_ERR, body)
        self._replied(header, sequence, C.NO_ERR, wire)
        if self._after_reply:
            action, self._after_reply = self._after_reply, None
            action()

    def _known_error(self, error: int) -> int:
        """``error`` as this version knows it: a v4-only error becomes its nearest older one."""
        if error in self.proto.error_names:
            return error
        return OLDER_ERRORS.get(error, C.UNDEFINED_ERR)

    def after_reply(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the current reply is queued (e.g. switch version after CONNECT_OPEN)."""
        self._after_reply = action

    def teardown(self) -> None:
        """The control connection is gone: stop the mover and give the tape back."""
        self.closed = True
        self.data.connection_lost()
        self.mover.connection_lost()
        self.tape.release(self)
        self.scsi.release(self)

    def shutdown(self, reason: str = "server shutting down") -> None:
        """Tell the peer the server is going away (v3/v4 NOTIFY SHUTDOWN) and stop reading."""
        if not self.closed:
            self._post_connection_status(C.SHUTDOWN, self.version, reason)
        self.closed = True
