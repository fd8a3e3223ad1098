"""NDMP interfaces (CONNECT, CONFIG, ...), one module each, registered by message code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..session import Session


@dataclass(frozen=True)
class Handler:
    """One request handler: takes the session and the internal-form request, returns the reply."""

    fn: Callable[["Session", Any], Any]
    pre_auth: bool = False       # answered before CONNECT_CLIENT_AUTH succeeded


@dataclass(frozen=True)
class Blocking:
    """A handler's answer when the reply needs blocking device I/O.

    The session runs ``work`` off the event loop (through its edge) and replies with what
    it returns or raises; requests that arrive meanwhile wait their turn.
    """

    work: Callable[[], Any]


class HandlerTable(dict[int, Handler]):
    """Message code -> handler; a service module fills one with the ``on`` decorator."""

    def on(self, code: int, pre_auth: bool = False) -> Callable:
        def register(fn: Callable) -> Callable:
            if code in self:
                raise ValueError(f"two handlers for message 0x{code:x}")
            self[code] = Handler(fn, pre_auth)
            return fn
        return register


def all_handlers() -> HandlerTable:
    """Every service's handlers in one table."""
    from . import config, connect, data, mover, scsi, tape, tls_data

    table = HandlerTable()
    for module in (connect, config, tape, scsi, mover, data, tls_data):
        for code, handler in module.HANDLERS.items():
            if code in table:
                raise ValueError(f"message 0x{code:x} handled twice")
            table[code] = handler
    return table
