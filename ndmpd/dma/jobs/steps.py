"""The requests every job sends the same way on its way out: abort, wait for HALTED, stop,
read a count; each tolerant of a side that refuses, does not answer or is gone, because a
job ending must reach its catalog entry and its summary whatever the servers do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Literal, Sequence

from ...wire import C
from ..agent import Agent
from ..catalog_history import HistoryError, HistoryRecorder
from ..errors import NdmpConnectionLost, NdmpReplyError
from ..progress import Reporter

Kind = Literal["data", "mover"]
STEP_TIMEOUT = 30.0                  # seconds one request of the way out may take
MISSED_NOTICE = 5.0                  # seconds without an event before a job reads its sides' states
GONE = (NdmpReplyError, NdmpConnectionLost, TimeoutError)   # a side that refuses or is gone: carry on
REQUESTS = {"data": ("DATA_GET_STATE", "DATA_ABORT", "DATA_STOP", "DATA_STATE"),
            "mover": ("MOVER_GET_STATE", "MOVER_ABORT", "MOVER_STOP", "MOVER_STATE")}


def constant_name(prefix: str, value: int) -> str:
    """A protocol value in words: ``constant_name("MOVER_HALT", 3)`` -> ``connect closed``
    (the number when no constant has it)."""
    start = prefix + "_"
    for name in dir(C):
        if name.startswith(start) and not name.endswith("_UNS") and getattr(C, name) == value:
            return name[len(start):].lower().replace("_", " ")
    return str(value)


async def connect_data(data: Agent, addr: Any) -> dict[str, Any]:
    """The data server connected to the mover's ``addr``: DATA_CONNECT, or for NDMPv2, which
    has none, the field its DATA_START_BACKUP / DATA_START_RECOVER takes the address in."""
    if data.version == 2:
        return {"mover_addr": addr}
    await data.call("DATA_CONNECT", addr=addr)
    return {}


def lost_as_event(events: "asyncio.Queue[tuple[str, Any]]", *agents: Agent) -> Callable[[], None]:
    """Put ``("lost", error)`` into a job's ``events`` when one of its connections is lost
    (after the posts that came before the loss), so a job waiting for NOTIFY posts ends,
    through :func:`next_event`, instead of waiting for posts that cannot come. Returns what
    undoes it (for agents that serve another job next)."""
    def lost(error: NdmpConnectionLost) -> None:
        events.put_nowait(("lost", error))
    unique = list(dict.fromkeys(agents))
    for agent in unique:
        agent.on_lost(lost)

    def undo() -> None:
        for agent in unique:
            agent.off_lost(lost)
    return undo


@dataclass(frozen=True)
class Side:
    """A side whose state stands in for its NOTIFY posts when they do not come: the event a
    HALTED state means (``halted``), a PAUSED one (``paused``; None: not read as one), and an
    ACTIVE data server's last read asked for (``reading``: a NOTIFY_DATA_READ that may have been
    served already, so the job tells it from the one it answered; None: not read)."""

    agent: Agent
    kind: Kind
    halted: str
    paused: str | None = None
    reading: str | None = None


async def _states_say(sides: Sequence[Side], patience: float) -> list[tuple[str, Any]]:
    """The events the sides' states stand for (a halt, a pause or a read asked for, with the
    post's fields)."""
    said: list[tuple[str, Any]] = []
    for side in sides:
        try:
            reply = await side.agent.call(REQUESTS[side.kind][0], timeout=patience)
        except GONE:
            continue
        state = constant_name(REQUESTS[side.kind][3], reply.state)
        if state == "halted":
            said.append((side.halted, SimpleNamespace(reason=reply.halt_reason, text_reason="")))
        elif state == "paused" and side.paused is not None:
            said.append((side.paused, SimpleNamespace(reason=reply.pause_reason,
                                                      seek_position=getattr(reply, "seek_position", 0))))
        elif state == "active" and side.reading is not None and getattr(reply, "read_length", 0):
            said.append((side.reading, SimpleNamespace(offset=int(reply.read_offset), length=int(reply.read_length))))
    return said


