"""Which session holds each tape drive: one at a time (changers are shared, see changer/registry.py)."""

from __future__ import annotations

import threading
import time

from .tape import DeviceBusy

HANDOVER_PATIENCE = 5.0      # seconds a claim waits for a closed session's teardown to give a device back


class Holders:
    """Device name -> the owner holding it; claims and releases are atomic.

    A DMA that closes one connection and opens the next at once must not find its own
    drive busy: an owner whose connection is already closed (``owner.closed``) is only
    waiting for its teardown, so a claim waits for that release instead of refusing.
    """

    def __init__(self) -> None:
        self._holders: dict[str, object] = {}
        self._released = threading.Condition()

    def claim(self, name: str, owner: object, patience: float = 0.0) -> None:
        """Hold ``name`` for ``owner`` (again is fine); DeviceBusy when another holds it.
        With ``patience``, wait that long for a holder whose connection has closed."""
        deadline = time.monotonic() + patience
        with self._released:
            while True:
                holder = self._holders.get(name)
                if holder is None or holder is owner:
                    self._holders[name] = owner
                    return
                left = deadline - time.monotonic()
                if left <= 0 or not getattr(holder, "closed", False):
                    peer = getattr(holder, "peer", None)
                    raise DeviceBusy(f"{name} is in use by another session" + (f" (from {peer})" if peer else ""))
                self._released.wait(left)

    def let_go(self, name: str, owner: object) -> bool:
        """Release ``name`` if ``owner`` holds it; True when it did."""
        with self._released:
            if self._holders.get(name) is not owner:
                return False
            del self._holders[name]
            self._released.notify_all()
            return True

    def holder(self, name: str) -> object | None:
        return self._holders.get(name)
