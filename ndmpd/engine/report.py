"""Warnings and refusals of a job: every one counted, the first thousand kept.

A dump of a live tree or a restore of a damaged stream can report millions of entries;
the caller gets the true count and a bounded sample (each message also goes to the job's
report hook as it happens).
"""

from __future__ import annotations

KEPT = 1000


class Messages(list):
    """A list of messages that keeps at most ``KEPT`` of them but counts them all."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self) < KEPT:
            self.append(message)
