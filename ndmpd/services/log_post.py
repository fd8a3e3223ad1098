"""The one LOG post a server sends a DMA to say something in words (why a job or the mover
stopped, what was not restored): LOG_LOG on v2, LOG_MESSAGE on v3/v4. Every service builds
it here, so a reason reads the same whichever service says it."""

from __future__ import annotations

from ..wire import C, T, protocol

LEVELS = {"normal": C.LOG_NORMAL, "warning": C.LOG_WARNING, "error": C.LOG_ERROR}


def log_post(version: int, text: str, level: str = "normal") -> tuple[int, object]:
    """(message code, body) of a post carrying ``text`` at ``level`` (normal, warning, error),
    the body in the form ``Session.post`` takes."""
    if version == 2:
        v2 = protocol(2)
        return v2.by_name["LOG_LOG"].code, v2.types.log_log_post(text)
    return C.LOG_MESSAGE, T.log_message_post(log_type=LEVELS.get(level, C.LOG_NORMAL), message_id=0, entry=text,
                                             associated_message_valid=C.NO_ASSOCIATED_MESSAGE,
                                             associated_message_sequence=0)