def _same(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> bool:
    return [(k, vars(v)) for k, v in a] == [(k, vars(v)) for k, v in b]


async def next_event(events: "asyncio.Queue[tuple[str, Any]]", sides: Sequence[Side] = (),
                     patience: float = MISSED_NOTICE) -> tuple[str, Any]:
    """A job's next event; a lost connection raises its NdmpConnectionLost (the job ends it
    as it ends any request that failed for that reason).

    With ``sides``, a NOTIFY post that never comes does not hold the job for ever: after
    ``patience`` seconds without an event the sides' states are read, and a halt, pause or
    read they show twice running, with no event in between, is taken as the post (as ndmjob's
    monitor reads states); a duplicate of a halt or pause already taken is harmless to a job's
    rules, and a read comes as its Side's own event so the job can tell one it answered."""
    suspected: list[tuple[str, Any]] = []
    while True:
        if not sides:
            kind, body = await events.get()
        else:
            try:
                async with asyncio.timeout(patience):    # (not wait_for: on 3.11 it can lose a cancel)
                    kind, body = await events.get()
            except TimeoutError:
                said = await _states_say(sides, patience)
                if not events.empty():
                    suspected = []
                elif said and _same(said, suspected):
                    for event in said:
                        events.put_nowait(event)
                    suspected = []
                else:
                    suspected = said
                continue
        if kind == "lost":
            raise body
        return kind, body


def keep_losses(events: "asyncio.Queue[tuple[str, Any]]") -> None:
    """Empty ``events`` of everything but a lost connection (a job forgetting stale posts)."""
    kept = []
    while not events.empty():
        event = events.get_nowait()
        if event[0] == "lost":
            kept.append(event)
    for event in kept:
        events.put_nowait(event)


def finish_history(recorder: HistoryRecorder, reporter: Reporter, warnings: list[str]) -> tuple[int, str]:
    """End a job's file history: (entries stored, why it could not be stored, or "").
    Posts it had to leave out are one warning, to ``reporter`` (the job then exits 3) and in
    the job's ``warnings``."""
    try:
        entries = recorder.finish()
        failed = ""
    except HistoryError as exc:
        entries, failed = recorder.rows_written, f"{exc}: {exc.__cause__}"
    note = recorder.skipped_note()
    if note:
        warnings.append(note)
        reporter.warning(note)
    return entries, failed


async def quietly(agent: Agent, message: str, **fields: Any) -> Any | None:
    """``message``'s reply, or None when the side refuses it or is gone."""
    try:
        return await agent.call(message, timeout=STEP_TIMEOUT, **fields)
    except GONE:
        return None


async def delivered(*agents: Agent) -> None:
    """Until each agent's posts received so far went through their handlers (once per agent:
    a LOCAL job passes the same one twice), so the reasons sent ahead of a reply are seen."""
    for agent in dict.fromkeys(agents):
        await agent.delivered()


async def abort(sides: Iterable[tuple[Agent, Kind]]) -> None:
    """DATA_ABORT / MOVER_ABORT on each side, whatever state it is in."""
    for agent, kind in sides:
        await quietly(agent, REQUESTS[kind][1])


async def wait_halted(agent: Agent, kind: Kind, tries: int = 100) -> None:
    """Until the side is HALTED or IDLE (every 0.1 s, at most ``tries`` times)."""
    for _ in range(tries):
        reply = await quietly(agent, REQUESTS[kind][0])
        if reply is None or constant_name(REQUESTS[kind][3], reply.state) in ("halted", "idle"):
            return
        await asyncio.sleep(0.1)


async def stop(agent: Agent, kind: Kind, tries: int = 100) -> None:
    """The side's HALTED reached, then DATA_STOP / MOVER_STOP: IDLE again."""
    await wait_halted(agent, kind, tries)
    await quietly(agent, REQUESTS[kind][2])
