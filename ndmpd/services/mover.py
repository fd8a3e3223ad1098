"""MOVER interface (v2/v3/v4): the state machine, windows, pauses and halts.

The legal requests per state are the table ``ALLOWED``; the byte pumping runs in a worker
thread (mover/pump.py) that sees the Mover only as a :class:`~ndmpd.mover.port.MoverPort`
and reports back through :meth:`Mover.pause` and :meth:`Mover.halt`.

MOVER_CONTINUE is answered only once the pump has taken its first step after resuming: it
moved a record, waits for a MOVER_READ, or paused/halted again. A pause the CONTINUE leads
straight into (a filemark still in the way) is thus posted *before* the reply, so a DMA
that latches one pending notification (Amanda's ndmlib does) can never mistake it for the
pause of the next part.
"""

from __future__ import annotations

import logging
import socket
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import NdmpError
from ..mover import addresses, pump
from ..mover.handoff import Handoff
from ..mover.port import Halted
from ..wire import C, T
from . import Blocking, HandlerTable, tls_data
from .log_post import log_post

if TYPE_CHECKING:
    from ..session import Session
    from ..tls.data import DataTls

log = logging.getLogger("ndmpd.mover")
HANDLERS = HandlerTable()

NOTICE_HOLD = 2.0      # seconds a halt notice waits at most for the LOCAL data side's (see halt)
IDLE, LISTEN, ACTIVE, PAUSED, HALTED = (C.MOVER_STATE_IDLE, C.MOVER_STATE_LISTEN, C.MOVER_STATE_ACTIVE,
                                        C.MOVER_STATE_PAUSED, C.MOVER_STATE_HALTED)
ALL_ONES = (1 << 64) - 1
DEFAULT_RECORD_SIZE = 10240
MAX_RECORD_SIZE = 16 << 20
ANY = frozenset({IDLE, LISTEN, ACTIVE, PAUSED, HALTED})

# request -> {version: states in which it is legal}; anything else is ILLEGAL_STATE_ERR
ALLOWED: dict[str, dict[int, frozenset[int]]] = {
    "LISTEN": {v: frozenset({IDLE}) for v in (2, 3, 4)},
    "CONNECT": {v: frozenset({IDLE}) for v in (3, 4)},
    "SET_RECORD_SIZE": {2: frozenset({IDLE, PAUSED}), 3: frozenset({IDLE, PAUSED}), 4: frozenset({IDLE})},
    "SET_WINDOW": {2: frozenset({IDLE, LISTEN, PAUSED}), 3: frozenset({IDLE, LISTEN, PAUSED}),
                   4: frozenset({IDLE, PAUSED})},
    "READ": {v: frozenset({LISTEN, ACTIVE, PAUSED}) for v in (2, 3, 4)},   # LISTEN: served once connected
    "CONTINUE": {v: frozenset({PAUSED}) for v in (2, 3, 4)},
    "ABORT": {v: frozenset({LISTEN, ACTIVE, PAUSED}) for v in (2, 3, 4)},
    "CLOSE": {v: frozenset({ACTIVE, PAUSED}) for v in (2, 3, 4)},
    "STOP": {v: frozenset({HALTED}) for v in (2, 3, 4)},
    "GET_STATE": {v: ANY for v in (2, 3, 4)},
}


MEDIUM_FULL = "the medium is full"
UNSAID_MEDIA_ERROR = "the tape reported a media error"     # a device that gave no reason
SETTLE_TIMEOUT = 2.0     # seconds a MOVER_CONTINUE reply waits for the pump's first step


