"""How a job tells its user what is happening: progress, the servers' log lines, warnings, a summary.

Jobs call a :class:`Reporter` and never print: the command picks one (a progress bar on a
terminal, JSON lines with ``--json``, plain lines otherwise), so a job is written once and
a test can hand it a recorder.
"""

from __future__ import annotations

from typing import Any, Protocol


class Reporter(Protocol):
    """What a job reports through."""

    def progress(self, done: int, total: int | None) -> None:
        """Bytes done so far and the estimated total (None when the server gave no estimate)."""

    def log(self, host: str, level: str, text: str) -> None:
        """One LOG_MESSAGE from a server; level is normal, debug, error or warning."""

    def warning(self, text: str) -> None:
        """Something the user must know that does not fail the job (it ends with exit 3)."""

    def summary(self, fields: dict[str, Any]) -> None:
        """The job's end: id, status, bytes, files, media..."""

    def close(self) -> None:
        """The job is over (a bar is cleared)."""


class NullReporter:
    """Reports nothing; keeps the warnings so the command can still choose exit 3."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def progress(self, done: int, total: int | None) -> None:
        pass

    def log(self, host: str, level: str, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def summary(self, fields: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
