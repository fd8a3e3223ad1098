"""``ndmp restore``: one recover of a cataloged backup image into a directory of a data server.

Two-way (drive and data on one server, LOCAL mover) or three-way (the tape host's mover
listens on TCP in WRITE mode and feeds the data server, which may be another host than
the one backed up). The request is the whole image, or an nlist of paths (each to its own
destination, so a file can come back under a new name); with DAR the nlist carries the
catalog's fh_info and DIRECT=y, and the data server asks for just the byte ranges it needs.

Every NOTIFY and a user's interrupt arrive as events in one queue, and
:meth:`RecoverJob._decide` is the one place that says what each means: forward a
NOTIFY_DATA_READ as MOVER_READ, reposition on a SEEK pause (or at the end of one tape
file's part of the image), finish, or abort both sides.

Media: the image lies in one or more parts (catalog :class:`~ndmpd.dma.catalog.Media`, each a
tape file holding a byte range of the image). The job positions the drive on the part
holding the offset it needs. With a :class:`~ndmpd.dma.jobs.media.MediaLoader` (``--library``)
the loader puts each part's cartridge in the drive (the first one at the start, the next at
the end of a part or on a SEEK into another part) and the last one back in its slot at the
end; without one, a part on another cartridge fails the job saying which cartridge it needs.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ...wire import C, T
from ..agent import Agent
from ..catalog import Backup, Media
from ..errors import JobFailed, JobInterrupted, NdmpConnectionLost, NdmpReplyError
from ..library import LibraryError
from ..progress import NullReporter, Reporter
from ..smc import ScsiError
from ..tapes import open_drive, to_file
from . import steps
from .backup import RECORD_SIZE, WINDOW_ALL
from .steps import constant_name
from .media import MediaError, MediaLoader
from .states import settle, with_trouble
from .watch import LogForwarder, ProgressWatcher

ALL_ONES = (1 << 64) - 1
ERROR_LINE_WAIT = 1.0          # seconds a refusal waits for the server's LOG_MESSAGE
TICK = 1.0                     # longest time between the polls (DATA/MOVER_GET_STATE) the stall check reads
# Env the backup's DATA_GET_ENV returned that makes no sense to send back for a recover
_NOT_FOR_RECOVER = {"HIST", "UPDATE", "DIRECT", "SNAPSHOT"}
RECORD_SIZE_ENV = "NDMPD_RECORD_SIZE"   # ndmpd's data server: the mover's record size (its DAR read grid)


class RecoverFailed(JobFailed):
    """The recover did not restore what was asked (the message is the one line for the user)."""


class RecoverInterrupted(JobInterrupted):
    """The user stopped the recover (SIGINT/SIGTERM); both sides were aborted."""


@dataclass
class Selection:
    """One nlist entry: a path in the backup (``/dir/f``), where it goes on the data host,
    and its fh_info from the catalog (None: unknown, no DAR)."""

    source: str
    destination: str
    fh_info: int | None = None


@dataclass
class RecoverRequest:
    """What to restore (a whole image when ``paths`` is empty), from which drive, to where."""

    backup: Backup
    drive: str
    destination: str
    paths: list[Selection] = field(default_factory=list)
    direct: bool = False
    env: dict[str, str] = field(default_factory=dict)
    stall_timeout: float = 300.0     # seconds with no byte moved before the job gives up
    data_host_name: str = ""         # the hosts as the user named them (log lines); default: the peer address
    tape_host_name: str = ""


@dataclass
class RecoverResult:
    backup: str
    status: str
    bytes_moved: int           # what the mover sent from tape (MOVER_GET_STATE)
    bytes_processed: int       # what the data server took in (DATA_GET_STATE)
    image_bytes: int           # the image's size in the catalog
    direct: bool
    files: dict[str, bool]     # LOG_FILE outcomes by nlist name
    warnings: list[str] = field(default_factory=list)   # the servers' warning/error log lines
    seconds: float = 0.0
    cartridges: list[str] = field(default_factory=list)   # barcodes the loader put in the drive, in order


@dataclass
class _End:
    outcome: str
    reason: str = ""


@dataclass
class _Read:
    offset: int
    length: int


@dataclass
class _Reposition:
    offset: int


@dataclass
class _Close:
    """The image has no more bytes to give: close the data connection (MOVER_CLOSE)."""


def recover_env(request: RecoverRequest) -> dict[str, str]:
    """The env of DATA_START_RECOVER: what the server returned with the backup (so it knows
    its own image), DIRECT for DAR (with the mover's record size, so an ndmpd data server
    asks only for whole records: ndmjob's mover serves nothing else), then the user's -E."""
    env = {k: v for k, v in request.backup.env.items() if k not in _NOT_FOR_RECOVER}
    env.setdefault("FILESYSTEM", request.backup.volume)
    env["DIRECT"] = "y" if request.direct else "n"
    if request.direct:                   # ndmpd asks for whole records of this size: what any mover serves
        env[RECORD_SIZE_ENV] = str(RECORD_SIZE)
    env.update(request.env)
    return env


def nlist(request: RecoverRequest, version: int) -> list[Any]:
    """The nlist in the negotiated version's sense: v4 (and v2, whose entry has no name field)
    names the destination path, v3 its directory and the new name in it. A whole image is
    ``/`` to the destination directory."""
    wanted = request.paths or [Selection("/", request.destination)]
    out = []
    for item in wanted:
        source = item.source.lstrip("/") or "/"
        fh = item.fh_info if request.direct and item.fh_info is not None else ALL_ONES
        if version == 3 and item.destination != request.destination:
            directory, _, name = item.destination.rstrip("/").rpartition("/")
            directory = directory or "/"
        else:
            directory, name = item.destination, ""
        out.append(T.name(original_path=source, destination_path=directory, name=name, other_name="",
                          node=ALL_ONES, fh_info=fh))
    return out


class RecoverJob:
    """One recover between a data agent and a tape agent (the same object when two-way)."""

    def __init__(self, data: Agent, tape: Agent, request: RecoverRequest, *,
                 media: MediaLoader | None = None, reporter: Reporter | None = None) -> None:
        self.data, self.tape, self.request = data, tape, request
        self.media, self.reporter = media, reporter or NullReporter()
        self.two_way = data is tape
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.logs: LogForwarder | None = None
        self.files: dict[str, bool] = {}
        self.data_halted: Any = None
        self.mover_halted: Any = None
        self.read_asked: tuple[int, int] | None = None     # the last MOVER_READ sent (offset, length)
        self.parts = sorted(request.backup.media, key=lambda m: m.first_byte) or [Media(label=request.drive)]
        self.mounted: Media | None = None
        self.cartridges: list[str] = []
        self.opened = False
        self.progress = (0, 0)
        self.progress_at = time.monotonic()
        self.handlers: list[tuple[Agent, int, Any]] = []
        self._unlisten_lost: Callable[[], None] = lambda: None
        self.states: dict[str, str] = {}         # where the stop left DATA and MOVER (jobs/states.py)
        self.trouble: list[str] = []             # the sides the stop could not bring back to IDLE

    async def run(self) -> RecoverResult:
        """Run to the end; RecoverFailed / RecoverInterrupted with the one line for the user."""
        req = self.request
        began = time.monotonic()
        self._listen()
        logs = self.logs = LogForwarder(self.reporter, {req.data_host_name or self.data.peer: self.data,
                                                        req.tape_host_name or self.tape.peer: self.tape})
        reporter_interval = getattr(self.reporter, "interval", None)
        watcher = ProgressWatcher(self.reporter, data=self.data, mover=self.tape,
                                  interval=min(reporter_interval or TICK, TICK), by_mover=True,
                                  total=None if req.direct else req.backup.bytes or None,   # DAR reads a part
                                  on_sample=self._sampled)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.events.put_nowait, ("interrupt", sig))
        try:
            try:
                await self._start()
                watcher.start()
                end = await self._wait_end()
            except NdmpReplyError as exc:
                await self._error_line()
                end = _End("failed", self._why(str(exc)))
            except (RecoverFailed, MediaError, LibraryError, ScsiError) as exc:
                end = _End("failed", str(exc))
            except (NdmpConnectionLost, TimeoutError) as exc:     # a server gone, or silent
                end = _End("failed", self._why(str(exc) or type(exc).__name__))
            await watcher.stop()
            if end.outcome != "done":
                logs.close()                     # what the servers log now is the abort's echo, not news
                await self._abort()
            moved, processed = await self._collect()
            await self._stop()
        finally:
            await watcher.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self._unlisten()
            logs.close()
            self.reporter.close()
        if end.outcome == "done":
            missing = [name for name, ok in self.files.items() if not ok]
            if missing:
                end = _End("failed", f"not restored: {', '.join(missing)}" +
                           (f" ({logs.errors[-1]})" if logs.errors else ""))
        if self.trouble and end.outcome != "done":
            end = _End(end.outcome, with_trouble(end.reason, self.trouble))
        result = RecoverResult(req.backup.id, end.outcome, moved, processed, req.backup.bytes, req.direct,
                               dict(self.files), list(logs.warnings), round(time.monotonic() - began, 3),
                               list(self.cartridges))
        self.reporter.summary(self._summary(result, end.reason))
        if end.outcome == "interrupted":
            raise RecoverInterrupted(f"restore of {self.request.backup.id} interrupted")
        if end.outcome == "failed":
            raise RecoverFailed(f"restore of {self.request.backup.id} failed: {end.reason}")
        return result

    def _summary(self, result: RecoverResult, reason: str) -> dict[str, Any]:
        """The summary a reporter shows (the --json line keeps these field names)."""
        fields: dict[str, Any] = {
            "job": "restore", "id": result.backup, "backup": result.backup, "status": result.status,
            "destination": self.request.destination, "direct": result.direct, "bytes_moved": result.bytes_moved,
            "bytes_processed": result.bytes_processed, "image_bytes": result.image_bytes, "files": result.files,
            "seconds": result.seconds, "warnings": result.warnings, "cartridges": result.cartridges,
            "states": dict(self.states)}
        if result.status != "done":
            fields["reason"] = reason
        return fields

    # ------------------------------------------------------------ steps

    def _listen(self) -> None:
        def event(kind: str) -> Any:
            return lambda body: self.events.put_nowait((kind, body))
        self.handlers += [(self.data, C.LOG_FILE, self._log_file),
                          (self.data, C.NOTIFY_DATA_HALTED, event("data_halted")),
                          (self.data, C.NOTIFY_DATA_READ, event("data_read")),
                          (self.tape, C.NOTIFY_MOVER_HALTED, event("mover_halted")),
                          (self.tape, C.NOTIFY_MOVER_PAUSED, event("mover_paused"))]
        for agent, code, handler in self.handlers:
            agent.on(code, handler)
        self._unlisten_lost = steps.lost_as_event(self.events, self.data, self.tape)

    def _unlisten(self) -> None:
        """The agents may serve another job next: this one's handlers go."""
        for agent, code, handler in self.handlers:
            agent.off(code, handler)
        self._unlisten_lost()

    def _log_file(self, body: Any) -> None:
        status = getattr(body, "recovery_status", None)
        ok = (status == C.RECOVERY_SUCCESSFUL) if status is not None else getattr(body, "error", 1) == C.NO_ERR
        self.files["/" + body.name.lstrip("/")] = ok

    async def _start(self) -> None:
        req = self.request
        # the image's first part, also for DAR: ndmpd's data server reads the image's global header
        # (its labels: level, volume) before it seeks to the first fh_info; a server that seeks
        # straight there has the part holding it loaded at its first SEEK pause
        first = self.parts[0]
        if self.media is not None:
            await self._load(first)
        else:
            await open_drive(self.tape, req.drive, C.TAPE_READ_MODE)
            self.opened = True
        await self.tape.call("MOVER_SET_RECORD_SIZE", len=RECORD_SIZE)
        await self._mount(first)
        kind = C.ADDR_LOCAL if self.two_way else C.ADDR_TCP
        listen = await self.tape.call("MOVER_LISTEN", mode=C.MOVER_MODE_WRITE, addr_type=kind)
        addr = T.addr(addr_type=C.ADDR_LOCAL) if self.two_way else listen.connect_addr
        where = await steps.connect_data(self.data, addr)
        env = recover_env(req)
        await self.data.call("DATA_START_RECOVER", butype_name=req.backup.butype,
                             env=[T.pval(name=k, value=v) for k, v in env.items()],
                             nlist=nlist(req, self.data.version), **where)

    def _part_for(self, offset: int) -> Media | None:
        for part in self.parts:
            if part.first_byte <= offset and (part.last_byte is None or offset < part.last_byte):
                return part
        return None

    def _next_part(self) -> Media | None:
        if self.mounted is None:
            return None
        later = [p for p in self.parts if p.first_byte > self.mounted.first_byte]
        return later[0] if later else None

    async def _mount(self, part: Media) -> None:
        """The drive on ``part``'s tape file and the mover's window on its byte range (SET_WINDOW
        binds the window start to where the head is)."""
        if self.media is not None:
            if self.mounted is not None:              # _start loaded the first part already
                await self._load(part)
        else:
            if self.mounted is not None and _cartridge(part) != _cartridge(self.mounted):
                raise RecoverFailed(f"the image continues on cartridge {part.barcode or part.label or part.slot}"
                                    f" (bytes from {part.first_byte}); no library to load it (--library)")
            await to_file(self.tape, part.file_number)
        last = part is self.parts[-1] or part.last_byte is None
        length = WINDOW_ALL - part.first_byte if last else part.last_byte - part.first_byte
        await self.tape.call("MOVER_SET_WINDOW", offset=part.first_byte, length=length)
        self.mounted = part

    async def _load(self, part: Media) -> None:
        """The loader puts ``part``'s cartridge in the drive (unloading another), open and on its tape file."""
        assert self.media is not None
        await self.media.load_for(self.request.backup, part.first_byte)
        self.opened = self.media.is_open
        name = part.barcode or part.label or f"slot {part.slot}"
        if not self.cartridges or self.cartridges[-1] != name:
            self.cartridges.append(name)
            self.reporter.log(self.tape.peer, "normal", f"reading {name} (image bytes from {part.first_byte})")

    async def _wait_end(self) -> _End:
        while True:
            kind, body = await steps.next_event(self.events, (
                steps.Side(self.data, "data", "data_halted", reading="data_read_state"),
                steps.Side(self.tape, "mover", "mover_halted", "mover_paused")))
            step = self._decide(kind, body)
            if isinstance(step, _End):
                return step
            if isinstance(step, _Read):
                if kind == "data_read_state" and not await self._mover_idle_reader():
                    continue
                self.read_asked = (step.offset, step.length)
                await self.tape.call("MOVER_READ", offset=step.offset, length=step.length)
            elif isinstance(step, _Reposition):
                part = self._part_for(step.offset)
                if part is None:
                    return _End("failed", f"the image has no byte {step.offset} on the cataloged media")
                await self._mount(part)
                await self.tape.call("MOVER_CONTINUE")
            elif isinstance(step, _Close):
                await self.tape.call("MOVER_CLOSE")

    async def _mover_idle_reader(self) -> bool:
        """Whether the mover has no read outstanding (a read its state shows is being served
        is not to be asked for again, whatever the data server's state says it asked)."""
        state = await steps.quietly(self.tape, "MOVER_GET_STATE")
        return state is not None and not int(getattr(state, "bytes_left_to_read", 0))

    def _sampled(self, moved: int, processed: int, now: float) -> None:
        """The watcher's counts: a "stalled" event once nothing has moved for stall_timeout (a
        sample is not an event, so a quiet queue still means a NOTIFY post may be missing)."""
        if (moved, processed) != self.progress:
            self.progress, self.progress_at = (moved, processed), now
        elif now - self.progress_at > self.request.stall_timeout:
            self.progress_at = float("inf")          # said once
            self.events.put_nowait(("stalled", None))

    def _decide(self, kind: str, body: Any) -> _End | _Read | _Reposition | _Close | None:
        """What one event means: an end (outcome, reason), a step to take, or None to keep waiting."""
        if kind == "interrupt":
            return _End("interrupted", f"interrupted by signal {signal.Signals(body).name}")
        if kind == "stalled":
            hint = "; the tape agent may not serve direct access reads: try --no-direct" if self.request.direct else ""
            return _End("failed", f"nothing moved for {self.request.stall_timeout:g} s{hint}")
        if kind == "data_read":
            return _Read(body.offset, body.length)
        if kind == "data_read_state":           # the state's last read: new only if not yet answered
            new = (body.offset, body.length) != self.read_asked
            return _Read(body.offset, body.length) if new else None
        if kind == "mover_paused":
            if body.reason == C.MOVER_PAUSE_SEEK:
                return _Reposition(body.seek_position)
            if body.reason in (C.MOVER_PAUSE_EOF, C.MOVER_PAUSE_EOM, C.MOVER_PAUSE_EOW):
                following = self._next_part()
                if following is not None:                 # this tape file's part is over: the next one
                    return _Reposition(following.first_byte)
                return _Close()                           # the image ends here: the data server has it all
            return _End("failed", f"the mover paused ({constant_name('MOVER_PAUSE', body.reason)})")
        if kind == "mover_halted":
            self.mover_halted = body
            return None                                   # the data server's halt says how it went
        if kind == "data_halted":
            self.data_halted = body
            if body.reason == C.DATA_HALT_SUCCESSFUL:
                return _End("done")
            why = constant_name("DATA_HALT", body.reason)
            if self.mover_halted is not None and self.mover_halted.reason not in (C.MOVER_HALT_CONNECT_CLOSED,
                                                                                  C.MOVER_HALT_ABORTED):
                why = f"the mover halted: {constant_name('MOVER_HALT', self.mover_halted.reason)}"
            errors = self.logs.errors if self.logs is not None else []
            return _End("failed", f"the data server halted: {errors[-1] if errors else why}")
        return None

    async def _error_line(self) -> None:
        """The LOG_MESSAGE saying why a request was refused, so the user reads the reason
        rather than an error code: a refused DATA_START's comes ahead of its reply (delivered
        once the posts received are); another's may follow the reply, so it gets a moment."""
        if self.logs is None:
            return
        await steps.delivered(self.data, self.tape)
        if self.logs.errors:
            return
        try:
            async with asyncio.timeout(ERROR_LINE_WAIT):
                await self.logs.error_logged.wait()
        except asyncio.TimeoutError:
            pass

    def _why(self, fallback: str) -> str:
        """A refused request: the server's own error line says why better than the error code."""
        errors = self.logs.errors if self.logs is not None else []
        return f"{errors[-1]} ({fallback})" if errors else fallback

    async def _abort(self) -> None:
        """DATA_ABORT and MOVER_ABORT, each side left IDLE-able whatever state it was in."""
        await steps.abort([(self.data, "data"), (self.tape, "mover")])

    async def _collect(self) -> tuple[int, int]:
        mover = await steps.quietly(self.tape, "MOVER_GET_STATE")
        data = await steps.quietly(self.data, "DATA_GET_STATE")
        return (int(mover.bytes_moved) if mover else 0), (int(data.bytes_processed) if data else 0)

    async def _stop(self) -> None:
        """Both sides back to IDLE and the drive closed, however the recover ended."""
        if self.data_halted is None or self.mover_halted is None:
            await steps.quietly(self.tape, "MOVER_ABORT")   # the data side is done: the mover need not go on
        await steps.stop(self.data, "data")
        await steps.stop(self.tape, "mover")
        req = self.request
        self.states, self.trouble = await settle(
            {"data": (self.data, "data"), "mover": (self.tape, "mover")}, self.reporter,
            {"data": req.data_host_name or self.data.peer, "mover": req.tape_host_name or self.tape.peer})
        if self.media is not None:
            try:
                await self.media.release(unload=True)      # the cartridge back in its slot, the drive empty
            except (NdmpReplyError, LibraryError, ScsiError, TimeoutError) as exc:
                self.reporter.warning(f"unloading the drive: {exc}")
        elif self.opened:
            await steps.quietly(self.tape, "TAPE_CLOSE")


def _cartridge(part: Media) -> tuple[Any, ...]:
    return part.label, part.barcode, part.slot
