"""One replication update: the master's data server sends a snapshot of its volume, as an
incremental against the replica's current state, straight to the replica's data server
(data to data over NDMP, like ``ndmp copy``), which applies it and switches it in atomically.

The replica's server is asked for its state (``NDMPD_REPLICA_STATE`` in CONFIG_GET_FS_INFO)
before every update: that answer, not the catalog, is the base of the stream, so a killed
``ndmp`` or a lost record can never make an update skip or repeat a change. The replica
listens (DATA_LISTEN, START_RECOVER), the master connects (DATA_CONNECT, START_BACKUP with
its hold, so the new snapshot stays the base of the next update). When the master no longer
keeps the base the replica is at, the update is re-done as a full stream (with a warning).
Every outcome, interrupts included, ends in the catalog (``record_replica_update``); a
failed update aborts both sides and leaves the replica at its state (the server sees to it).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ...wire import C, T
from ..agent import Agent
from ..catalog import Catalog
from ..errors import JobFailed, NdmpConnectionLost, NdmpReplyError
from ..progress import Reporter
from . import steps
from .states import settle, with_trouble
from .steps import constant_name
from .watch import LogForwarder

UPDATE_TIMEOUT = 600.0          # seconds an update may run before it is aborted
REASON_WAIT = 0.5               # seconds a refusal waits for the server's LOG_MESSAGE saying why
HALT_AFTER_LOSS = 5.0           # seconds an update whose side went away waits for the other side's halt
NOT_KEPT = "is not kept on"     # the master's words when it released the replica's base (spec 2)


class UpdateFailed(JobFailed):
    """The update did not complete; the replica keeps its state (the message says why)."""


@dataclass
class UpdateRequest:
    """Which replica of which master to bring up to date, and how."""

    replication: str
    master_host: str
    master_volume: str
    master_id: str                       # the volume id the replication was created with
    replica_host: str
    replica_volume: str
    hold: str                            # the master's hold for this replica (NDMPD_HOLD)
    butype: str = "btrfs"                # the replication's: btrfs, or dump for a non-btrfs master
    freeze: bool = False                 # promote: the master read-only before its last snapshot
    promote: bool = False                # promote: the replica read-write after this update
    demote: bool = False                 # after promote --reverse: the old master becomes a replica
    thaw: bool = False                   # undo a freeze left by a promote that failed
    base_hint: str | None = None         # the catalog's state: the base of a demoting update (the
                                         # promote's final snapshot, held by the frozen old master)
    timeout: float = UPDATE_TIMEOUT


@dataclass
class UpdateResult:
    replica: str                         # HOST:VOLUME
    status: str                          # done
    state_id: str
    state_time: float | None
    base_id: str | None
    bytes: int
    seconds: float
    full: bool
    warnings: list[str] = field(default_factory=list)


async def volume_fs(agent: Agent, volume: str, host: str) -> tuple[dict[str, str], str]:
    """(fs_env, fs_type) CONFIG_GET_FS_INFO gives for ``volume`` (UpdateFailed when it has none)."""
    reply = await agent.call("CONFIG_GET_FS_INFO")
    for fs in reply.fs_info:
        if fs.fs_logical_device == volume:
            return {p.name: p.value for p in fs.fs_env}, fs.fs_type
    names = ", ".join(fs.fs_logical_device for fs in reply.fs_info) or "none"
    raise UpdateFailed(f"{host} has no volume {volume} (its volumes: {names})")


async def volume_env(agent: Agent, volume: str, host: str) -> dict[str, str]:
    """The fs_env CONFIG_GET_FS_INFO gives for ``volume``."""
    return (await volume_fs(agent, volume, host))[0]


def butype_for(env: dict[str, str], fs_type: str = "") -> str:
    """btrfs streams for a btrfs subvolume master (``btrfs:`` volume id, or a ``replica = true``
    volume, always a subvolume on btrfs, whose id is ``ndmpd:``), the dump engine's token
    incrementals otherwise."""
    volume_id = env.get("NDMPD_VOLUME_ID", "")
    if volume_id.startswith("btrfs:") or (env.get("NDMPD_REPLICA") == "y" and fs_type == "btrfs"):
        return "btrfs"
    return "dump"


class _Refused(Exception):
    """A START refused on the base: the master no longer keeps it, or the old master being
    demoted (after promote --reverse) cannot take an incremental. Retried as a full stream."""


class ReplicaUpdateJob:
    """One update of one replica: two agents (the master's and the replica's data servers)."""

    def __init__(self, master: Agent, replica: Agent, catalog: Catalog, request: UpdateRequest,
                 reporter: Reporter) -> None:
        if master is replica:
            raise ValueError("an update needs two connections (one per data server)")
        self.master, self.replica, self.catalog, self.request = master, replica, catalog, request
        self.reporter = reporter
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.logs: dict[str, LogForwarder] = {}
        self.halted: dict[str, Any] = {}
        self.warnings: list[str] = []
        self._stopped = False

    @property
    def target(self) -> str:
        return f"{self.request.replica_host}:{self.request.replica_volume}"

    async def run(self) -> UpdateResult:
        """Run the update to its end and record it; UpdateFailed otherwise. A cancel (SIGINT:
        the ``run`` cancels its tasks) aborts both sides, is recorded as interrupted and goes on."""
        req = self.request
        started, began = time.time(), time.monotonic()
        base: str | None = None
        outcome, reason = "failed", ""
        result: UpdateResult | None = None
        self._listen()
        try:
            butype, base = await self._plan()
            try:
                result = await self._update(butype, base)
            except _Refused as refused:
                self._warn(f"{refused}: sending a full update")
                await self._abort_and_stop()
                await self._forget_halts()
                base = None
                result = await self._update(butype, None)
            outcome = "done"
        except asyncio.CancelledError:
            outcome, reason = "interrupted", "interrupted"
            await asyncio.shield(self._abort_and_stop())
            raise
        except UpdateFailed as exc:
            reason = str(exc)
            await self._abort_and_stop()
        except (NdmpReplyError, NdmpConnectionLost, TimeoutError, OSError) as exc:
            reason = await self._why(str(exc) or type(exc).__name__)
            await self._abort_and_stop()
        finally:
            for logs in self.logs.values():
                logs.close()
            ended = time.time()
            if result is not None and outcome == "done":
                self.catalog.record_replica_update(
                    req.replication, req.replica_host, req.replica_volume, started=started, ended=ended,
                    outcome="done", bytes=result.bytes, base_id=result.base_id, state_id=result.state_id,
                    state_time=result.state_time)
            else:
                self.catalog.record_replica_update(
                    req.replication, req.replica_host, req.replica_volume, started=started, ended=ended,
                    outcome=outcome if outcome != "done" else "failed", base_id=base,
                    error=reason or "interrupted")
        if result is None or outcome != "done":
            raise UpdateFailed(reason)
        result.seconds = round(time.monotonic() - began, 3)
        result.warnings = self.warnings + [w for logs in self.logs.values() for w in logs.warnings]
        return result

    # ------------------------------------------------------------ steps

    def _listen(self) -> None:
        req = self.request
        for side, host, agent in (("master", req.master_host, self.master),
                                  ("replica", req.replica_host, self.replica)):
            self.logs[side] = LogForwarder(self.reporter, {host: agent})
            agent.on(C.NOTIFY_DATA_HALTED, lambda body, side=side: self.events.put_nowait((side, body)))
        steps.lost_as_event(self.events, self.master, self.replica)

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        self.reporter.warning(text)

    async def _plan(self) -> tuple[str, str | None]:
        """(butype, base): the master's volume id checked, the replica's current state read.
        The butype is the replication's (chosen at create from the master's volume id): a
        promoted replica reports an ``ndmpd:`` id but is on btrfs all the same."""
        req = self.request
        m_env = await volume_env(self.master, req.master_volume, req.master_host)
        volume_id = m_env.get("NDMPD_VOLUME_ID")
        if not volume_id:
            raise UpdateFailed(f"{req.master_host} reports no NDMPD_VOLUME_ID for {req.master_volume}: "
                               "not an ndmpd that can replicate")
        if volume_id != req.master_id:
            raise UpdateFailed(f"{req.master_host}:{req.master_volume} is now volume {volume_id}, not the "
                               f"{req.master_id} replication {req.replication} was created with")
        r_env = await volume_env(self.replica, req.replica_volume, req.replica_host)
        if r_env.get("NDMPD_REPLICA") != "y":
            raise UpdateFailed(f"{self.target} is not a replica volume (set replica = true for it in the "
                               "server's ndmpd.toml)")
        base = r_env.get("NDMPD_REPLICA_STATE") or None
        if req.demote and req.base_hint:
            base = req.base_hint         # the promote's final snapshot, which the old master holds;
                                         # a state it reports is older (from before it was promoted)
        return req.butype, base

    def _recover_env(self, butype: str, base: str | None) -> dict[str, str]:
        req = self.request
        env = {"FILESYSTEM": req.replica_volume, "TYPE": butype, "NDMPD_REPLICA_OF": req.master_id}
        if base:
            env["BASE_DATE"] = base
        if req.promote:
            env["NDMPD_PROMOTE"] = "y"
        if req.demote:
            env["NDMPD_DEMOTE"] = "y"
        return env

    def _backup_env(self, butype: str, base: str | None) -> dict[str, str]:
        req = self.request
        env = {"FILESYSTEM": req.master_volume, "HIST": "n", "NDMPD_HOLD": req.hold}
        if butype == "dump":    # a level 1 on the replica's token; the hold (not UPDATE, which would
                                # move the volume's level dates) keeps the base's directory index
            env.update(LEVEL="1" if base else "0", UPDATE="n")
        if base:
            env["BASE_DATE"] = base
        if req.freeze:
            env["NDMPD_FREEZE"] = "y"
        elif req.thaw:
            env["NDMPD_THAW"] = "y"
        return env

    async def _update(self, butype: str, base: str | None) -> UpdateResult:
        began = time.time()                  # the snapshot's time when the master gives none (dump)
        listen = await self.replica.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        try:
            await self.replica.call("DATA_START_RECOVER", butype_name=butype, nlist=[],
                                    env=_pvals(self._recover_env(butype, base)))
        except NdmpReplyError as exc:
            if base and self.request.demote and exc.code == C.ILLEGAL_ARGS_ERR:
                said = self.logs["replica"].errors[-1:] if await self._said("", "replica") else []
                raise _Refused(f"{self.target} takes no incremental on {base} to demote it"
                               + (f" ({said[0]})" if said else "")) from None
            raise
        extra = await steps.connect_data(self.master, listen.connect_addr)
        try:
            await self.master.call("DATA_START_BACKUP", butype_name=butype,
                                   env=_pvals(self._backup_env(butype, base)), **extra)
        except NdmpReplyError as exc:
            if base and exc.code == C.ILLEGAL_ARGS_ERR and await self._said(NOT_KEPT, "master"):
                raise _Refused(f"{self.request.master_host}:{self.request.master_volume} no longer keeps "
                               f"{base}, the state {self.target} is at") from None
            raise
        try:
            async with asyncio.timeout(self.request.timeout):
                await self._wait_halts()
        except TimeoutError:
            raise UpdateFailed(f"the update took more than {self.request.timeout:g} s") from None
        m_state = await steps.quietly(self.master, "DATA_GET_STATE")
        m_env = await _env(self.master)
        r_env = await _env(self.replica)
        await self._stop()
        state_id = m_env.get("DUMP_DATE")
        if not state_id:
            raise UpdateFailed(f"{self.request.master_host} returned no DUMP_DATE: the new state is unknown")
        said = r_env.get("NDMPD_REPLICA_STATE")
        if said and said != state_id:
            self._warn(f"{self.target} reports state {said}, the master sent {state_id}")
        sent = _number(m_env.get("NDMPD_IMAGE_SIZE"), int) or (int(m_state.bytes_processed) if m_state else 0)
        taken = _number(m_env.get("NDMPD_SNAPSHOT_TIME"), float)
        return UpdateResult(self.target, "done", state_id, taken if taken else began, base, sent, 0.0, base is None)

    async def _forget_halts(self) -> None:
        """Drop the first try's NOTIFY_DATA_HALTED (the abort's), before the full retry. Each
        side was seen halted, and a halt post comes before the reply that reads HALTED: once
        the posts received are delivered, every one of the first try's halts is queued."""
        await steps.delivered(self.master, self.replica)
        steps.keep_losses(self.events)
        self.halted.clear()
        self._stopped = False

    async def _wait_halts(self) -> None:
        """Until both sides halted SUCCESSFUL; UpdateFailed at the first that did not."""
        sides = (steps.Side(self.master, "data", "master"), steps.Side(self.replica, "data", "replica"))
        while len(self.halted) < 2:
            try:
                side, body = await steps.next_event(self.events, sides)
            except NdmpConnectionLost as lost:
                raise UpdateFailed(await self._lost_side(lost)) from None
            self.halted[side] = body
            if body.reason != C.DATA_HALT_SUCCESSFUL:
                gone = await self._gone("replica" if side == "master" else "master")
                await self._abort_and_stop()
                raise UpdateFailed(gone + self._halted_why(side, body))

    def _halted_why(self, side: str, body: Any) -> str:
        """A side's halt that was not SUCCESSFUL, in its server's own words when it logged any."""
        errors = self.logs[side].errors
        return f"the {side} data server halted: {errors[-1] if errors else constant_name('DATA_HALT', body.reason)}"

    async def _lost_side(self, lost: NdmpConnectionLost) -> str:
        """Why an update failed when one side's connection was lost: that side's ndmpd went
        away, and the other side's halt (its data connection broken) says how, when it comes
        within a few seconds."""
        side, other = ("replica", "master") if self.replica.closed else ("master", "replica")
        try:
            async with asyncio.timeout(HALT_AFTER_LOSS):
                while other not in self.halted:
                    kind, body = await self.events.get()
                    if kind == other:
                        self.halted[other] = body
        except TimeoutError:
            pass
        halt = self.halted.get(other)
        said = self._halted_why(other, halt) if halt is not None and halt.reason != C.DATA_HALT_SUCCESSFUL else str(lost)
        return await self._gone(side) + said

    async def _gone(self, side: str) -> str:
        """Why the other side's data connection broke when its ndmpd went away (killed,
        restarted): the halt alone only tells of a reset or a truncated stream."""
        agent = self.replica if side == "replica" else self.master
        host = self.request.replica_host if side == "replica" else self.request.master_host
        deadline = time.monotonic() + REASON_WAIT
        while not agent.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.025)
        return f"the {side}'s ndmpd ({host}) went away during the update; " if agent.closed else ""

    async def _said(self, words: str, side: str) -> bool:
        """Whether ``side`` logged an error containing ``words``: a refusal's reason comes
        before its reply; another may follow it, so it is waited for briefly."""
        await steps.delivered(self.master, self.replica)
        deadline = time.monotonic() + REASON_WAIT
        while time.monotonic() < deadline:
            if any(words in line for line in self.logs[side].errors):
                return True
            await asyncio.sleep(0.025)
        return False

    async def _why(self, failure: str) -> str:
        """A refused request with the server's own error line, when it logged one."""
        await steps.delivered(self.master, self.replica)
        deadline = time.monotonic() + REASON_WAIT
        while time.monotonic() < deadline:
            said = self.logs["replica"].errors[-1:] or self.logs["master"].errors[-1:]
            if said:
                return f"{failure} ({said[0]})"
            await asyncio.sleep(0.025)
        return failure

    async def _abort_and_stop(self) -> None:
        if self._stopped:
            return
        await steps.abort([(self.master, "data"), (self.replica, "data")])
        await self._stop()

    async def _stop(self) -> None:
        """Both data servers back to IDLE (read on these sessions: :func:`settle`)."""
        self._stopped = True
        for agent in (self.master, self.replica):
            if not agent.closed:
                await steps.stop(agent, "data", tries=50)
        req = self.request
        _, trouble = await settle({"master": (self.master, "data"), "replica": (self.replica, "data")},
                                  self.reporter, {"master": req.master_host, "replica": req.replica_host})
        if trouble:
            self.warnings.append(with_trouble("", trouble))