class Mover:
    """One session's mover. Fields are shared with the pump thread under ``_cond``."""

    def __init__(self, session: "Session") -> None:
        self.session = session
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._data: socket.socket | None = None
        self._local_peer: socket.socket | None = None
        self.handoff: Handoff | None = None          # LOCAL: how a backup's buffers reach us
        self.record_size = DEFAULT_RECORD_SIZE
        self._reset()

    def _reset(self) -> None:
        self.state = IDLE
        self.mode = C.MOVER_MODE_NOACTION
        self.pause_reason = C.MOVER_PAUSE_NA
        self.halt_reason = C.MOVER_HALT_NA
        self.medium_end = ""           # why the medium ended the transfer ("" while it has not)
        self.record_num = 0
        self.bytes_moved = 0
        self.position = 0              # image offset of the next byte to write (backup)
        self.seek_position = 0
        self.bytes_left_to_read = 0
        self.window_offset = 0
        self.window_length = ALL_ONES
        self.head_record = 0           # image record number under the tape head (recover)
        self.address: object = T.addr(addr_type=C.ADDR_LOCAL)
        self._resuming = False         # CONTINUEd, and the pump has not taken a step since

    # ------------------------------------------------------------- shared with the pump

    @property
    def halted(self) -> bool:
        return self.state in (HALTED, IDLE)

    @property
    def window_end(self) -> int:
        if self.window_length >= ALL_ONES - self.window_offset:
            return ALL_ONES
        return self.window_offset + self.window_length

    @property
    def device(self):
        return self.session.tape.device

    @property
    def device_lock(self) -> threading.Lock:
        return self.session.tape.lock

    def owns_tape(self) -> bool:
        """While listening or moving data, the tape belongs to the mover."""
        return self.state in (LISTEN, ACTIVE)

    @contextmanager
    def tape(self) -> Iterator[Any]:
        """The device, for the pump's device calls: under the drive's lock and only while the
        mover still runs, so once it halts the DMA alone moves the tape (no late read-ahead
        or filemark undo lands after the DMA's own positioning)."""
        with self.device_lock:
            if self.halted:
                raise Halted
            yield self.device

    def _stepped(self) -> None:
        """The pump took its first step after a CONTINUE (moved data, waits for a MOVER_READ or
        paused again): wake the CONTINUE's reply (call under ``_cond``)."""
        if self._resuming:
            self._resuming = False
            self._cond.notify_all()

    def advanced(self, record_bytes: int, data_bytes: int, records: int = 1) -> None:
        with self._cond:
            self.position += record_bytes
            self.record_num += records
            self.bytes_moved += data_bytes
            self._stepped()

    def delivered(self, count: int) -> None:
        with self._cond:
            self.seek_position += count
            self.bytes_moved += count
            self.record_num = self.head_record
            if self.bytes_left_to_read != ALL_ONES:
                self.bytes_left_to_read -= count
            self._stepped()

    def wait_for_read(self, timeout: float) -> bool:
        """True once a MOVER_READ is outstanding; raises Halted when the mover stops."""
        with self._cond:
            if self.bytes_left_to_read == 0 and not self.halted:
                self._stepped()
                self._cond.wait(timeout)
            if self.halted:
                raise Halted
            return self.bytes_left_to_read > 0

    def pause(self, reason: int, peer_closed: Callable[[], bool] | None = None) -> None:
        """Enter PAUSED, tell the DMA, and wait for CONTINUE (raises Halted on abort/close).

        ``peer_closed`` (recover mode) is polled meanwhile: once the data side has hung up
        there is nothing left to continue, so the mover halts with CONNECT_CLOSED.
        """
        if reason == C.MOVER_PAUSE_EOW and self.session.version == 2:
            reason = C.MOVER_PAUSE_EOF     # v2 has no EOW: ndmjob takes EOF as end of window
        with self._cond:
            if self.halted:
                raise Halted
            self.state, self.pause_reason = PAUSED, reason
            seek = self.seek_position if self.mode == C.MOVER_MODE_WRITE else self.position
            self.seek_position = seek
            log.info("%s: mover paused (reason %d) at %d", self.session.peer, reason, seek)
            self._notify(C.NOTIFY_MOVER_PAUSED, T.notify_mover_paused_post(reason=reason, seek_position=seek))
            self._stepped()                # pausing again ends a CONTINUE's wait, after the notification
            while self.state == PAUSED:
                self._cond.wait(pump.IDLE_POLL if peer_closed else None)
                if self.state == PAUSED and peer_closed is not None and peer_closed():
                    self.halt(C.MOVER_HALT_CONNECT_CLOSED)
            if self.halted:
                raise Halted

    def ended_by_medium(self) -> str:
        """Why the tape ended this transfer ("the medium is full", a media error), or "":
        halted from an end-of-medium pause (no next tape) or paused there still."""
        with self._cond:
            if self.state == PAUSED and self.pause_reason == C.MOVER_PAUSE_EOM:
                return MEDIUM_FULL
            return self.medium_end

    def halt(self, reason: int, why: str = "") -> None:
        """Enter HALTED once (whoever comes first), wake the pump, tell the DMA.

        ``why`` (the device's or the failure's own words) goes to the DMA as one LOG_MESSAGE
        (LOG_LOG on v2) queued right before NOTIFY_MOVER_HALTED, so a DMA learns the true
        reason from the halt itself, not only "media error"; a media error always sends one.

        A halt that ends a job normally (CONNECT_CLOSED: a backup's stream stored, which the
        data side learns of next; a restore the DMA closes the mover of) with the data
        service of this session still ACTIVE at the other end of a LOCAL connection holds
        its notices for that side's NOTIFY_DATA_HALTED (at most NOTICE_HOLD): the DMA then
        finds both sides HALTED on the first halt notice, and the second comes after it.
        ndmjob, woken by one notice, reads both states, and before it shuts the job down
        waits for one more notice, up to 2 s when none comes: a third of its two-way backups
        and every two-way restore waited so. A mover that fails or is aborted is the cause
        of the job's end, not its consequence: its reason goes out at once, ahead of the
        data side's halt it brings about, so the DMA reports the mover's words."""
        media_error = reason == C.MOVER_HALT_MEDIA_ERROR
        if media_error and not why:
            why = UNSAID_MEDIA_ERROR
        if media_error and self.session.version < 4:
            reason = C.MOVER_HALT_INTERNAL_ERROR
        with self._cond:
            if self.state in (IDLE, HALTED):
                return
            moving = self.state in (ACTIVE, PAUSED)
            if self.state == PAUSED and self.pause_reason == C.MOVER_PAUSE_EOM:
                self.medium_end = MEDIUM_FULL
            elif media_error:
                self.medium_end = f"media error: {why}"
            handoff = self.handoff           # (read before HALTED: a pump that sees it forgets it)
            self.state, self.halt_reason, self.pause_reason = HALTED, reason, C.MOVER_PAUSE_NA
            self._cond.notify_all()
            log.info("%s: mover halted (reason %d), %d bytes moved", self.session.peer, reason, self.bytes_moved)
            if moving:
                self.session.ctx.metrics.mover_halted(self.mode, reason, self.bytes_moved)
            notices = [(C.NOTIFY_MOVER_HALTED, T.notify_mover_halted_post(reason=reason))]
            if why:
                notices.insert(0, log_post(self.session.version, f"mover halted: {why}", "error"))

            def post() -> None:
                for code, body in notices:
                    self._notify(code, body)
            ends_job = reason == C.MOVER_HALT_CONNECT_CLOSED
            if ends_job and handoff is not None and handoff.local \
                    and self.session.data.state == C.DATA_STATE_ACTIVE:
                handoff.after_data_halted(post, NOTICE_HOLD)
            else:
                post()                       # queued before any reply can show HALTED
        for sock in (self._data, self._local_peer):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _notify(self, code: int, body: object) -> None:
        self.session.post_soon(code, body)

    # ------------------------------------------------------------- requests

    def check(self, request: str) -> None:
        if self.state not in ALLOWED[request][self.session.version]:
            raise NdmpError(C.ILLEGAL_STATE_ERR, f"MOVER_{request} in state {self.state}")

    def _check_tape_for(self, mode: int) -> None:
        slot = self.session.tape
        if not slot.is_open:
            raise NdmpError(C.DEV_NOT_OPEN_ERR, "no tape open")
        if mode == C.MOVER_MODE_READ and not slot.writable:
            raise slot.write_refusal()
        if self.record_size > slot.max_block:
            raise NdmpError(C.ILLEGAL_ARGS_ERR, f"record size {self.record_size} exceeds the drive's max_block_size")

    def listen(self, mode: int, addr_type: int) -> object:
        self.check("LISTEN")
        if mode not in (C.MOVER_MODE_READ, C.MOVER_MODE_WRITE):
            raise NdmpError(C.ILLEGAL_ARGS_ERR, f"mover mode {mode}")
        if addr_type not in (C.ADDR_LOCAL, C.ADDR_TCP):
            raise NdmpError(C.ILLEGAL_ARGS_ERR, f"address type {addr_type}")
        self._check_tape_for(mode)
        if addr_type == C.ADDR_TCP:
            tls_data.for_tcp(self.session)        # PRECONDITION_ERR unless ready
            self._listener, self.address = addresses.open_data_listener(self.session.edge.local_host,
                                                                        self.session.version)
        else:
            self._data, self._local_peer = socket.socketpair()
            self.handoff = Handoff(local=True)
            self.address = addresses.to_ndmp(None)
        self.mode, self.state = mode, LISTEN
        if addr_type == C.ADDR_TCP:
            self._start(self._accept_then_run)
        log.info("%s: mover listening (%s)", self.session.peer, "TCP" if addr_type == C.ADDR_TCP else "LOCAL")
        return self.address

    def accept_local(self) -> tuple[socket.socket, Handoff]:
        """The data service's end of a LOCAL data connection; the mover becomes ACTIVE."""
        if self.state != LISTEN or self._local_peer is None or self.handoff is None:
            raise NdmpError(C.ILLEGAL_STATE_ERR, "mover is not listening for a LOCAL connection")
        peer, self._local_peer = self._local_peer, None
        self.state = ACTIVE
        self._start(self._run_connected)
        return peer, self.handoff

    def connect(self, mode: int, addr: object) -> Blocking:
        self.check("CONNECT")
        if mode not in (C.MOVER_MODE_READ, C.MOVER_MODE_WRITE):
            raise NdmpError(C.ILLEGAL_ARGS_ERR, f"mover mode {mode}")
        if addr.addr_type == C.ADDR_LOCAL:
            self._check_tape_for(mode)
            self._data, self.handoff = self.session.data.mover_end()   # ILLEGAL_STATE unless DATA listens LOCAL
            self.mode, self.state, self.address = mode, ACTIVE, addr
            self._start(self._run_connected)
            return T.mover_connect_reply(error=C.NO_ERR)
        endpoints = addresses.from_ndmp(addr)
        self._check_tape_for(mode)
        secure, handoff = self._receiving(tls_data.for_tcp(self.session), mode)

        def run() -> Any:
            sock = addresses.connect(endpoints, secure=secure)
            self._data, self.mode, self.state = sock, mode, ACTIVE
            self.handoff = handoff            # TLS backup: the relay hands over what it decrypts
            self.address = addr
            self._start(self._run_connected)
            return T.mover_connect_reply(error=C.NO_ERR)
        return Blocking(run)

    @staticmethod
    def _receiving(secure: DataTls | None, mode: int) -> tuple[DataTls | None, Handoff | None]:
        """A TLS data connection a backup arrives on hands its decrypted bytes to this mover
        (through the Handoff returned, as LOCAL does) instead of through a socket pair."""
        if mode != C.MOVER_MODE_READ:
            return secure, None
        return tls_data.handed(secure, receiving=True)

    def set_window(self, offset: int, length: int) -> None:
        self.check("SET_WINDOW")
        if offset % self.record_size:
            raise NdmpError(C.ILLEGAL_ARGS_ERR, f"window offset {offset} is not a multiple of {self.record_size}")
        with self._cond:
            self.window_offset, self.window_length = offset, length
            self.head_record = offset // self.record_size     # the tape head holds the window start
            if self.mode == C.MOVER_MODE_READ and self.state == PAUSED:
                self.position = max(self.position, offset)
            elif self.state == PAUSED and self.bytes_left_to_read and offset > self.seek_position:
                # a read in progress cannot be re-aimed (MOVER_READ is refused until it is done):
                # the DMA has bound the tape to a window past it, so the stream goes on there
                self.seek_position = offset

    def set_record_size(self, length: int) -> None:
        self.check("SET_RECORD_SIZE")
        if not 0 < length <= MAX_RECORD_SIZE:
            raise NdmpError(C.ILLEGAL_ARGS_ERR, f"record size {length}")
        self.record_size = length

    def read(self, offset: int, length: int) -> None:
        self.check("READ")
        if self.mode != C.MOVER_MODE_WRITE:
            raise NdmpError(C.ILLEGAL_STATE_ERR, "MOVER_READ needs a mover in WRITE mode")
        if length == 0:
            raise NdmpError(C.ILLEGAL_ARGS_ERR, "read length 0")
        with self._cond:
            if self.bytes_left_to_read:
                raise NdmpError(C.READ_IN_PROGRESS_ERR if self.session.version >= 4 else C.ILLEGAL_STATE_ERR,
                                f"{self.bytes_left_to_read} bytes of the last read are outstanding")
            self.seek_position, self.bytes_left_to_read = offset, length
            self._cond.notify_all()

    def resume(self) -> Blocking:
        """Leave PAUSED; the reply waits (off the loop) for the pump's first step, so a pause
        it runs straight back into is notified before the CONTINUE is answered."""
        self.check("CONTINUE")
        with self._cond:
            self.state, self.pause_reason = ACTIVE, C.MOVER_PAUSE_NA
            self._resuming = True
            self._cond.notify_all()

        def settled() -> Any:
            with self._cond:
                self._cond.wait_for(lambda: not self._resuming or self.state != ACTIVE, SETTLE_TIMEOUT)
                self._resuming = False
            return T.mover_continue_reply(error=C.NO_ERR)
        return Blocking(settled)

    def abort(self) -> None:
        self.check("ABORT")
        self.halt(C.MOVER_HALT_ABORTED)

    def close(self) -> None:
        self.check("CLOSE")
        self.halt(C.MOVER_HALT_CONNECT_CLOSED)

    def stop(self) -> None:
        self.check("STOP")
        self._join()
        self._close_sockets()
        with self._cond:
            self._reset()
        self.record_size = DEFAULT_RECORD_SIZE

    def connection_lost(self) -> None:
        """The control connection closed: stop everything, leave nothing running."""
        self.halt(C.MOVER_HALT_ABORTED)
        self._join()
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._data, self._listener, self._local_peer):
            if sock is not None:
                sock.close()
        if self.handoff is not None:
            self.handoff.close()
        self._data = self._listener = self._local_peer = self.handoff = None

    # ------------------------------------------------------------- thread

    def _start(self, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._guard, args=(target,), daemon=True,
                                        name=f"mover {self.session.peer}")
        self._thread.start()

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except Halted:
            pass
        except Exception as exc:
            log.exception("%s: mover failed", self.session.peer)
            self.halt(C.MOVER_HALT_INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._close_sockets()

    def _accept_then_run(self) -> None:
        listener = self._listener
        assert listener is not None
        try:
            secure, handoff = self._receiving(tls_data.for_tcp(self.session), self.mode)
            sock = addresses.accept(listener, lambda: self.halted, secure=secure)
        except OSError as exc:
            log.warning("%s: data connection accept failed: %s", self.session.peer, exc)
            self.halt(C.MOVER_HALT_CONNECT_ERROR)
            return
        if sock is None:
            return
        with self._cond:
            if self.halted:
                sock.close()
                return
            self._data, self.state = sock, ACTIVE
            self.handoff = handoff            # TLS backup: the relay hands over what it decrypts
        listener.close()
        self._listener = None
        self._run_connected()

    def _run_connected(self) -> None:
        sock = self._data
        assert sock is not None
        if self.mode == C.MOVER_MODE_READ and self.handoff is not None:
            pump.run_backup_handed(self, self.handoff)
        elif self.mode == C.MOVER_MODE_READ:
            pump.run_backup(self, sock)
        else:
            pump.run_recover(self, sock)

    def _join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
            if thread.is_alive():
                log.error("%s: mover thread did not stop", self.session.peer)
        self._thread = None

    def state_reply(self) -> object:
        with self._cond:              # a PAUSED state is never seen before its notification is queued
            return T.mover_get_state_reply(
                error=C.NO_ERR, mode=self.mode, state=self.state, pause_reason=self.pause_reason,
                halt_reason=self.halt_reason, record_size=self.record_size, record_num=self.record_num & 0xFFFFFFFF,
                bytes_moved=self.bytes_moved, seek_position=self.seek_position,
                bytes_left_to_read=self.bytes_left_to_read, window_offset=self.window_offset,
                window_length=self.window_length, data_connection_addr=self.address)


def _ok(reply_type: Callable[..., Any]) -> Any:
    return reply_type(error=C.NO_ERR)


@HANDLERS.on(C.MOVER_GET_STATE)
def mover_get_state(session: "Session", req: Any) -> Any:
    return session.mover.state_reply()


@HANDLERS.on(C.MOVER_LISTEN)
def mover_listen(session: "Session", req: Any) -> Any:
    address = session.mover.listen(req.mode, req.addr_type)
    return T.mover_listen_reply(error=C.NO_ERR, connect_addr=address)


@HANDLERS.on(C.MOVER_CONNECT)
def mover_connect(session: "Session", req: Any) -> Any:
    return session.mover.connect(req.mode, req.addr)


@HANDLERS.on(C.MOVER_SET_WINDOW)
def mover_set_window(session: "Session", req: Any) -> Any:
    session.mover.set_window(req.offset, req.length)
    return _ok(T.mover_set_window_reply)


@HANDLERS.on(C.MOVER_SET_RECORD_SIZE)
def mover_set_record_size(session: "Session", req: Any) -> Any:
    session.mover.set_record_size(req.len)
    return _ok(T.mover_set_record_size_reply)


@HANDLERS.on(C.MOVER_READ)
def mover_read(session: "Session", req: Any) -> Any:
    session.mover.read(req.offset, req.length)
    return _ok(T.mover_read_reply)


@HANDLERS.on(C.MOVER_CONTINUE)
def mover_continue(session: "Session", req: Any) -> Any:
    return session.mover.resume()


@HANDLERS.on(C.MOVER_ABORT)
def mover_abort(session: "Session", req: Any) -> Any:
    session.mover.abort()
    return _ok(T.mover_abort_reply)


@HANDLERS.on(C.MOVER_STOP)
def mover_stop(session: "Session", req: Any) -> Any:
    session.mover.stop()
    return _ok(T.mover_stop_reply)


@HANDLERS.on(C.MOVER_CLOSE)
def mover_close(session: "Session", req: Any) -> Any:
    session.mover.close()
    return _ok(T.mover_close_reply)
