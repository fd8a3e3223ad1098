"""The requests every job sends the same way on its way out: abort, wait for HALTED, stop,
read a count; each tolerant of a side that refuses, does not answer or is gone, because a
job ending must reach its catalog entry and its summary whatever the servers do.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Literal

from ...wire import C
from ..agent import Agent
from ..errors import NdmpConnectionLost, NdmpReplyError

Kind = Literal["data", "mover"]
STEP_TIMEOUT = 30.0                  # seconds one request of the way out may take
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
