"""``ndmp backup``: one backup of a volume to a drive, two-way (one host) or three-way.

The job opens the drive, sets the mover listening (LOCAL when data and tape are one
server, TCP on the tape host otherwise), connects the data server to it and starts the
backup with HIST on; FH posts go to the catalog. Every NOTIFY and a user's interrupt
arrive as events in one queue, and :meth:`BackupJob._decide` is the one place that says
what each means: done, keep waiting, change the cartridge, or abort both sides.

With a :class:`~ndmpd.dma.jobs.media.MediaLoader` (``--library``) the image may span
cartridges: at NOTIFY_MOVER_PAUSED(EOM) the job ends the tape file with a filemark,
has the loader put the next writable cartridge of the slot range in the drive, sets the
window to start at the pause's seek_position (the image offset of the first byte not yet on
tape; ndmpd and illumos retry the record that met EOM on the new tape) and continues. Each
cartridge's part becomes a Media row with its byte range. Without a next cartridge EOM is a
failure ("the medium is full"). An EOW pause (a window budget ran out) gets the next window on
the same tape.

Progress, the servers' log lines and the summary go to the ``reporter`` (see
``dma/progress.py``; ``jobs/watch.py`` polls the byte counts while the backup runs). A backup
that completes while a server logged a warning or an error (a file that vanished or changed
while read, a socket skipped...) is still ``done``; its result lists them in ``warnings``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...wire import C, T
from ..agent import Agent
from ..catalog import Catalog, Media, media_dict
from ..catalog_history import V2_UNIX_DIR, V2_UNIX_NODE, V2_UNIX_PATH
from ..errors import JobFailed, JobInterrupted, NdmpReplyError
from ..library import LibraryError
from ..smc import ScsiError
from ..tapes import open_drive, position_at_end_of_data
from . import steps
from .steps import STEP_TIMEOUT, constant_name
from .media import Loaded, MediaError, MediaLoader
from ..progress import NullReporter, Reporter
from .states import settle, with_trouble
from .watch import LogForwarder, ProgressWatcher

if TYPE_CHECKING:
    from .copy import CopyRequest

RECORD_SIZE = 64 * 1024
WINDOW_ALL = (1 << 64) - 1
FH_CODES = (C.FH_ADD_FILE, C.FH_ADD_DIR, C.FH_ADD_NODE)
V2_FH_CODES = (V2_UNIX_PATH, V2_UNIX_DIR, V2_UNIX_NODE)


class BackupFailed(JobFailed):
    """The backup ended without a complete image (the message is the one line for the user)."""


class BackupInterrupted(JobInterrupted):
    """The user stopped the backup (SIGINT/SIGTERM); both sides were aborted."""


@dataclass
class BackupRequest:
    """What to back up, where to, and how."""

    host_name: str
    volume: str
    drive: str
    butype: str = "tar"
    level: int = 0
    env: dict[str, str] = field(default_factory=dict)
    tape_host_name: str = ""          # how log lines name the tape host (default: its address)
    base_token: str | None = None       # BASE_DATE: the DUMP_DATE of the backup this one builds on
    base_backup: str | None = None      # that backup's catalog id


@dataclass
class BackupResult:
    id: str
    status: str
    bytes: int
    env: dict[str, str]
    file_number: int | None
    entries: int
    media: list[Media] = field(default_factory=list)     # where the image lies, in image order
    warnings: list[str] = field(default_factory=list)   # the servers' warning/error log lines
    seconds: float = 0.0


def backup_env(request: BackupRequest | CopyRequest) -> dict[str, str]:
    """The environment sent with DATA_START_BACKUP (a backup's, a copy's source's): the user's
    -E over our defaults."""
    env = {"FILESYSTEM": request.volume, "HIST": "y", "LEVEL": str(request.level)}
    if request.level == 0:
        env.setdefault("UPDATE", "y")
    if request.base_token:
        env["BASE_DATE"] = request.base_token
    env.update(request.env)
    return env


class BackupJob:
    """One backup between a data agent and a tape agent (the same object when two-way)."""

    def __init__(self, data: Agent, tape: Agent, catalog: Catalog, request: BackupRequest,
                 media: MediaLoader | None = None, reporter: Reporter | None = None) -> None:
        self.data, self.tape, self.catalog, self.request = data, tape, catalog, request
        self.reporter: Reporter = reporter or NullReporter()
        self.media = media                       # a library to change cartridges through, or None
        self.parts: list[Media] = []             # the cartridges written before the current one
        self.loaded: Loaded | None = None
        self.part_start = 0
        self.two_way = data is tape
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.logs: list[str] = []
        self.tape_error = ""            # the tape server's last error LOG_MESSAGE: why its mover halted
        self.data_halted: Any = None
        self.mover_halted: Any = None
        self.states: dict[str, str] = {}         # where the stop left DATA and MOVER (jobs/states.py)
        self.trouble: list[str] = []             # the sides the stop could not bring back to IDLE

    async def run(self) -> BackupResult:
        """Run to the end; BackupFailed / BackupInterrupted once the catalog says so."""
        req = self.request
        env = backup_env(req)
        began = time.monotonic()
        token = env.get("BASE_DATE")
        backup = self.catalog.begin_backup(host=req.host_name, volume=req.volume, butype=req.butype,
                                           level=req.level, base_token=token,
                                           base_backup=req.base_backup if token == req.base_token else None)
        recorder = self.catalog.history(backup.id).start()
        self._listen(recorder)
        logs = LogForwarder(self.reporter, {req.host_name: self.data, req.tape_host_name or self.tape.peer: self.tape})
        watcher = ProgressWatcher(self.reporter, data=self.data, mover=self.tape)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.events.put_nowait, ("interrupt", sig))
        file_number = None
        try:
            try:
                file_number = await self._start(env)
                watcher.start()
                outcome, reason = await self._wait_end()
            except (*steps.GONE, LibraryError, MediaError, ScsiError) as exc:   # refused, gone or silent
                outcome, reason, refused = "failed", str(exc) or type(exc).__name__, True
            else:
                refused = False
            await watcher.stop()
            if outcome != "done":
                await self._abort()
            data_bytes, server_env = await self._collect()
            try:
                await self._stop(outcome == "done")
            except steps.GONE as exc:
                if outcome == "done":             # the tape file not ended: not a backup to keep
                    outcome, reason = "failed", f"ending the tape file: {exc or type(exc).__name__}"
            if refused:                          # the posts sent ahead of the replies, handled
                await steps.delivered(self.data, self.tape)
            if refused and logs.errors:          # the server said why it refused: that is the reason
                reason = f"{logs.errors[-1]} ({reason})"
        finally:
            await watcher.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            entries, unstored = steps.finish_history(recorder, self.reporter, logs.warnings)
            logs.close()
            self.reporter.close()
        if unstored and outcome == "done":        # the catalog cannot find its files: not kept as done
            outcome, reason = "failed", unstored
        if self.trouble and outcome != "done":
            reason = with_trouble(reason, self.trouble)
        media = list(self.parts)
        if self.loaded is not None:
            media.append(self.loaded.media(self.part_start, data_bytes))
        elif file_number is not None and self.media is None:
            media.append(Media(label=req.drive, file_number=file_number, first_byte=0, last_byte=data_bytes))
        for part in media:
            self.catalog.add_media(backup.id, part)
        self.catalog.finish_backup(backup.id, outcome, bytes=data_bytes, env=server_env,
                                   dump_date=server_env.get("DUMP_DATE"),
                                   halt_reason=None if outcome == "done" else reason)
        result = BackupResult(backup.id, outcome, data_bytes, server_env, file_number, entries, media,
                              logs.warnings, round(time.monotonic() - began, 3))
        self.reporter.summary(self._summary(result, reason))
        if outcome == "interrupted":
            raise BackupInterrupted(f"backup {backup.id} interrupted")
        if outcome == "failed":
            raise BackupFailed(f"backup {backup.id} failed: {reason}")
        return result

    def _summary(self, result: BackupResult, reason: str) -> dict[str, Any]:
        req = self.request
        fields: dict[str, Any] = {
            "job": "backup", "id": result.id, "status": result.status, "bytes": result.bytes,
            "file_number": result.file_number, "entries": result.entries, "env": result.env,
            "host": req.host_name, "volume": req.volume, "drive": req.drive, "seconds": result.seconds,
            "level": req.level, "base": req.base_backup,
            "warnings": result.warnings, "media": [media_dict(m) for m in result.media],
            "states": dict(self.states)}
        if result.status != "done":
            fields["reason"] = reason
        return fields

    # ------------------------------------------------------------ steps

    def _listen(self, recorder: Any) -> None:
        for code in FH_CODES + V2_FH_CODES:         # undecoded: the recorder's worker reads them
            self.data.on_raw(code, recorder.post_raw)
        for agent in {id(self.data): self.data, id(self.tape): self.tape}.values():
            agent.on(C.LOG_MESSAGE, lambda body: self.logs.append(body.entry))
        self.tape.on(C.LOG_MESSAGE, self._tape_logged)
        self.data.on(C.NOTIFY_DATA_HALTED, lambda body: self.events.put_nowait(("data_halted", body)))
        self.tape.on(C.NOTIFY_MOVER_HALTED, lambda body: self.events.put_nowait(("mover_halted", body)))
        self.tape.on(C.NOTIFY_MOVER_PAUSED, lambda body: self.events.put_nowait(("mover_paused", body)))
        steps.lost_as_event(self.events, self.data, self.tape)

    async def _start(self, env: dict[str, str]) -> int | None:
        req = self.request
        if self.media is not None:
            self.loaded = await self.media.next_for_backup()
            if self.loaded is None:
                raise MediaError(f"no writable cartridge in the library's slots for {req.drive}")
            file_number: int | None = self.loaded.file_number
        else:
            await open_drive(self.tape, req.drive, C.TAPE_RDWR_MODE)
            file_number = await position_at_end_of_data(self.tape)
        await self.tape.call("MOVER_SET_RECORD_SIZE", len=RECORD_SIZE)
        # v4 sets the window in IDLE; v2/v3 movers (ndmjob's) want it in LISTEN, as their DMAs do
        early = self.tape.version >= 4
        if early:
            await self.tape.call("MOVER_SET_WINDOW", offset=0, length=WINDOW_ALL)
        kind = C.ADDR_LOCAL if self.two_way else C.ADDR_TCP
        listen = await self.tape.call("MOVER_LISTEN", mode=C.MOVER_MODE_READ, addr_type=kind)
        if not early:
            await self.tape.call("MOVER_SET_WINDOW", offset=0, length=WINDOW_ALL)
        addr = T.addr(addr_type=C.ADDR_LOCAL) if self.two_way else listen.connect_addr
        where = await steps.connect_data(self.data, addr)
        await self.data.call("DATA_START_BACKUP", butype_name=req.butype,
                             env=[T.pval(name=k, value=v) for k, v in env.items()], **where)
        return file_number

    async def _wait_end(self) -> tuple[str, str]:
        while True:
            kind, body = await steps.next_event(self.events, (
                steps.Side(self.data, "data", "data_halted"),
                steps.Side(self.tape, "mover", "mover_halted", "mover_paused")))
            verdict = self._decide(kind, body)
            if verdict is None:
                continue
            if verdict[0] == "change cartridge":
                verdict = await self._change_cartridge(body.seek_position)
            elif verdict[0] == "next window":
                verdict = await self._next_window(body.seek_position)
            if verdict is not None:
                return verdict

    def _decide(self, kind: str, body: Any) -> tuple[str, str] | None:
        """What one event means: (outcome, reason) to end the job, or None to keep waiting."""
        if kind == "interrupt":
            return "interrupted", f"interrupted by signal {signal.Signals(body).name}"
        if kind == "mover_paused":
            if body.reason == C.MOVER_PAUSE_EOM:
                if self.media is not None:
                    return "change cartridge", ""
                return "failed", f"the medium in {self.request.drive} is full (end of medium, no library to change it)"
            if body.reason == C.MOVER_PAUSE_EOW:
                return "next window", ""
            return "failed", f"the mover paused ({constant_name('MOVER_PAUSE', body.reason)})"
        if kind == "mover_halted":
            self.mover_halted = body
            if body.reason not in (C.MOVER_HALT_CONNECT_CLOSED,):
                name = constant_name("MOVER_HALT", body.reason)
                said = self.tape_error.removeprefix("mover halted: ")
                return "failed", f"the mover halted: {name}: {said}" if said else f"the mover halted: {name}"
            return self._both_halted()
        if kind == "data_halted":
            self.data_halted = body
            if body.reason != C.DATA_HALT_SUCCESSFUL:
                why = self.logs[-1] if self.logs else constant_name("DATA_HALT", body.reason)
                return "failed", f"the data server halted: {why}"
            return self._both_halted()
        return None

    def _tape_logged(self, body: Any) -> None:
        """The server sends its mover's halt reason as an error LOG_MESSAGE just before
        NOTIFY_MOVER_HALTED: keep the latest, so the job's reason is the device's own words."""
        if getattr(body, "log_type", C.LOG_ERROR) == C.LOG_ERROR:
            self.tape_error = body.entry

    def _both_halted(self) -> tuple[str, str] | None:
        if self.data_halted is not None and self.mover_halted is not None:
            return "done", ""
        return None

    async def _change_cartridge(self, offset: int) -> tuple[str, str] | None:
        """End this cartridge's part at image ``offset`` and continue on the next cartridge;
        (failed, why) when there is none."""
        assert self.media is not None and self.loaded is not None
        await steps.quietly(self.tape, "TAPE_MTIO", tape_op=C.MTIO_EOF, count=1)
        self.parts.append(self.loaded.media(self.part_start, offset))
        full = self.loaded
        self.loaded = None
        nxt = await self.media.next_for_backup()
        if nxt is None:
            return "failed", (f"the medium is full ({full.barcode or self.request.drive} at {offset} bytes), "
                              "no next cartridge in the library's slot range")
        self.loaded, self.part_start = nxt, offset
        self.reporter.log(self.request.tape_host_name or self.tape.peer, "normal",
                          f"continuing on {nxt.barcode or 'a cartridge without barcode'} (slot {nxt.slot}) "
                          f"at image byte {offset}")
        await self.tape.call("MOVER_SET_WINDOW", offset=offset, length=WINDOW_ALL)
        await self.tape.call("MOVER_CONTINUE")
        return None

    async def _next_window(self, offset: int) -> tuple[str, str] | None:
        await self.tape.call("MOVER_SET_WINDOW", offset=offset, length=WINDOW_ALL)
        await self.tape.call("MOVER_CONTINUE")
        return None

    async def _abort(self) -> None:
        """DATA_ABORT and MOVER_ABORT, each side left IDLE-able whatever state it was in."""
        await steps.abort([(self.data, "data"), (self.tape, "mover")])

    async def _stop_sides(self) -> None:
        """Each side from HALTED back to IDLE (DATA_STOP, MOVER_STOP)."""
        await steps.stop(self.data, "data")
        await steps.stop(self.tape, "mover")

    async def _collect(self) -> tuple[int, dict[str, str]]:
        state = await steps.quietly(self.data, "DATA_GET_STATE")
        reply = await steps.quietly(self.data, "DATA_GET_ENV")
        return (int(state.bytes_processed) if state else 0), ({p.name: p.value for p in reply.env} if reply else {})

    async def _stop(self, done: bool) -> None:
        """Both sides back to IDLE (checked on these sessions: :func:`settle`); on success a
        filemark ends the tape file; the drive closed."""
        await self._stop_sides()
        req = self.request
        self.states, self.trouble = await settle(
            {"data": (self.data, "data"), "mover": (self.tape, "mover")}, self.reporter,
            {"data": req.host_name, "mover": req.tape_host_name or self.tape.peer})
        if done:
            await self.tape.call("TAPE_MTIO", tape_op=C.MTIO_EOF, count=1, timeout=STEP_TIMEOUT)
        if self.media is not None:
            try:
                await self.media.release(unload=True)      # the cartridge back in its slot, the drive empty
            except (NdmpReplyError, LibraryError, ScsiError) as exc:
                self.logs.append(f"unloading the drive: {exc}")
        else:
            await steps.quietly(self.tape, "TAPE_CLOSE")
