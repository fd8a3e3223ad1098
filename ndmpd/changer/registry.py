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
from dataclasses import dataclass
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
        """Not under the lock: identifying the device is no command on it, and SCSI_GET_STATE
        asks on the event loop, which must not wait for another session's MOVE MEDIUM."""
        return self._device.address()

    def close(self) -> None:
        """The registry closes the device itself after its last opener."""


@dataclass(frozen=True)
class Opened:
    """A session's open changer: the device it reaches and the path that was opened."""

    device: ChangerDevice
    path: str


class Openers:
    """Who has each changer open, and per changer path (one physical changer or library
    directory, whatever a reload names it) its lock and, for a real one, its open device;
    shared by a registry and the ones reloads make from it."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.sessions: dict[str, dict[object, Opened]] = {}            # changer -> opener -> what it opened
        self.locks: dict[str, threading.Lock] = {}                     # path -> lock
        self.devices: dict[str, ChangerDevice] = {}                    # path -> open sg device

    def lock(self, path: str) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(path, threading.Lock())

    def in_use(self, path: str) -> bool:
        """Whether any session still has the changer at ``path`` open (call under ``guard``)."""
        return any(o.path == path for openers in self.sessions.values() for o in openers.values())


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
                                                        drives.change_cartridge, c.store)
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
            with self._lock(name):          # no session opens and prevents between the two
                with self._openers.guard:
                    alive = {getattr(o.device, "initiator", "") for o in self._openers.sessions.get(name, {}).values()}
                with library.state() as state:
                    state.keep_preventers(alive)

    def _lock(self, name: str) -> threading.Lock:
        return self._openers.lock(str(self.configs[name].path))

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
        path, openers = str(config.path), self._openers
        lock = openers.lock(path)
        with openers.guard:
            sessions = openers.sessions.setdefault(name, {})
            opened = sessions.get(owner)
            if opened is None and config.kind == "virtual":
                opened = Opened(SmcEmulator(self.libraries[name], self._drive_busy), path)
            elif opened is None:
                opened = Opened(openers.devices.get(path) or self._open_sg(path), path)
                openers.devices[path] = opened.device
            sessions[owner] = opened
        return SerialisedChanger(opened.device, lock)

    def release(self, name: str, owner: object) -> None:
        """``owner`` closes changer ``name``: a virtual library forgets its initiator's state, a
        real changer's device closes after its last opener (of the path it was opened at:
        a reload may have moved the changer since)."""
        openers = self._openers
        with openers.guard:
            sessions = openers.sessions.get(name, {})
            if owner not in sessions:
                return
            opened = sessions.pop(owner)
            device, path = opened.device, opened.path
            if openers.devices.get(path) is device:
                if openers.in_use(path):
                    return              # another session still has the real changer open
                del openers.devices[path]
            lock = openers.locks[path]
        with lock:                  # after a command another session still had running
            device.close()

    def open_count(self, name: str) -> int:
        """How many sessions have changer ``name`` open."""
        with self._openers.guard:
            return len(self._openers.sessions.get(name, ()))
