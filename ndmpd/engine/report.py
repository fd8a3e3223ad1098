"""Warnings and refusals of a job: every one counted, the first thousand kept; and what kind
of failure kept a member out of a restore.

A dump of a live tree or a restore of a damaged stream can report millions of entries;
the caller gets the true count and a bounded sample (each message also goes to the job's
report hook as it happens).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

KEPT = 1000


MESSAGE_LIMIT = 1000        # characters of one message (names in an image can be a megabyte long)


def bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class Messages(list):
    """A list of messages that keeps at most ``KEPT`` of them but counts them all."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self) < KEPT:
            self.append(message)


# What kind of failure kept a member from being restored: a protocol maps these to its own
# codes (NDMP's LOG_FILE recovery status), people read the text.
PERMISSION, NOT_FOUND, NO_DIRECTORY, NO_SPACE, IO_ERROR, NO_MEMORY, EXISTS, INVALID = (
    "permission", "not-found", "no-directory", "no-space", "io-error", "no-memory", "exists", "invalid")

_ERRNO_KINDS = {
    errno.EACCES: PERMISSION, errno.EPERM: PERMISSION, errno.EROFS: PERMISSION,
    errno.ENOENT: NOT_FOUND, errno.ENOTDIR: NO_DIRECTORY, errno.ELOOP: NO_DIRECTORY,
    errno.ENOSPC: NO_SPACE, errno.EDQUOT: NO_SPACE, errno.EFBIG: NO_SPACE, errno.ENOMEM: NO_MEMORY,
    errno.EEXIST: EXISTS, errno.ENOTEMPTY: EXISTS, errno.ENAMETOOLONG: INVALID, errno.EINVAL: INVALID,
}


@dataclass(frozen=True)
class Failure:
    """Why one member was not restored: ``text`` names the cause, ``kind`` classifies it."""

    text: str
    kind: str = INVALID

    def __str__(self) -> str:
        return self.text


def failure_of(exc: BaseException) -> Failure:
    """The failure an exception stands for: its errno's kind for OS errors, the kind a
    refusal carries, else INVALID (a member whose fields make no sense)."""
    if isinstance(exc, OSError):
        return Failure(exc.strerror or str(exc), _ERRNO_KINDS.get(exc.errno, IO_ERROR))
    if isinstance(exc, MemoryError):
        return Failure("out of memory", NO_MEMORY)
    if isinstance(exc, RecursionError):
        return Failure("nested too deeply", INVALID)
    return Failure(str(exc) or type(exc).__name__, getattr(exc, "kind", INVALID))