async def release_hold(master: Agent, volume: str, hold: str, host: str, reporter: Reporter,
                       butype: str = "btrfs", timeout: float = 60.0) -> None:
    """NDMPD_RELEASE of one hold: the master deletes that hold's snapshots (btrfs) or forgets
    its directory indexes (dump) and halts without sending (DATA is put in LISTEN first because START requires a connection)."""
    logs = LogForwarder(reporter, {host: master})
    halted: asyncio.Queue[Any] = asyncio.Queue()
    master.on(C.NOTIFY_DATA_HALTED, halted.put_nowait)
    try:
        await master.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
        await master.call("DATA_START_BACKUP", butype_name=butype, env=_pvals(
            {"FILESYSTEM": volume, "NDMPD_HOLD": hold, "NDMPD_RELEASE": "y"}))
        async with asyncio.timeout(timeout):
            body = await halted.get()
        if body.reason != C.DATA_HALT_SUCCESSFUL:
            why = logs.errors[-1] if logs.errors else constant_name("DATA_HALT", body.reason)
            raise UpdateFailed(f"{host} could not release hold {hold}: {why}")
    except (NdmpReplyError, TimeoutError) as exc:
        raise UpdateFailed(f"{host} could not release hold {hold}: "
                           f"{logs.errors[-1] if logs.errors else exc or type(exc).__name__}") from None
    finally:
        master.off(C.NOTIFY_DATA_HALTED, halted.put_nowait)
        logs.close()
        await steps.abort([(master, "data")])
        await steps.stop(master, "data", tries=50)


def _pvals(env: dict[str, str]) -> list[Any]:
    return [T.pval(name=k, value=v) for k, v in env.items()]


async def _env(agent: Agent) -> dict[str, str]:
    reply = await steps.quietly(agent, "DATA_GET_ENV")
    return {p.name: p.value for p in reply.env} if reply else {}


def _number(text: str | None, kind: type) -> Any:
    try:
        return kind(text) if text not in (None, "") else None
    except ValueError:
        return None
