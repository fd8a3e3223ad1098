"""Structure-aware NDMP inputs for fuzzing a whole session, and the checks every input must pass.

One generator serves both the hypothesis test (tests/test_fuzz_session.py, a short run in CI)
and the long run (benchmarks/fuzz_session.py): it draws through a :class:`Source`, which is
either hypothesis's ``data.draw`` or a seeded ``random.Random``.

An input is a list of records for one session: messages of every code of the negotiated
version (requests, posts, replies, unknown codes), bodies built from the ``.x`` layouts with
edge values, then sometimes mutated, and framed into random fragments, sometimes larger than
the session accepts. :func:`run_input` feeds them and checks what a DMA relies on: the
session never raises, answers every complete request exactly once with a well-formed reply,
and, when the stream is still in step, a valid request afterwards is still answered.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ndmpd.config import build
from ndmpd.context import ServerContext
from ndmpd.mover import addresses
from ndmpd.session import Edge, Session
from ndmpd.wire import REPLY, REQUEST, protocol
from ndmpd.wire.message import Header
from ndmpd.wire.records import LAST_FRAGMENT, RecordReader, frame
from ndmpd.wire.xdr_codec import Array, Bytes, Prim, Ref

MAX_RECORD = 65536
INT_EDGES = {"i": [0, 1, -1, 2, 3, 4, 0x7FFFFFFF, -0x80000000],
             "I": [0, 1, 2, 3, 4, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF],
             "q": [0, 1, -1, 1 << 32, (1 << 63) - 1, -(1 << 63)],
             "Q": [0, 1, 1 << 32, (1 << 63), (1 << 64) - 1]}
INT_RANGES = {"i": (-0x80000000, 0x7FFFFFFF), "I": (0, 0xFFFFFFFF), "q": (-(1 << 63), (1 << 63) - 1),
              "Q": (0, (1 << 64) - 1)}
STRINGS = ["", "vtape0", "/export/data", "ndmp", "secret", "tar", "dump", "/", ".", "..", "../../etc",
           "FILESYSTEM", "LEVEL", "HIST", "y", "n", "0", "1", "-1", "a\nb", "\x00", "\udcff\udcfe",
           "é/日本", "x" * 300, "/export/data/../..", "LOCAL", "TCP"]
LOOPBACK = 0x7F000001


class Source(Protocol):
    """Where the generator gets its choices from."""

    def int(self, lo: int, hi: int) -> int: ...
    def bytes(self, size: int) -> bytes: ...


class RandomSource:
    """Choices from a seeded ``random.Random`` (the long benchmark run)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def bytes(self, size: int) -> bytes:
        return self.rng.randbytes(size)


