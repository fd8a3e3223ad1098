"""DATA interface (v2/v3/v4): the state machine, data connections, and the job thread.

The legal requests per state are the table ``ALLOWED``. A job (backup, recover, listing)
runs on its own thread through ``data/jobs.py``; it reaches the DMA only through posts
queued on the session's thread, so file history, log messages and the final
NOTIFY_DATA_HALTED go out in order. An abort or a lost control connection sets the job's
cancel event and shuts the data socket down; the engine removes its snapshot on the way out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..context import Butype
from ..data import btrfs_jobs, jobs, replica_jobs
from ..data.env import EnvError, JobEnv, parse, volume_list
from ..data.places import PlaceError, resolve
from ..engine import report
from ..engine.dump import TAR_RECORD, DumpMeter
from ..engine.select import clean_path
from ..errors import NdmpError
from ..host import fs_usage
from ..logtext import peer_text
from ..mover import addresses
from ..mover.handoff import Handoff
from ..replica.state import ReplicaError
from ..snapshots.base import SnapshotError
from ..wire import REQUEST, C, T, protocol
from ..wire.translate import convert_struct
from . import Blocking, HandlerTable, tls_data
from .log_post import log_post

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger("ndmpd.data")
HANDLERS = HandlerTable()

IDLE, ACTIVE, HALTED, LISTEN, CONNECTED = (C.DATA_STATE_IDLE, C.DATA_STATE_ACTIVE, C.DATA_STATE_HALTED,
                                           C.DATA_STATE_LISTEN, C.DATA_STATE_CONNECTED)
ANY = frozenset({IDLE, ACTIVE, HALTED, LISTEN, CONNECTED})
START_STATES = {2: frozenset({IDLE}), 3: frozenset({CONNECTED, LISTEN}), 4: frozenset({CONNECTED, LISTEN})}
ALLOWED: dict[str, dict[int, frozenset[int]]] = {
    "LISTEN": {3: frozenset({IDLE}), 4: frozenset({IDLE})},
    "CONNECT": {3: frozenset({IDLE}), 4: frozenset({IDLE})},
    "START": START_STATES,
    "ABORT": {v: frozenset({LISTEN, CONNECTED, ACTIVE}) for v in (2, 3, 4)},
    "STOP": {v: frozenset({HALTED}) for v in (2, 3, 4)},
    "GET_ENV": {v: frozenset({ACTIVE, HALTED}) for v in (2, 3, 4)},
    "GET_STATE": {v: ANY for v in (2, 3, 4)},
}
ALL_ONES = (1 << 64) - 1
MESSAGE_LOG_LIMIT = 1024       # characters of one LOG_MESSAGE text kept in the server log (paths)
U32 = 0xFFFFFFFF

# attribute bits both butypes really have
_ATTRS = (C.BUTYPE_BACKUP_FILELIST | C.BUTYPE_RECOVER_FILELIST | C.BUTYPE_BACKUP_DIRECT | C.BUTYPE_RECOVER_DIRECT
          | C.BUTYPE_BACKUP_INCREMENTAL | C.BUTYPE_RECOVER_INCREMENTAL | C.BUTYPE_BACKUP_UTF8
          | C.BUTYPE_RECOVER_UTF8 | C.BUTYPE_RECOVER_FILEHIST)
_V2_NO_RECOVER_SSID = 0x10     # v2 attributes are "cannot" bits
_V2_IMAGE_ONLY = 0x1F          # v2: no file lists, no fh_info, no SSID recover
BUTYPES = (
    Butype("tar", (("HIST", "f"), ("LEVEL", "0"), ("UPDATE", "y"), ("DIRECT", "y"), ("SNAPSHOT", "auto")),
           _ATTRS | C.BUTYPE_BACKUP_FH_FILE | C.BUTYPE_RECOVER_FH_FILE, _V2_NO_RECOVER_SSID),
    Butype("dump", (("HIST", "d"), ("LEVEL", "0"), ("UPDATE", "y"), ("DIRECT", "y"), ("SNAPSHOT", "auto")),
           _ATTRS | C.BUTYPE_BACKUP_FH_DIR | C.BUTYPE_RECOVER_FH_DIR, _V2_NO_RECOVER_SSID),
    Butype("btrfs", (("HIST", "n"), ("LEVEL", "0"), ("UPDATE", "n")),          # btrfs send/receive images
           C.BUTYPE_BACKUP_INCREMENTAL | C.BUTYPE_RECOVER_INCREMENTAL, _V2_IMAGE_ONLY),
)
DEFAULT_HIST = {"tar": "f", "dump": "d", "btrfs": "n"}
# LOG_FILE: the engine's failure kinds as v4 recovery statuses and as v2/v3 errors (they have no
# "no space" or "no directory"; the log message's text says which it was)
_V4_RECOVERY = {
    report.PERMISSION: "RECOVERY_FAILED_PERMISSION", report.NOT_FOUND: "RECOVERY_FAILED_NOT_FOUND",
    report.NO_DIRECTORY: "RECOVERY_FAILED_NO_DIRECTORY", report.NO_SPACE: "RECOVERY_FAILED_IO_ERROR",
    report.IO_ERROR: "RECOVERY_FAILED_IO_ERROR", report.NO_MEMORY: "RECOVERY_FAILED_OUT_OF_MEMORY",
    report.EXISTS: "RECOVERY_FAILED_FILE_PATH_EXISTS", report.INVALID: "RECOVERY_FAILED_UNDEFINED_ERROR",
}
_V2_V3_ERROR = {
    report.PERMISSION: "PERMISSION_ERR", report.NOT_FOUND: "FILE_NOT_FOUND_ERR",
    report.NO_DIRECTORY: "FILE_NOT_FOUND_ERR", report.NO_SPACE: "IO_ERR", report.IO_ERROR: "IO_ERR",
    report.NO_MEMORY: "NO_MEM_ERR", report.EXISTS: "UNDEFINED_ERR", report.INVALID: "UNDEFINED_ERR",
}


@dataclass(frozen=True)
class Job:
    """What DATA_START runs on the job thread, and whether it needs the data connection
    (a hold's release does not: it halts without waiting for the peer)."""

    work: Callable[[socket.socket | None], jobs.Outcome]
    needs_connection: bool = True


def _backup_job(data: "Data", env: JobEnv, req: Any) -> Job:
    data.estimate = data._estimate(env)
    state_dir = Path(data.session.ctx.config.server.state_dir)
    journal = data.session.ctx.journals.get(env.volume.name) if env.volume is not None else None
    return Job(lambda sock: jobs.backup(data, env, sock, state_dir, data._handoff, journal))


def _release_job(data: "Data", env: JobEnv, req: Any) -> Job:
    state_dir = Path(data.session.ctx.config.server.state_dir)
    return Job(lambda sock: jobs.release(data, env, state_dir), needs_connection=False)


def _recover_job(data: "Data", env: JobEnv, req: Any) -> Job:
    wanted = data._wanted(env, req.nlist or [])
    return Job(lambda sock: jobs.recover(data, env, wanted, sock))


def _filehist_job(data: "Data", env: JobEnv, req: Any) -> Job:
    if env.butype == "btrfs":
        raise EnvError("butype btrfs images have no file history to list")
    return Job(lambda sock: jobs.recover_filehist(data, env, sock))


def _btrfs_backup_job(data: "Data", env: JobEnv, req: Any) -> Job:
    plan = btrfs_jobs.plan_backup(env, Path(data.session.ctx.config.server.state_dir))
    return Job(lambda sock: btrfs_jobs.backup(data, env, plan, sock, data._handoff),
               needs_connection=not plan.release)


def _btrfs_recover_job(data: "Data", env: JobEnv, req: Any) -> Job:
    nlist = req.nlist or []
    into = btrfs_jobs.plan_recover(env, [data._destination(e, "") for e in nlist], data.session.ctx.config.volumes)
    names = [e.original_path or str(into) for e in nlist]
    return Job(lambda sock: btrfs_jobs.recover(data, env, into, names, sock))


def _replica_recover_job(data: "Data", env: JobEnv, req: Any) -> Job:
    """A recover into a replica volume, checked now (refused with ILLEGAL_ARGS)."""
    try:
        plan = replica_jobs.plan(env, Path(data.session.ctx.config.server.state_dir))
    except (ReplicaError, SnapshotError) as exc:
        raise EnvError(str(exc)) from None
    return Job(lambda sock: replica_jobs.recover(data, plan, sock))


# Which job a DATA_START_* runs: the first entry whose test (operation, env) holds. Its planner
# runs at START (EnvError / PlaceError: ILLEGAL_ARGS with a LOG_MESSAGE) and returns the job.
JobPlanner = Callable[["Data", JobEnv, Any], Job]
JOB_TABLE: list[tuple[Callable[[int, JobEnv], bool], JobPlanner]] = [
    (lambda op, env: op == C.DATA_OP_RECOVER and replica_jobs.wants_replica(env), _replica_recover_job),
    (lambda op, env: op == C.DATA_OP_BACKUP and env.butype == "btrfs", _btrfs_backup_job),
    (lambda op, env: op == C.DATA_OP_RECOVER and env.butype == "btrfs", _btrfs_recover_job),
    (lambda op, env: op == C.DATA_OP_BACKUP and env.release, _release_job),
    (lambda op, env: op == C.DATA_OP_BACKUP, _backup_job),
    (lambda op, env: op == C.DATA_OP_RECOVER, _recover_job),
    (lambda op, env: True, _filehist_job),
]


class Data:
    """One session's data service."""

    def __init__(self, session: "Session") -> None:
        self.session = session
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._sock: socket.socket | None = None
        self._mover_end: socket.socket | None = None     # LOCAL listen: the end the mover takes
        self._handoff: Handoff | None = None             # LOCAL: a backup's buffers go to the mover here
        self._reset()

    def _reset(self) -> None:
        self.state = IDLE
        self.operation = C.DATA_OP_NOACTION
        self.halt_reason = C.DATA_HALT_NA
        self.bytes_processed = 0
        self.meter: DumpMeter | None = None               # a backup's live byte count
        self.estimate: int | None = None
        self.started = 0.0
        self.read_offset = self.read_length = 0
        self.address: object = T.addr(addr_type=C.ADDR_LOCAL)
        self.env_out: list[tuple[str, str]] = []
        self.cancel = threading.Event()

    @property
    def version(self) -> int:
        return self.session.version

    def check(self, request: str) -> None:
        allowed = ALLOWED[request].get(self.version)
        if allowed is None or self.state not in allowed:
            raise NdmpError(C.ILLEGAL_STATE_ERR, f"DATA_{request} in state {self.state}")

    # -- data connection ---------------------------------------------------------------

    def listen(self, addr_type: int) -> object:
        self.check("LISTEN")
        if addr_type == C.ADDR_TCP:
            tls_data.for_tcp(self.session)        # PRECONDITION_ERR unless ready
            self._listener, self.address = addresses.open_data_listener(self.session.edge.local_host,
                                                                        self.version)
        elif addr_type == C.ADDR_LOCAL:
            self._sock, self._mover_end = socket.socketpair()
            self._handoff = Handoff(local=True)
            self.address = addresses.to_ndmp(None)
        else:
            raise NdmpError(C.ILLEGAL_ARGS_ERR, f"address type {addr_type}")
        self.state = LISTEN
        return self.address

    def mover_end(self) -> tuple[socket.socket, Handoff]:
        """The mover's end of a LOCAL data connection this service listens for (MOVER_CONNECT LOCAL)."""
        if self.state != LISTEN or self._mover_end is None or self._handoff is None:
            raise NdmpError(C.ILLEGAL_STATE_ERR, "the data service is not listening for a LOCAL connection")
        end, self._mover_end = self._mover_end, None
        self.state = CONNECTED
        return end, self._handoff

    def connect(self, addr: Any) -> Any:
        self.check("CONNECT")
        if addr.addr_type == C.ADDR_LOCAL:
            self._sock, self._handoff = self.session.mover.accept_local()
            self.address = addr
            self.state = CONNECTED
            return T.data_connect_reply(error=C.NO_ERR)
        endpoints = addresses.from_ndmp(addr)
        secure, handoff = tls_data.handed(tls_data.for_tcp(self.session), receiving=False)

        def run() -> Any:
            self._sock = addresses.connect(endpoints, secure=secure)
            self._handoff = handoff           # TLS: a backup's buffers go to the relay here
            self.address, self.state = addr, CONNECTED
            return T.data_connect_reply(error=C.NO_ERR)
        return Blocking(run)

    def _v2_connect(self, v2_addr: Any) -> None:
        """v2 has no DATA_CONNECT: the mover address comes with DATA_START_*."""
        addr = convert_struct(v2_addr, T.addr, protocol(4).codec.classes)
        if addr.addr_type == C.ADDR_LOCAL:
            self._sock, self._handoff = self.session.mover.accept_local()
        else:
            self._sock = addresses.connect(addresses.from_ndmp(addr))
        self.address = addr

    def _connected_socket(self) -> socket.socket:
        """The data socket, waiting for the peer when still listening on TCP."""
        if self._sock is None and self._listener is not None:
            secure, handoff = tls_data.handed(tls_data.for_tcp(self.session), receiving=False)
            self._sock = addresses.accept(self._listener, self.cancel.is_set, secure=secure)
            self._handoff = handoff if self._sock is not None else None
            self._listener.close()
            self._listener = None
        if self._sock is None:
            raise ConnectionError("no data connection")
        return self._sock

    # -- jobs ----------------------------------------------------------------------------

    def start(self, operation: int, req: Any, butype_name: str) -> Any:
        self.check("START")
        butype = next((b for b in self.session.ctx.butypes if b.name == butype_name), None)
        if butype is None:
            names = ", ".join(b.name for b in self.session.ctx.butypes)
            self._explain_refusal(f"unknown backup type {butype_name!r}; this server offers {names}")
            raise NdmpError(C.ILLEGAL_ARGS_ERR, f"butype {butype_name!r}")
        volumes = self.session.ctx.config.volumes
        pairs = [(p.name, p.value) for p in req.env or []]
        try:
            env = parse(pairs, butype.name, DEFAULT_HIST[butype.name], volumes,
                        need_volume=operation == C.DATA_OP_BACKUP, defaults=butype.default_env)
            planner = next(plan for matches, plan in JOB_TABLE if matches(operation, env))
            job = planner(self, env, req)
        except (EnvError, PlaceError) as exc:
            self._explain_refusal(str(exc))
            raise NdmpError(C.ILLEGAL_ARGS_ERR, str(exc)) from None
        if self.version == 2:
            self._v2_connect(self.session.wire_request.mover_addr)
        self.operation, self.state, self.started = operation, ACTIVE, time.monotonic()
        self.env_out = list(pairs)
        self._thread = threading.Thread(target=self._run, args=(job,), daemon=True,
                                        name=f"data {self.session.peer}")
        self._thread.start()

    def _wanted(self, env: JobEnv, nlist: list[Any]) -> list[jobs.Wanted]:
        """The nlist as (archive path, destination inside a volume, offset); empty: the whole image."""
        volumes = self.session.ctx.config.volumes
        default = env.prefix or (str(env.volume.path) if env.volume else "")
        if not nlist:
            if not default:
                raise EnvError(f"nowhere to restore: give PREFIX or FILESYSTEM; volumes: {volume_list(volumes)}")
            return [jobs.Wanted(default, b"", resolve(default, volumes), None)]
        wanted = []
        for entry in nlist:
            source = clean_path(entry.original_path.encode("utf-8", "surrogateescape"))
            destination = self._destination(entry, default)
            if not destination:
                raise EnvError(f"no destination for {entry.original_path!r}: give destination_path or PREFIX")
            fh = entry.fh_info
            wanted.append(jobs.Wanted(entry.original_path or destination, source, resolve(destination, volumes),
                                      None if fh in (0, ALL_ONES) else fh))
        roots = {w.place.volume.name for w in wanted}
        if len(roots) > 1:
            raise PlaceError(f"one restore writes into one volume; destinations span {', '.join(sorted(roots))}")
        return wanted

    def _destination(self, entry: Any, default: str) -> str:
        if self.version == 3:               # v3: destination_dir + (new_name or original_path)
            directory, new_name = entry.destination_path, entry.name
            tail = new_name or entry.original_path
            if directory:
                return directory.rstrip("/") + "/" + tail.lstrip("/")
            if new_name:
                return new_name
        elif entry.destination_path:
            return entry.destination_path
        if default and entry.original_path:
            return default.rstrip("/") + "/" + entry.original_path.lstrip("/")
        return default

    def _estimate(self, env: JobEnv) -> int | None:
        """A full dump of a volume that is its own filesystem is about its used space; else unknown."""
        if env.level or env.base_token or env.volume is None or not os.path.ismount(env.volume.path):
            return None
        try:
            return fs_usage(Path(env.volume.path)).used_size
        except OSError:
            return None

    def _run(self, job: Job) -> None:
        reason = C.DATA_HALT_INTERNAL_ERROR
        env: list[tuple[str, str]] | None = None
        why = summary = ""
        handoff = self._handoff              # (_close_sockets forgets it)
        try:
            outcome = job.work(self._connected_socket() if job.needs_connection else None)
            reason, env, why, summary = outcome.reason, outcome.env, outcome.why, outcome.summary
        except ConnectionError as exc:
            reason = C.DATA_HALT_ABORTED if self.cancel.is_set() else C.DATA_HALT_CONNECT_ERROR
            if not self.cancel.is_set():
                self.log_message(f"data connection failed: {exc}", "error")
        except Exception as exc:   # the job failed; say so and halt, never take the server down
            log.exception("%s: data job failed", self.session.peer)
            self.log_message(f"data operation failed: {exc}", "error")
        finally:
            self._close_sockets()
        if summary and not self.cancel.is_set():
            self.log_message(summary)       # queued right before the halt: nothing comes between
        self._halted(reason, env, why, handoff)   # (ndmjob, seeing a LOG_MESSAGE after the mover
                                            # halted, looks at DATA_GET_STATE and, still ACTIVE, waits 2 s)

    def _halted(self, reason: int, env: list[tuple[str, str]] | None, why: str = "",
                handoff: Handoff | None = None) -> None:
        """HALTED on the session's thread, with NOTIFY_DATA_HALTED; the notices a LOCAL mover
        held for this one (Mover.halt) go out right after it."""
        if self.cancel.is_set() and reason == C.DATA_HALT_SUCCESSFUL:
            reason = C.DATA_HALT_ABORTED

        def apply() -> None:
            if env is not None:
                self.env_out = env
            if self.state != HALTED:
                self.state, self.halt_reason = HALTED, reason
                log.info("%s: data halted (reason %d), %d bytes%s", self.session.peer, reason, self.processed(),
                         f": {why}" if why else "")
                self.session.ctx.metrics.data_halted(self.operation, reason, self.processed())
                self._post_encoded_now(C.NOTIFY_DATA_HALTED, self._halted_post(reason, why))
            if handoff is not None:
                handoff.data_halted()
        self.session.edge.call_soon(apply)

    def _halted_post(self, reason: int, why: str) -> bytes:
        """NOTIFY_DATA_HALTED; v2 and v3 carry the reason as text too (v4 has LOG_MESSAGE only)."""
        if self.version == 4:
            return self.session.encode_post(C.NOTIFY_DATA_HALTED, T.notify_data_halted_post(reason=reason))
        proto = protocol(self.version)
        return proto.encode_body(C.NOTIFY_DATA_HALTED, REQUEST, proto.types.notify_data_halted_post(reason, why))

    def abort(self) -> None:
        self.check("ABORT")
        self.cancel.set()
        if self._thread is None:            # listening or connected, no job: halt here
            self._close_sockets()
            self.state, self.halt_reason = HALTED, C.DATA_HALT_ABORTED
            self.session.after_reply(lambda: self._post_now(
                C.NOTIFY_DATA_HALTED, T.notify_data_halted_post(reason=C.DATA_HALT_ABORTED)))
            return
        self._shutdown_socket()

    def stop(self) -> None:
        self.check("STOP")
        self._join()
        self._close_sockets()
        self._reset()

    def connection_lost(self) -> None:
        """The control connection is gone: stop the job and leave nothing behind."""
        self.cancel.set()
        self._shutdown_socket()
        self._join(timeout=60)
        self._close_sockets()

    def _join(self, timeout: float = 30) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("%s: data job did not stop", self.session.peer)
        self._thread = None

    def _shutdown_socket(self) -> None:
        if self._handoff is not None:
            self._handoff.close()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_sockets(self) -> None:
        for sock in (self._sock, self._listener, self._mover_end):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        if self._handoff is not None:
            self._handoff.close()
        self._sock = self._listener = self._mover_end = self._handoff = None

    # -- what jobs call (worker thread) ---------------------------------------------------

    def post(self, code: int, body: object) -> None:
        self.session.post_soon(code, body)

    def _post_now(self, code: int, body: object) -> None:
        self._post_encoded_now(code, self.session.encode_post(code, body))

    def _post_encoded_now(self, code: int, body: bytes) -> None:
        session = self.session
        if not session.closed:
            session.post_encoded(code, body)
            session.edge.output_ready()

    def post_encoded(self, code: int, body: bytes, on_sent: Callable[[], None]) -> None:
        """Send a post already encoded for this session's version; ``on_sent`` once the
        control connection has taken it."""
        def send() -> None:
            self._post_encoded_now(code, body)
            self.session.edge.when_drained(on_sent)
        self.session.edge.call_soon(send)

    def log_message(self, text: str, level: str = "normal") -> None:
        self._log_line(text, level)
        self.post(*log_post(self.version, text, level))

    def _explain_refusal(self, text: str) -> None:
        """Say why a request is refused, on the session's thread: the LOG_MESSAGE goes out
        now, ahead of the error reply it explains, so a DMA that has the reply has the reason
        too (posted through :meth:`post`, as a job's are, it would follow the reply)."""
        self._log_line(text, "error")
        self._post_now(*log_post(self.version, text, "error"))

    def _log_line(self, text: str, level: str) -> None:
        log.log(logging.WARNING if level in ("warning", "error") else logging.INFO, "%s: %s", self.session.peer,
                peer_text(text, MESSAGE_LOG_LIMIT))

    def log_file(self, name: str, ok: bool, why: str = "", kind: str = report.NOT_FOUND) -> None:
        """LOG_FILE for one nlist entry: the status (v4) or error (v2/v3) that matches ``kind``
        (engine/report.py), and a warning whose text names the cause."""
        if not ok:
            self.log_message(f"{name}: not restored: {why}", "warning")
        if self.version == 4:
            failed_as = _V4_RECOVERY.get(kind, "RECOVERY_FAILED_UNDEFINED_ERROR")
            status = C.RECOVERY_SUCCESSFUL if ok else getattr(C, failed_as)
            self.post(C.LOG_FILE, T.log_file_post(name=name, recovery_status=status))
            return
        proto = protocol(self.version)
        error = proto.const.NO_ERR if ok else getattr(proto.const, _V2_V3_ERROR.get(kind, "UNDEFINED_ERR"))
        body = proto.types.log_file_post(name, 0, error) if self.version == 2 else proto.types.log_file_post(name, error)
        self.post(C.LOG_FILE, body)

    def request_read(self, offset: int, length: int) -> None:
        self.read_offset, self.read_length = offset, length
        self.post(C.NOTIFY_DATA_READ, T.notify_data_read_post(offset=offset, length=length))

    def progress(self, processed: int) -> None:
        self.bytes_processed = processed

    def follow(self, meter: DumpMeter) -> None:
        """A backup's progress: read from ``meter`` whenever the DMA asks."""
        self.meter = meter

    def medium_end(self) -> str:
        """Why this session's mover ended the transfer at its medium, with how far it got; ""
        when it did not (or the mover is another agent's, which this side cannot see)."""
        mover = self.session.mover
        cause = mover.ended_by_medium()
        return f"{cause} after {mover.bytes_moved} bytes were written to it" if cause else ""

    def processed(self) -> int:
        """Bytes processed so far: the backup's live count, or what the job last reported."""
        meter = self.meter
        return max(self.bytes_processed, meter.processed()) if meter is not None else self.bytes_processed

    def _remaining(self, processed: int) -> int | None:
        """Estimated bytes still to come, None when unknown. A backup's is the larger of the
        volume's used bytes and what its walk has listed so far, less what went; while the
        dump runs, at least its last record is still to come (never 0 while work remains)."""
        meter = self.meter
        if meter is None:
            return None if self.estimate is None else max(0, self.estimate - processed)
        if meter.finished:
            return 0
        known = max(self.estimate or 0, meter.discovered())
        return max(known - processed, TAR_RECORD)

    # -- replies -----------------------------------------------------------------------

    def state_reply(self) -> Any:
        unsupported = C.DATA_STATE_EST_BYTES_REMAIN_UNS | C.DATA_STATE_EST_TIME_REMAIN_UNS
        seconds = 0
        processed = self.processed()
        remain = self._remaining(processed) if self.state == ACTIVE else None
        if remain is not None:
            elapsed = time.monotonic() - self.started
            unsupported = 0
            rate = processed / elapsed if elapsed > 1 and processed else 0
            seconds = int(remain / rate) if rate else 0
            if not rate:
                unsupported = C.DATA_STATE_EST_TIME_REMAIN_UNS
        return T.data_get_state_reply(
            unsupported=unsupported, error=C.NO_ERR, operation=self.operation, state=self.state,
            halt_reason=self.halt_reason, bytes_processed=processed, est_bytes_remain=remain or 0,
            est_time_remain=min(seconds, U32), data_connection_addr=self.address,
            read_offset=self.read_offset, read_length=self.read_length)


@HANDLERS.on(C.DATA_GET_STATE)
def data_get_state(session: "Session", req: Any) -> Any:
    return session.data.state_reply()


@HANDLERS.on(C.DATA_LISTEN)
def data_listen(session: "Session", req: Any) -> Any:
    address = session.data.listen(req.addr_type)
    return T.data_listen_reply(error=C.NO_ERR, connect_addr=address)


@HANDLERS.on(C.DATA_CONNECT)
def data_connect(session: "Session", req: Any) -> Any:
    return session.data.connect(req.addr)


@HANDLERS.on(C.DATA_START_BACKUP)
def data_start_backup(session: "Session", req: Any) -> Any:
    session.data.start(C.DATA_OP_BACKUP, req, req.butype_name)
    return T.data_start_backup_reply(error=C.NO_ERR)


@HANDLERS.on(C.DATA_START_RECOVER)
def data_start_recover(session: "Session", req: Any) -> Any:
    session.data.start(C.DATA_OP_RECOVER, req, req.butype_name)
    return T.data_start_recover_reply(error=C.NO_ERR)


@HANDLERS.on(C.DATA_START_RECOVER_FILEHIST)
def data_start_recover_filehist(session: "Session", req: Any) -> Any:
    session.data.start(C.DATA_OP_RECOVER_FILEHIST, req, req.butype_name)
    return T.data_start_recover_filehist_reply(error=C.NO_ERR)


@HANDLERS.on(C.DATA_ABORT)
def data_abort(session: "Session", req: Any) -> Any:
    session.data.abort()
    return T.data_abort_reply(error=C.NO_ERR)


@HANDLERS.on(C.DATA_STOP)
def data_stop(session: "Session", req: Any) -> Any:
    session.data.stop()
    return T.data_stop_reply(error=C.NO_ERR)


@HANDLERS.on(C.DATA_GET_ENV)
def data_get_env(session: "Session", req: Any) -> Any:
    session.data.check("GET_ENV")
    return T.data_get_env_reply(error=C.NO_ERR, env=[T.pval(name=k, value=v) for k, v in session.data.env_out])
