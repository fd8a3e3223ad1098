"""What a DMA's requests can fail with: one exception per thing the caller decides on."""

from __future__ import annotations

from typing import Any, Callable

from ..wire import protocol


class NdmpReplyError(Exception):
    """A request failed: header error (``header``) or reply-body error."""

    def __init__(self, message: str, code: int, header: bool) -> None:
        super().__init__(f"{message}: {protocol(4).error_name(code)}{' (header)' if header else ''}")
        self.message, self.code, self.header = message, code, header


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130     # the ``ndmp`` command's status
EXIT_WARNINGS = 3          # the job completed, but a server logged a warning or an error on the way


def checked(message: str, header_error: int, decode: Callable[[], Any]) -> Any:
    """The reply body, or NdmpReplyError for a header error or a body ``error`` (one rule for
    the blocking client and the Agent)."""
    if header_error:
        raise NdmpReplyError(message, header_error, header=True)
    body = decode()
    if getattr(body, "error", 0):
        raise NdmpReplyError(message, body.error, header=False)
    return body


class JobFailed(Exception):
    """A job (backup, restore, copy) ended without doing what was asked; the message is the
    one line for the user (exit 1). Each job's own failure subclasses it."""


class JobInterrupted(Exception):
    """The user stopped a job (SIGINT/SIGTERM) and both sides were aborted (exit 130)."""


class UsageError(Exception):
    """The command line asks for something that cannot be meant (exit 2, one line naming the
    command, like argparse's own errors)."""


class NdmpConnectError(ConnectionError):
    """The connection could not be opened, negotiated or authenticated (one line for the user)."""


class NdmpAuthError(NdmpConnectError):
    """The server refused the credentials."""


class NdmpConnectionLost(ConnectionError):
    """The control connection closed or failed; every pending request fails with this."""


class NdmpProtocolError(NdmpConnectionLost):
    """The server sent a reply (or greeting) this DMA cannot decode, or a reply to another
    message than the one asked: nothing it says next can be trusted, so the connection is
    closed, and every caller's handling of a lost connection applies (a job aborts)."""