class DrawSource:
    """Choices from hypothesis (``st.data()``), so failures shrink."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def bytes(self, size: int) -> bytes:
        return self.data.draw(self.st.binary(min_size=size, max_size=size))


def pick(src: Source, items: list[Any]) -> Any:
    return items[src.int(0, len(items) - 1)]


class Generator:
    """Values of any XDR node of one protocol version, biased to edge cases."""

    def __init__(self, version: int) -> None:
        self.proto = protocol(version)
        self.codec = self.proto.codec

    def value(self, src: Source, node: Any, depth: int = 0, name: str = "") -> Any:
        if isinstance(node, Prim):
            if name in ("ip_addr",) and src.int(0, 1):
                return LOOPBACK
            roll = src.int(0, 9)
            if roll < 4:
                return pick(src, INT_EDGES[node.fmt])
            if roll < 8:
                return src.int(0, 12)          # enum members and small counts
            return src.int(*INT_RANGES[node.fmt])
        if isinstance(node, Bytes):
            if node.kind == "fixed":
                return src.bytes(node.size)
            limit = node.size if node.size is not None else 300
            if node.kind == "string":
                text = pick(src, STRINGS) if src.int(0, 3) else src.bytes(src.int(0, 40)).decode(
                    "utf-8", "surrogateescape")
                return text[:limit]
            return src.bytes(src.int(0, min(limit, 64)))
        if isinstance(node, Array):
            if node.fixed:
                count = node.size
            else:
                count = src.int(0, 0 if depth > 3 else min(4, node.size if node.size is not None else 4))
            return [self.value(src, node.elem, depth + 1) for _ in range(count)]
        return self.ref(src, node, depth)

    def ref(self, src: Source, node: Ref, depth: int) -> Any:
        cls = self.codec.classes[node.name]
        types = cls._xdr_types
        if node.kind == "struct":
            return cls(**{f: self.value(src, types[f], depth + 1, f) for f in cls._xdr_fields})
        union = self.codec.spec.unions[node.name]
        arms = [(cases, arm) for cases, arm in union.arms]
        if union.default is not None or not arms or not src.int(0, 5):
            discriminant, arm = src.int(-1, 20), union.default
        else:
            cases, arm = pick(src, arms)
            discriminant = pick(src, cases)
        fields = {union.discriminant.name: discriminant}
        if arm is not None and arm.name:
            fields[arm.name] = self.value(src, types[arm.name], depth + 1, arm.name)
        return cls(**fields)

    def message(self, src: Source, sequence: int) -> bytes:
        """One record: a header and a body of some message of this version, perhaps mutated."""
        specs = list(self.proto.messages.values())
        roll = src.int(0, 19)
        if roll == 0:
            code = src.int(0, 0xFFFF)
        else:
            code = pick(src, specs).code
        spec = self.proto.message(code)
        message_type = REQUEST if roll > 2 else pick(src, [REPLY, REQUEST, 2, -1, 0x7FFFFFFF])
        body = b""
        if spec is not None:
            kind = spec.request or spec.post if message_type != REPLY else spec.reply
            if kind and src.int(0, 9):
                value = self.value(src, Ref("union" if kind in self.codec.spec.unions else "struct", kind))
                try:
                    body = self.codec.encode(kind, value)
                except Exception:      # a value the layout cannot carry: send raw bytes instead
                    body = src.bytes(src.int(0, 64))
            elif src.int(0, 1):
                body = src.bytes(src.int(0, 64))
        record = bytearray(Header(sequence, src.int(0, 0xFFFFFFFF), message_type, code, 0,
                                  0 if src.int(0, 7) else src.int(0, 0x7FFFFFFF)).pack() + body)
        return bytes(mutate(src, record) if not src.int(0, 3) else record)


def mutate(src: Source, record: bytearray) -> bytearray:
    for _ in range(src.int(1, 4)):
        op = src.int(0, 3)
        if op == 0 and record:
            i = src.int(0, len(record) - 1)
            record[i] ^= src.int(1, 255)
        elif op == 1:
            del record[src.int(0, len(record)):]
        elif op == 2:
            record += src.bytes(src.int(1, 32))
        elif len(record) >= 4:
            i = src.int(0, len(record) // 4 - 1) * 4
            record[i:i + 4] = struct.pack(">I", pick(src, INT_EDGES["I"]))
    return record


def fragments(src: Source, record: bytes) -> bytes:
    """``record`` record-marked as one to four fragments of random sizes."""
    count = src.int(1, 4)
    if count == 1 or len(record) < 2:
        return frame(record)
    cuts = sorted({src.int(0, len(record) - 1) for _ in range(count - 1)})
    parts, start = [], 0
    for cut in cuts + [len(record)]:
        last = LAST_FRAGMENT if cut == len(record) else 0
        parts.append(struct.pack(">I", last | (cut - start)) + record[start:cut])
        start = cut
    return b"".join(parts)


def oversized(src: Source, record: bytes) -> bytes:
    """A record longer than the session accepts: the header, then filler past the limit."""
    size = MAX_RECORD + src.int(1, 4096)
    return frame(record[:24] + bytes(max(0, size - min(24, len(record)))))


@dataclass
class Input:
    """One fuzz case: the session's version and auth state, and what the peer sends."""

    version: int
    authenticated: bool
    locked: bool = True                                     # False: CONNECT_OPEN may still switch
    tape_open: bool = False                                 # vtape0 opened RDWR first (post-auth)
    deferred: bool = False                                  # device calls finish later (pipelining)
    flushes: list[bool] = field(default_factory=list)       # deferred: finish them after record i
    sequences: list[int] = field(default_factory=list)      # each record's header sequence (as read)
    records: list[bytes] = field(default_factory=list)     # as sent (framed)
    answers: list[int | None] = field(default_factory=list)  # sequence a reply must echo, or None
    garbage: bytes = b""                                    # raw bytes sent after the records


