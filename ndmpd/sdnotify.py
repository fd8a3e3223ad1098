"""systemd's readiness protocol (sd_notify(3)) and journald-friendly log lines, without libsystemd.

Under ``Type=notify`` systemd sets ``$NOTIFY_SOCKET``: a datagram there saying ``READY=1``
tells it the listeners are up, ``RELOADING=1`` / ``STOPPING=1`` that a reload or stop is under
way. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Mapping

from .logtext import BoundedFormatter


class Notifier:
    """Sends state lines to the service manager's notification socket, if there is one."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):              # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; False when there is nobody to tell."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:
            logging.getLogger("ndmpd.sdnotify").warning("cannot notify systemd at %s: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 carries the monotonic time (µs), as systemd ≥ 253 requires for Type=notify-reload."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


# sd-daemon(3) priorities for the "<N>" prefix journald reads from a stream.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(BoundedFormatter):
    """One bounded line per event, ``<N>`` priority first, no timestamp (journald adds its
    own); a traceback, when one is logged, is folded into the same line."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 3 if record.levelno > logging.WARNING else 6)
        return f"<{priority}>" + super().format(record)


def under_journald(environ: Mapping[str, str] = os.environ, stream=None) -> bool:
    """True when systemd connected stderr to the journal: it then sets $JOURNAL_STREAM (to the
    stream's device:inode). A terminal is never the journal, whatever the environment says."""
    if not environ.get("JOURNAL_STREAM"):
        return False
    try:
        return not (stream or sys.stderr).isatty()
    except (OSError, ValueError, AttributeError):
        return True
