"""Which session holds each named device (a tape drive, a changer): one at a time."""

from __future__ import annotations

import threading

from .tape import DeviceBusy


class Holders:
    """Device name -> the owner holding it; claims and releases are atomic."""

    def __init__(self) -> None:
        self._holders: dict[str, object] = {}
        self._lock = threading.Lock()

    def claim(self, name: str, owner: object) -> None:
        """Hold ``name`` for ``owner`` (again is fine); DeviceBusy when another holds it."""
        with self._lock:
            holder = self._holders.get(name)
            if holder is not None and holder is not owner:
                raise DeviceBusy(f"{name} is in use by another session")
            self._holders[name] = owner

    def let_go(self, name: str, owner: object) -> bool:
        """Release ``name`` if ``owner`` holds it; True when it did."""
        with self._lock:
            if self._holders.get(name) is not owner:
                return False
            del self._holders[name]
            return True

    def holder(self, name: str) -> object | None:
        return self._holders.get(name)
