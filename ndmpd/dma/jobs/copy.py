"""``ndmp copy``: a volume of one server into a directory of another, data server to data
server, no tape (what NetApp's ndmpcopy does).

The destination's data server listens (DATA_LISTEN, TCP), the source's connects to it
(DATA_CONNECT), the destination starts recovering the whole image into the directory
(DATA_START_RECOVER with PREFIX) and the source starts the backup with HIST on, its FH posts
going to the catalog so it knows what was copied. An incremental copy sends the DUMP_DATE of
the copy it builds on as BASE_DATE, and the destination's restore of it replays deletions
and renames. Every NOTIFY_DATA_HALTED (of either side) and a user's interrupt arrive as events
in one queue, and :meth:`CopyJob._decide` is the one place that says what each means: done,
keep waiting, or abort both sides.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from ...wire import C, T
from ..agent import Agent
from ..catalog import Catalog, Media
from ..errors import JobFailed, JobInterrupted, NdmpConnectionLost, NdmpReplyError
from ..progress import NullReporter, Reporter
from . import steps
from .backup import FH_CODES, V2_FH_CODES, backup_env
from .steps import constant_name
from .states import settle, with_trouble
from .watch import LogForwarder, ProgressWatcher

WHY_WAITS = 20                      # x 25 ms: how long a refusal waits for the server's reason


class CopyFailed(JobFailed):
    """The copy did not complete (the message is the one line for the user)."""


class CopyInterrupted(JobInterrupted):
    """The user stopped the copy (SIGINT/SIGTERM); both data servers were aborted."""


@dataclass
class CopyRequest:
    """What to copy (source host:volume) to where (destination host:directory), and how."""

    source_host: str
    volume: str
    dest_host: str
    directory: str
    butype: str = "tar"
    level: int = 0
    env: dict[str, str] = field(default_factory=dict)     # the user's -E, for the source
    base_token: str | None = None                         # BASE_DATE: the DUMP_DATE of the copy built on
    base_backup: str | None = None                        # that copy's catalog id

    @property
    def destination(self) -> str:
        """``DST:DIR``, as the catalog records where the copy went."""
        return f"{self.dest_host}:{self.directory}"


@dataclass
class CopyResult:
    id: str
    status: str
    bytes: int                  # what the source sent (the image size)
    received: int               # what the destination read
    env: dict[str, str]
    entries: int
    warnings: list[str] = field(default_factory=list)   # the servers' warning/error lines (exit 3)
    seconds: float = 0.0


class CopyJob:
    """One data-to-data copy between a source and a destination data server (two agents)."""

    def __init__(self, source: Agent, dest: Agent, catalog: Catalog, request: CopyRequest,
                 reporter: Reporter | None = None) -> None:
        if source is dest:
            raise ValueError("a copy needs two connections (one per data server), even to one host")
        self.source, self.dest, self.catalog, self.request = source, dest, catalog, request
        self.reporter: Reporter = reporter if reporter is not None else NullReporter()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.logs: dict[str, LogForwarder] = {}
        self.halted: dict[str, Any] = {}
        self.states: dict[str, str] = {}         # where the stop left the two data servers (jobs/states.py)
        self.trouble: list[str] = []             # the sides the stop could not bring back to IDLE

    async def run(self) -> CopyResult:
        """Run to the end; CopyFailed / CopyInterrupted once the catalog says so."""
        req = self.request
        env = backup_env(req)        # the source's DATA_START_BACKUP: the same defaults
        began = time.monotonic()
        token = env.get("BASE_DATE")
        copy = self.catalog.begin_backup(host=req.source_host, volume=req.volume, butype=req.butype,
                                         level=req.level, base_token=token, kind="copy",
                                         destination=req.destination,
                                         base_backup=req.base_backup if token == req.base_token else None)
        recorder = self.catalog.history(copy.id).start()
        self._listen(recorder)
        watcher = ProgressWatcher(self.reporter, data=self.source)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.events.put_nowait, ("interrupt", sig))
        try:
            try:
                await self._start(env)
                watcher.start()
                outcome, reason = await self._wait_end()
            except (NdmpReplyError, NdmpConnectionLost, TimeoutError) as exc:
                outcome, reason = "failed", await self._why(str(exc) or type(exc).__name__)
            await watcher.stop()
            if outcome != "done":
                for logs in self.logs.values():   # what the abort makes them say is no news
                    logs.close()
                await self._abort()
            sent, server_env = await self._collect(self.source, env=True)
            received, _ = await self._collect(self.dest, env=False)
            await self._stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await watcher.stop()
            for logs in self.logs.values():
                logs.close()
            for code in FH_CODES + V2_FH_CODES:
                self.source.on_raw(code, None)
            entries, unstored = steps.finish_history(recorder, self.reporter, self.logs["source"].warnings)
        if unstored and outcome == "done":        # the catalog cannot find its files: not kept as done
            outcome, reason = "failed", unstored
        if self.trouble and outcome != "done":
            reason = with_trouble(reason, self.trouble)
        if outcome == "done":
            self.catalog.add_media(copy.id, Media(label=req.destination, first_byte=0, last_byte=sent))
        self.catalog.finish_backup(copy.id, outcome, bytes=sent, env=server_env,
                                   dump_date=server_env.get("DUMP_DATE"),
                                   halt_reason=None if outcome == "done" else reason)
        warnings = [w for logs in self.logs.values() for w in logs.warnings]
        result = CopyResult(copy.id, outcome, sent, received, server_env, entries, warnings,
                            round(time.monotonic() - began, 3))
        fields: dict[str, Any] = {
            "job": "copy", "id": copy.id, "status": outcome, "bytes": sent, "received": received,
            "entries": entries, "env": server_env, "host": req.source_host, "volume": req.volume,
            "destination": req.destination, "level": req.level, "base": req.base_backup,
            "seconds": result.seconds, "warnings": warnings, "states": dict(self.states)}
        if outcome != "done":
            fields["reason"] = reason
        self.reporter.summary(fields)
        self.reporter.close()
        if outcome == "interrupted":
            raise CopyInterrupted(f"copy {copy.id} interrupted")
        if outcome == "failed":
            raise CopyFailed(f"copy {copy.id} failed: {reason}")
        return result

    # ------------------------------------------------------------ steps

    def _listen(self, recorder: Any) -> None:
        for code in FH_CODES + V2_FH_CODES:         # undecoded: the recorder's worker reads them
            self.source.on_raw(code, recorder.post_raw)
        req = self.request
        for side, host, agent in (("source", req.source_host, self.source),
                                  ("destination", req.dest_host, self.dest)):
            self.logs[side] = LogForwarder(self.reporter, {host: agent})
            agent.on(C.NOTIFY_DATA_HALTED, lambda body, side=side: self.events.put_nowait((side, body)))
        steps.lost_as_event(self.events, self.source, self.dest)

    async def _start(self, env: dict[str, str]) -> None:
        req = self.request
        listen = await self.dest.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        await self.source.call("DATA_CONNECT", addr=listen.connect_addr)
        await self.dest.call("DATA_START_RECOVER", butype_name=req.butype, nlist=[],
                             env=[T.pval(name="PREFIX", value=req.directory)])
        await self.source.call("DATA_START_BACKUP", butype_name=req.butype,
                               env=[T.pval(name=k, value=v) for k, v in env.items()])

    async def _wait_end(self) -> tuple[str, str]:
        while True:
            kind, body = await steps.next_event(self.events, (steps.Side(self.source, "data", "source"),
                                                              steps.Side(self.dest, "data", "destination")))
            verdict = self._decide(kind, body)
            if verdict is not None:
                return verdict

    def _decide(self, kind: str, body: Any) -> tuple[str, str] | None:
        """What one event means: (outcome, reason) to end the job, or None to keep waiting."""
        if kind == "interrupt":
            return "interrupted", f"interrupted by signal {signal.Signals(body).name}"
        self.halted[kind] = body
        if body.reason != C.DATA_HALT_SUCCESSFUL:
            errors = self.logs[kind].errors
            why = errors[-1] if errors else constant_name("DATA_HALT", body.reason)
            return "failed", f"the {kind} data server halted: {why}"
        if len(self.halted) == 2:
            return "done", ""
        return None

    async def _why(self, failure: str) -> str:
        """A refused request, with the server's own error line when it logged one. The server
        posts a refusal's reason before its reply, but posts reach their handlers on another
        task than replies: those received are delivered first; a reason a job logs may follow
        its reply, so it gets a moment more."""
        await steps.delivered(self.source, self.dest)
        for _ in range(WHY_WAITS):
            said = self.logs["destination"].errors[-1:] or self.logs["source"].errors[-1:]
            if said:
                return f"{failure} ({said[0]})"
            await asyncio.sleep(0.025)
        return failure

    async def _abort(self) -> None:
        """DATA_ABORT on both data servers, whatever state each is in."""
        await steps.abort([(self.source, "data"), (self.dest, "data")])

    async def _collect(self, agent: Agent, env: bool) -> tuple[int, dict[str, str]]:
        state = await steps.quietly(agent, "DATA_GET_STATE")
        reply = await steps.quietly(agent, "DATA_GET_ENV") if env else None
        return (int(state.bytes_processed) if state else 0), ({p.name: p.value for p in reply.env} if reply else {})

    async def _stop(self) -> None:
        """Both data servers back to IDLE (checked on these sessions: :func:`settle`)."""
        for agent in (self.source, self.dest):
            await steps.stop(agent, "data")
        req = self.request
        self.states, self.trouble = await settle(
            {"source": (self.source, "data"), "destination": (self.dest, "data")}, self.reporter,
            {"source": req.source_host, "destination": req.dest_host})
