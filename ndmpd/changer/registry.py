"""The server's changers by name, and which session holds each (one at a time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..config import Changer
from ..devices.registry import DriveRegistry
from ..devices.holders import Holders
from .library import VirtualLibrary
from .sense import CdbResult
from .sg import SgDevice
from .smc import SmcEmulator


class ChangerDevice(Protocol):
    def execute(self, cdb: bytes, datain_len: int = 0, data_out: bytes = b"", timeout_ms: int = 0) -> CdbResult: ...
    def reset(self, bus: bool = False) -> None: ...
    def address(self) -> tuple[int, int, int]: ...
    def close(self) -> None: ...


class ChangerRegistry:
    """Virtual libraries live as long as the server; a real changer is opened per holder."""

    def __init__(self, changers: tuple[Changer, ...], drives: DriveRegistry,
                 open_sg: Callable[[str], ChangerDevice] = SgDevice) -> None:
        self.configs = {c.name: c for c in changers}
        self._drives = drives
        self._open_sg = open_sg
        self.libraries: dict[str, VirtualLibrary] = {}
        self._emulators: dict[str, SmcEmulator] = {}
        for c in changers:
            if c.kind == "virtual":
                library = VirtualLibrary(c.name, c.path, c.drives, c.slots, c.import_export,
                                         drives.change_cartridge)
                self.libraries[c.name] = library
                self._emulators[c.name] = SmcEmulator(library, self._drive_busy)
        self._holders = Holders()
        self._open: dict[str, ChangerDevice] = {}      # real changers, open while held

    def reconfigured(self, changers: tuple[Changer, ...], drives: DriveRegistry) -> "ChangerRegistry":
        """The registry for a reloaded configuration, sharing this one's holders (a changer a
        running session holds stays held). A virtual library whose definition and drives are
        unchanged is kept as it is; call :meth:`start` on the result to load new libraries' drives."""
        kept = {c.name for c in changers if self.configs.get(c.name) == c and c.kind == "virtual"
                and all(drives.configs.get(d) == self._drives.configs.get(d) for d in c.drives)}
        new = ChangerRegistry(tuple(c for c in changers if c.name not in kept), drives, self._open_sg)
        new.configs = {c.name: c for c in changers}
        for name in kept:
            new.libraries[name] = self.libraries[name]
            new._emulators[name] = self._emulators[name]
        new._holders = self._holders
        new._open = self._open
        return new

    def start(self) -> None:
        """Load every library drive with the cartridge the saved state puts there."""
        for library in self.libraries.values():
            library.sync_drives()

    def _drive_busy(self, name: str) -> bool:
        holder = self._drives.holder(name)
        mover = getattr(holder, "mover", None)
        return bool(mover is not None and mover.owns_tape())

    def __contains__(self, name: str) -> bool:
        return name in self.configs

    def acquire(self, name: str, owner: object, patience: float = 0.0) -> ChangerDevice:
        """Reserve changer ``name`` (KeyError: none such; DeviceBusy: held; OSError: cannot open).
        ``patience``: how long to wait for a closed session still giving it back."""
        config = self.configs[name]
        self._holders.claim(name, owner, patience)
        if config.kind == "virtual":
            return self._emulators[name]
        device = self._open.get(name)            # only the holder gets here
        if device is None:
            try:
                device = self._open[name] = self._open_sg(str(config.path))
            except OSError:
                self._holders.let_go(name, owner)
                raise
        return device

    def release(self, name: str, owner: object) -> None:
        if not self._holders.let_go(name, owner):
            return
        device = self._open.pop(name, None)
        if device is not None:
            device.close()