def draw_input(src: Source) -> Input:
    version = pick(src, [2, 3, 4])
    authenticated = bool(src.int(0, 1))
    case = Input(version, authenticated, locked=bool(src.int(0, 3)),
                 tape_open=authenticated and not src.int(0, 2), deferred=not src.int(0, 2))
    gen = Generator(version)
    for n in range(src.int(1, 5)):
        record = gen.message(src, n + 1)
        roll = src.int(0, 19)
        case.records.append(oversized(src, record) if roll == 0 else fragments(src, record))
        case.answers.append(_expects_reply(gen, record))
        case.flushes.append(not src.int(0, 2))
        case.sequences.append(struct.unpack_from(">I", record[:4].ljust(4, b"\0"))[0])
    if not src.int(0, 4):
        case.garbage = src.bytes(src.int(1, 64))
    return case


def _expects_reply(gen: Generator, record: bytes) -> int | None:
    if len(record) < 24:
        return None              # answered with XDR_DECODE_ERR as far as its header allows
    sequence, _, message_type, code = struct.unpack_from(">IIii", record)
    spec = gen.proto.message(code)
    if message_type != REQUEST:
        return None
    if spec is not None and not spec.has_reply:
        return None              # posts are refused, CONNECT_CLOSE closes
    return sequence


class DeferredEdge(Edge):
    """An edge whose blocking calls finish only when flushed, as a slow device's would: the
    requests a DMA pipelines meanwhile wait in the session's backlog."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Any]] = []

    def run_blocking(self, work, done) -> None:
        self.pending.append((work, done))

    def flush(self) -> None:
        while self.pending:
            work, done = self.pending.pop(0)
            Edge.run_blocking(self, work, done)


class Failure(AssertionError):
    """An input the session handled wrongly; the message says how."""


@dataclass
class Harness:
    """One server context reused across inputs; a fresh session per input."""

    ctx: ServerContext
    internal_errors: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path) -> "Harness":
        (directory / "vol").mkdir(parents=True, exist_ok=True)
        config = build({
            "server": {"listen": ["127.0.0.1:10000"], "state_dir": str(directory / "state"),
                       "auth": ["md5", "text", "none"], "max_record_size": MAX_RECORD},
            "user": [{"name": "ndmp", "password": "secret"}],
            "volume": [{"name": "/export/data", "path": str(directory / "vol"), "snapshot": "none"}],
            "tape": [{"name": "vtape0", "path": str(directory / "vtape0.img"), "capacity": "4MiB",
                      "max_block_size": "32KiB"}],
        }, "<fuzz>", directory)
        return cls(ServerContext(config))

    def run(self, case: Input) -> str:
        """Feed one input; raises :class:`Failure`; returns what happened (for counts)."""
        session = Session(self.ctx, "fuzz")
        edge = session.edge = DeferredEdge() if case.deferred else Edge()
        session.greet()
        if case.version != 4:
            session.set_version(case.version)
        session.version_locked = case.locked
        if case.authenticated:
            session.authenticated = True
        if case.tape_open:
            proto = protocol(case.version)
            spec = proto.by_name["TAPE_OPEN"]
            body = proto.codec.encode(spec.request, proto.codec.classes[spec.request](
                device="vtape0", mode=proto.const.TAPE_RDWR_MODE))
            session.receive_data(frame(Header(1, 1, REQUEST, spec.code, 0, 0).pack() + body))
            if isinstance(edge, DeferredEdge):
                edge.flush()
            if _replies(session.data_to_send(), case.version, case.version) != [1]:
                raise Failure("TAPE_OPEN vtape0 was not answered")
        session.data_to_send()
        try:
            if isinstance(edge, DeferredEdge):
                outcome = self._pipelined(session, edge, case)
            else:
                outcome = self._in_turn(session, case)
            if outcome == "closed":
                return outcome
            if case.garbage and not session.closed:     # after this the stream is out of step
                session.receive_data(case.garbage)
                _replies(session.data_to_send(), session.version, session.version)
                return "garbage"
            if not session.closed:
                self._still_works(session)
            return outcome
        finally:
            session.teardown()

    def _in_turn(self, session: Session, case: Input) -> str:
        """One record at a time: each request's reply must come at once."""
        for record, expected in zip(case.records, case.answers):
            if session.closed:
                return "closed"
            before = session.version
            session.receive_data(record)
            replies = _replies(session.data_to_send(), before, session.version)
            if session.closed:
                return "closed"
            if session.buffered > MAX_RECORD + 4096:
                raise Failure(f"{session.buffered} bytes buffered")
            if expected is not None:
                echoed = [r for r in replies if r == expected]
                if len(echoed) != 1:
                    raise Failure(f"request seq {expected} got {len(echoed)} replies ({replies})")
        return "answered"

    def _pipelined(self, session: Session, edge: "DeferredEdge", case: Input) -> str:
        """Records arrive while device calls are outstanding: all answered, in the end, once."""
        replies: list[int] = []
        for record, flush in zip(case.records, case.flushes):
            if session.closed:
                break
            before = session.version
            session.receive_data(record)
            if flush:
                edge.flush()
            replies += _replies(session.data_to_send(), before, session.version)
        edge.flush()
        replies += _replies(session.data_to_send(), session.version, session.version)
        if session.closed:
            return "closed"
        wanted = collections.Counter(a for a in case.answers if a is not None)
        got = collections.Counter(replies)
        for sequence, count in wanted.items():
            if got[sequence] < count:
                raise Failure(f"pipelined request seq {sequence} got {got[sequence]} of {count} replies")
        # replies come in request order (judged on sequences no other record of the input uses)
        unique = {q for q, n in collections.Counter(case.sequences).items() if n == 1 and q is not None}
        order = [a for a in case.answers if a in unique]
        if [r for r in replies if r in order] != order:
            raise Failure(f"pipelined replies out of order: {replies} for {order}")
        return "pipelined"

    def _still_works(self, session: Session) -> None:
        proto = protocol(session.version)
        if session.authenticated:
            name, body = "CONFIG_GET_HOST_INFO", b""
        else:                     # every version answers CONNECT_OPEN of the version in force
            name, body = "CONNECT_OPEN", struct.pack(">I", session.version)
        spec = proto.by_name[name]
        session.receive_data(frame(Header(0xABCDEF, 1, REQUEST, spec.code, 0, 0).pack() + body))
        if isinstance(session.edge, DeferredEdge):
            session.edge.flush()
        out = RecordReader(1 << 24).feed(session.data_to_send())
        answers = [r for r in out if struct.unpack_from(">iiI", r, 8)[0::2] == (REPLY, 0xABCDEF)]
        if session.closed:
            return
        if len(answers) != 1:
            raise Failure(f"{name} after the input got {len(answers)} replies")
        error = struct.unpack_from(">i", answers[0], 20)[0]
        body = proto.decode_body(spec.code, REPLY, answers[0]) if error == 0 else None
        if error or body.error:
            raise Failure(f"{name} after the input failed: header {error}, body {getattr(body, 'error', '-')}")


