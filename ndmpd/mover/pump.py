"""The mover's worker thread: moves records between the data connection and the tape.

One thread per mover run, with blocking socket and device calls so the event loop never
waits on them. It holds one record buffer (``record_size`` bytes) and talks to the
session only through :class:`~.port.MoverPort`: pauses wait on its condition, halts end the
thread. Aborts from the session shut the socket down, which wakes any blocked call.
"""

from __future__ import annotations

import logging
import select
import socket

from ..devices.tape import EndOfData, EndOfMedium, FilemarkReached, Stop, TapeError
from ..wire import C
from .handoff import Handoff
from .port import Halted, MoverPort

log = logging.getLogger("ndmpd.mover")
IDLE_POLL = 0.25        # seconds between peer-closed checks while waiting for MOVER_READ
BATCH_BYTES = 1 << 20   # a backup receives up to this much before writing its records


def run_backup(mover: MoverPort, sock: socket.socket) -> None:
    """READ mode: bytes from the data connection become ``record_size`` tape records.

    Receives into a buffer of several records and writes every complete record it holds
    in one device call, so small records (ndmjob's 10 KiB) do not cost a system call and
    a trip through Python each."""
    size = mover.record_size
    capacity = size * max(1, BATCH_BYTES // size)
    buffer = bytearray(capacity)
    view = memoryview(buffer)
    fill = 0
    recv_into = sock.recv_into
    while True:
        try:
            n = recv_into(view[fill:], capacity - fill)
        except OSError as exc:
            if mover.halted:
                raise Halted from None
            log.warning("mover: data connection failed: %s", exc)
            mover.halt(C.MOVER_HALT_CONNECT_ERROR, _cut_of(sock))
            raise Halted from None
        if n == 0:
            _end_of_stream(mover, view[:size], fill)          # whole records never wait in the buffer
        fill += n
        if fill >= size:
            whole = fill - fill % size
            _write_records(mover, view[:whole], size)
            view[:fill - whole] = view[whole:fill]
            fill -= whole


def run_backup_handed(mover: MoverPort, handoff: Handoff) -> None:
    """READ mode over a LOCAL connection: records are written straight from the data
    service's buffers; only a record split between two buffers is copied."""
    size = mover.record_size
    carry = memoryview(bytearray(size))
    fill = 0
    while True:
        data = handoff.take()
        if data is None and handoff.cut:                  # a TLS stream cut short: never an end
            if not mover.halted:
                log.warning("mover: %s", handoff.cut)
                mover.halt(C.MOVER_HALT_CONNECT_ERROR, handoff.cut)
            raise Halted
        if data is None:                                  # the end, or the data side is gone
            _end_of_stream(mover, carry, fill, handoff)
        try:
            if fill:
                step = min(size - fill, len(data))
                carry[fill:fill + step] = data[:step]
                fill += step
                data = data[step:]
                if fill == size:
                    _write_records(mover, carry, size)
                    fill = 0
            whole = len(data) - len(data) % size
            _write_records(mover, data[:whole], size)
            rest = len(data) - whole
            carry[:rest] = data[whole:]
            fill += rest
        finally:
            handoff.release()


def _end_of_stream(mover: MoverPort, record: memoryview, fill: int, handoff: Handoff | None = None) -> None:
    """The data side closed: write the partial last ``record`` (``fill`` bytes of data,
    zero-padded), tell a LOCAL writer its stream is stored, and halt CONNECT_CLOSED; just
    leave if the mover was halted already (then the stream is not delivered)."""
    if mover.halted:
        raise Halted
    if fill:
        record[fill:] = bytes(len(record) - fill)
        _write_records(mover, record, len(record), fill)
    try:
        with mover.tape() as device:
            device.flush()                               # a write still in flight may yet fail
    except TapeError as exc:
        log.error("mover: tape write failed: %s", exc)
        mover.halt(C.MOVER_HALT_MEDIA_ERROR, f"tape write failed: {exc}")
        raise Halted from None
    mover.halt(C.MOVER_HALT_CONNECT_CLOSED)     # HALTED first: the data side, told next, halts
    if handoff is not None:                     # and posts its notice, and the mover's follows it
        handoff.finish()                        # (Mover.halt)
    raise Halted


def _write_records(mover: MoverPort, records: memoryview, size: int, data_bytes: int | None = None) -> None:
    """Write whole records, pausing at the end of the window and at end of medium.

    ``data_bytes`` is how much of a single padded last record is real data."""
    while records:
        if mover.position >= mover.window_end:
            mover.pause(C.MOVER_PAUSE_EOW)
            continue
        allowed = -(-(mover.window_end - mover.position) // size)        # records starting inside it
        batch = records[:allowed * size]
        try:
            with mover.tape() as device:
                written = device.write_records(batch, size)
        except EndOfMedium as exc:
            # the early warning and the physical end alike: the records before ``exc.written``
            # are on tape, nothing of the next one is, so pause EOM with it kept and retry after
            # CONTINUE (on the next tape, or in the zone); a DMA with no next tape aborts.
            # Never a halt, which would lose the records
            log.info("mover: %s", exc)
            if exc.written:
                moved = exc.written * size
                mover.advanced(moved, moved, exc.written)
                records = records[moved:]
            mover.pause(C.MOVER_PAUSE_EOM)
            continue
        except TapeError as exc:
            log.error("mover: tape write failed: %s", exc)
            mover.halt(C.MOVER_HALT_MEDIA_ERROR, f"tape write failed: {exc}")
            raise Halted from None
        moved = written * size
        mover.advanced(moved, moved if data_bytes is None else data_bytes, written)
        records = records[moved:]


def run_recover(mover: MoverPort, sock: socket.socket) -> None:
    """WRITE mode: serve MOVER_READ requests from tape records, seeking inside the window."""
    buffer = memoryview(bytearray(mover.record_size))
    while True:
        _wait_for_read(mover, sock)
        _serve_read(mover, sock, buffer)


def _wait_for_read(mover: MoverPort, sock: socket.socket) -> None:
    while not mover.wait_for_read(IDLE_POLL):
        if _hung_up(mover, sock):
            mover.halt(C.MOVER_HALT_CONNECT_CLOSED)
            raise Halted


def _cut_of(sock: socket.socket) -> str:
    """Why a TLS data connection's relay cut it (``RelayedSocket.cut``), or empty."""
    return getattr(sock, "cut", "")


def _hung_up(mover: MoverPort, sock: socket.socket) -> bool:
    """The data side is gone. A TLS stream cut short (no close_notify) halts the mover here
    with CONNECT_ERROR and says why: only a real end is CONNECT_CLOSED."""
    if not _peer_closed(sock):
        return False
    cut = _cut_of(sock)
    if cut:
        log.warning("mover: %s", cut)
        mover.halt(C.MOVER_HALT_CONNECT_ERROR, cut)
    return True


def _peer_closed(sock: socket.socket) -> bool:
    try:
        ready, _, _ = select.select([sock], [], [], 0)
        return bool(ready) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _serve_read(mover: MoverPort, sock: socket.socket, buffer: memoryview) -> None:
    size = len(buffer)

    def hung_up() -> bool:
        return _hung_up(mover, sock)
    while mover.bytes_left_to_read > 0:
        offset = mover.seek_position
        if not mover.window_offset <= offset < mover.window_end:
            mover.pause(C.MOVER_PAUSE_SEEK, hung_up)
            continue
        try:
            with mover.tape() as device:
                n, blocked = _read_image_record(mover, device, offset // size, buffer)
        except TapeError as exc:
            log.error("mover: tape read failed: %s", exc)
            mover.halt(C.MOVER_HALT_MEDIA_ERROR, f"tape read failed: {exc}")
            raise Halted from None
        if blocked:
            mover.pause(blocked, hung_up)
            continue
        skip = offset % size
        chunk = buffer[skip:n][:mover.bytes_left_to_read]
        if not chunk:
            mover.pause(C.MOVER_PAUSE_EOF, hung_up)            # a short record: the image ends here
            continue
        mover.delivered(len(chunk))       # before sending: once the peer has it, the next MOVER_READ may come
        try:
            sock.sendall(chunk)
        except OSError as exc:
            if not mover.halted:
                log.warning("mover: data connection failed: %s", exc)
                mover.halt(C.MOVER_HALT_CONNECT_ERROR, _cut_of(sock))
            raise Halted from None


# why the head cannot reach a record: a filemark ahead ends this tape file's part of the
# image (EOF, as ndmjob's tape agent says, and what Amanda takes as end of part); end of
# data is the end of the medium; a filemark or BOT behind means the image starts later (SEEK)
_BLOCKED_AHEAD = {Stop.FILEMARK: C.MOVER_PAUSE_EOF, Stop.EOD: C.MOVER_PAUSE_EOM}


def _read_image_record(mover: MoverPort, device, wanted: int, buffer: memoryview) -> tuple[int, int]:
    """With the tape held: move the head to image record ``wanted`` (FSR/BSR) and read it.

    Returns (bytes read, 0), or (0, pause reason) when a filemark, BOT or end of data is in
    the way; the head is then left on this side of a filemark, like NDMPv4 TAPE_READ."""
    delta = wanted - mover.head_record
    if delta:
        result = device.space_records(delta)
        moved = abs(delta) - result.resid
        mover.head_record += moved if delta > 0 else -moved
        if result.resid:
            if result.stop is Stop.FILEMARK:         # undo the crossing: stay on this tape file
                device.space_filemarks(-1 if delta > 0 else 1)
            return 0, _BLOCKED_AHEAD.get(result.stop, C.MOVER_PAUSE_SEEK) if delta > 0 else C.MOVER_PAUSE_SEEK
    try:
        n = device.read_record_into(buffer)
    except FilemarkReached:
        device.space_filemarks(-1)                   # stay in front of it, like NDMPv4
        return 0, C.MOVER_PAUSE_EOF
    except EndOfData:
        return 0, C.MOVER_PAUSE_EOM
    mover.head_record += 1
    return n, 0
