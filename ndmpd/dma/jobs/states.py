"""Where a job leaves its servers: DATA and MOVER state read on the job's own sessions.

In ndmpd (as in the NDMP model) the DATA and MOVER state machines belong to a session: a DMA
that opens a new session after a job sees IDLE whatever the job left behind. So the check
that a job ended with both servers back to IDLE can only be made by the job itself, on its
own connections, before it closes them. Every job (backup, recover, copy) calls
:func:`settle` at the end of its stop sequence, whatever its outcome::

    states, trouble = await settle({"data": (data, "data"), "mover": (tape, "mover")},
                                   reporter, host_names)
    summary["states"] = states          # {"data": "idle", "mover": "idle"}

A side that is not IDLE gets one more try (ABORT, a wait for HALTED, STOP); the retry is
logged, and a side still not IDLE after it is a warning line (so a completed job exits 3)
and comes back in ``trouble`` (one phrase per side) for the job to add to its reason
(:func:`with_trouble`): never hidden.
"""

from __future__ import annotations

from ..agent import Agent
from ..errors import NdmpConnectionLost, NdmpReplyError
from ..progress import Reporter
from .steps import REQUESTS, STEP_TIMEOUT, Kind, abort, constant_name, stop

HALT_WAIT = 50                       # x 0.1 s: how long the retry waits for ABORT to reach HALTED
CLOSED = "closed"                    # the session is gone: its state machines went with it


def state_name(kind: Kind, value: int) -> str:
    """DATA_STATE_IDLE -> ``idle``, MOVER_STATE_ACTIVE -> ``active`` (the number if unknown)."""
    return constant_name(REQUESTS[kind][3], value)


async def read_state(agent: Agent, kind: Kind) -> str:
    """The side's state name; ``closed`` when its session is gone (the server ended it, and
    with it the session's DATA/MOVER state: nothing is left running for it); ``unknown (why)``
    when the session is there but cannot say."""
    try:
        reply = await agent.call(REQUESTS[kind][0], timeout=STEP_TIMEOUT)
    except NdmpConnectionLost:
        return CLOSED
    except (NdmpReplyError, TimeoutError) as exc:
        return f"unknown ({exc or type(exc).__name__})"
    return state_name(kind, reply.state)


async def _retry(agent: Agent, kind: Kind) -> None:
    """ABORT then STOP once more (each refusal is fine: the state read after says what is left)."""
    await abort([(agent, kind)])
    await stop(agent, kind, HALT_WAIT)


async def settle(sides: dict[str, tuple[Agent, Kind]], reporter: Reporter,
                 hosts: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Read each side's state on its own session; retry a non-IDLE one once.

    ``sides`` names each side (``data``, ``mover``; a copy's ``source``, ``destination``) with
    its agent and which state machine to read; ``hosts`` how log lines name the side's host.
    Returns ``(states, trouble)``: the lower-case state names by side (``closed``: the session
    was lost, which ends its state machines), and one phrase per side still neither IDLE nor
    closed after the retry (empty when none)."""
    hosts = hosts or {}
    states: dict[str, str] = {}
    trouble: list[str] = []
    for side, (agent, kind) in sides.items():
        state = await read_state(agent, kind)
        if state not in ("idle", CLOSED) and not state.startswith("unknown"):
            await _retry(agent, kind)
            after = await read_state(agent, kind)
            reporter.log(hosts.get(side, agent.peer), "normal",
                         f"the {side} side was {state} after the stop: aborted and stopped again, now {after}")
            state = after
        states[side] = state
        if state not in ("idle", CLOSED):
            trouble.append(f"the {side} side left {state}")
    for phrase in trouble:
        reporter.warning(f"{phrase} after the job's stop (not IDLE)")
    return states, trouble


def with_trouble(reason: str, trouble: list[str]) -> str:
    """A job's reason with what :func:`settle` could not bring back to IDLE."""
    return "; ".join(([reason] if reason else []) + trouble)
