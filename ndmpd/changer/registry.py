"""The server's changers by name, shared by every session that opens one.

A real changer behind ``sg`` accepts several openers, so SCSI_OPEN of a changer never
refuses for another session: each changer has one lock, and every CDB (and reset) on it
runs under that lock, so a MOVE MEDIUM is never interleaved with another session's
command and the library's state never sees interleaved writes. Each session gets its own
handle; on a virtual library it is its own initiator (its own sense data and removal lock,
see changer/smc.py), and a real changer's device is opened once, for the first opener, and
closed after the last.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from ..config import Changer
from ..devices.registry import DriveRegistry
from .library import VirtualLibrary
from .sense import CdbResult
from .sg import SgDevice
from .smc import SmcEmulator


class ChangerDevice(Protocol):
    def execute(self, cdb: bytes, datain_len: int = 0, data_out: bytes = b"", timeout_ms: int = 0) -> CdbResult: ...
    def reset(self, bus: bool = False) -> None: ...
    def address(self) -> tuple[int, int, int]: ...
    def close(self) -> None: ...


class SerialisedChanger:
    """One session's handle on a changer: its calls run one at a time with every other
    session's on the same changer (``lock``). Closing the handle leaves the device open."""

    def __init__(self, device: ChangerDevice, lock: threading.Lock) -> None:
        self._device, self._lock = device, lock

    def execute(self, cdb: bytes, datain_len: int = 0, data_out: bytes = b"", timeout_ms: int = 0) -> CdbResult:
        with self._lock:
            return self._device.execute(cdb, datain_len, data_out, timeout_ms)

    def reset(self, bus: bool = False) -> None:
        with self._lock:
            self._device.reset(bus)

    def address(self) -> tuple[int, int, int]:
        with self._lock:
            return self._device.address()

    def close(self) -> None:
        """The registry closes the device itself after its last opener."""


class Openers:
    """Who has each changer open, each changer's lock, and the real changers' open devices;
    shared by a registry and the ones reloads make from it."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.sessions: dict[str, dict[object, ChangerDevice]] = {}     # changer -> opener -> its device
        self.locks: dict[str, threading.Lock] = {}
        self.devices: dict[str, ChangerDevice] = {}

    def lock(self, name: str) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(name, threading.Lock())


class ChangerRegistry:
    """Virtual libraries live as long as the server; a real changer is open while any session has it open."""

    def __init__(self, changers: tuple[Changer, ...], drives: DriveRegistry,
                 open_sg: Callable[[str], ChangerDevice] = SgDevice) -> None:
        self.configs = {c.name: c for c in changers}
        self._drives = drives
        self._open_sg = open_sg
        self.libraries: dict[str, VirtualLibrary] = {}
        for c in changers:
            if c.kind == "virtual":
                self.libraries[c.name] = VirtualLibrary(c.name, c.path, c.drives, c.slots, c.import_export,
                                                        drives.change_cartridge)
        self._openers = Openers()

    def reconfigured(self, changers: tuple[Changer, ...], drives: DriveRegistry) -> "ChangerRegistry":
        """The registry for a reloaded configuration, sharing this one's openers and locks (a
        changer a running session has open stays open, and its CDBs stay serialised with the
        new sessions'). A virtual library whose definition and drives are unchanged is kept as
        it is; call :meth:`start` on the result to load new libraries' drives."""
        kept = {c.name for c in changers if self.configs.get(c.name) == c and c.kind == "virtual"
                and all(drives.configs.get(d) == self._drives.configs.get(d) for d in c.drives)}
        new = ChangerRegistry(tuple(c for c in changers if c.name not in kept), drives, self._open_sg)
        new.configs = {c.name: c for c in changers}
        for name in kept:
            new.libraries[name] = self.libraries[name]
        new._openers = self._openers
        return new

    def start(self) -> None:
        """Load every library drive with the cartridge the saved state puts there, and end the
        removal locks of initiators no longer connected (a previous run's sessions)."""
        for name, library in self.libraries.items():
            library.sync_drives()
            with self._openers.guard:
                alive = {getattr(d, "initiator", "") for d in self._openers.sessions.get(name, {}).values()}
            with self._openers.lock(name), library.state() as state:
                state.keep_preventers(alive)

    def _drive_busy(self, name: str) -> bool:
        holder = self._drives.holder(name)
        mover = getattr(holder, "mover", None)
        return bool(mover is not None and mover.owns_tape())

    def __contains__(self, name: str) -> bool:
        return name in self.configs

    def acquire(self, name: str, owner: object) -> ChangerDevice:
        """Open changer ``name`` for ``owner``, alongside any other session that has it open
        (KeyError: none such; OSError: the real changer cannot be opened)."""
        config = self.configs[name]
        openers = self._openers
        lock = openers.lock(name)
        with openers.guard:
            sessions = openers.sessions.setdefault(name, {})
            device = sessions.get(owner)
            if device is None and config.kind == "virtual":
                device = SmcEmulator(self.libraries[name], self._drive_busy)
            elif device is None:
                device = openers.devices.get(name) or self._open_sg(str(config.path))
                openers.devices[name] = device
            sessions[owner] = device
        return SerialisedChanger(device, lock)

    def release(self, name: str, owner: object) -> None:
        """``owner`` closes changer ``name``: a virtual library forgets its initiator's state, a
        real changer's device closes after its last opener."""
        openers = self._openers
        with openers.guard:
            sessions = openers.sessions.get(name, {})
            if owner not in sessions:
                return
            device: ChangerDevice | None = sessions.pop(owner)
            if device is openers.devices.get(name):
                device = openers.devices.pop(name) if not sessions else None
            lock = openers.locks[name]
        if device is not None:
            with lock:              # after a command another session still had running
                device.close()

    def open_count(self, name: str) -> int:
        """How many sessions have changer ``name`` open."""
        with self._openers.guard:
            return len(self._openers.sessions.get(name, ()))