def _replies(out: bytes, version_before: int, version_after: int) -> list[int]:
    """Reply sequences in ``out``, after checking every message is well formed."""
    sequences = []
    for record in RecordReader(1 << 24).feed(out):
        if len(record) < 24:
            raise Failure(f"{len(record)}-byte message from the server")
        seq, ts, mtype, code, rseq, err = struct.unpack_from(">IIiiIi", record)
        if mtype not in (REQUEST, REPLY) or not 0 <= err <= 0xFF or ts <= 0:
            raise Failure(f"malformed header from the server: {mtype} {err} {ts}")
        if mtype == REPLY:
            sequences.append(rseq)
            if err == 0:
                for version in {version_before, version_after}:
                    try:
                        protocol(version).decode_body(code, REPLY, record)
                        break
                    except Exception:
                        continue
                else:
                    raise Failure(f"reply to 0x{code:x} does not decode")
    return sequences


class _InternalErrors(logging.Handler):
    """Counts tracebacks the session logged: a handler that crashed on its input."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.sink.append(f"{record.getMessage()}: {record.exc_info[1]!r}")


@contextlib.contextmanager
def sandboxed(harness: Harness) -> Iterator[None]:
    """Loopback only (data connections elsewhere are refused unsent), tracebacks counted."""
    real_connect = addresses.connect

    def loopback_only(endpoints, timeout=addresses.CONNECT_TIMEOUT, secure=None):
        if any(not ep.host.startswith("127.") and ep.host != "::1" for ep in endpoints):
            return real_connect([], timeout, secure)
        return real_connect(endpoints, min(timeout, 1.0), secure)
    handler = _InternalErrors(harness.internal_errors)
    logger = logging.getLogger("ndmpd")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.ERROR)
    addresses.connect = loopback_only
    try:
        yield
    finally:
        addresses.connect = real_connect
        logger.removeHandler(handler)
        logger.setLevel(old_level)
