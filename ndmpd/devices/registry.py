"""The server's tape drives, and which session holds each (the only shared device state)."""

from __future__ import annotations

import threading
from typing import Callable

from ..config import Tape
from ..keystore import Keystore
from .sealed_records import CartridgeKeys
from .st_tape import LinuxTape
from .holders import Holders
from .medium import Location
from .tape import TapeDevice
from .virtual_tape import VirtualTape


def make_drive(tape: Tape) -> TapeDevice:
    """The backend for one configured ``[[tape]]``."""
    if tape.kind == "st":
        return LinuxTape(tape.name, str(tape.path), tape.block_size, tape.max_block_size)
    keys = CartridgeKeys(tape.name, Keystore(tape.keys) if tape.keys else None, tape.encryption_key)
    return VirtualTape(tape.name, home_cartridge(tape), tape.capacity, tape.early_warning, keys)


def home_cartridge(tape: Tape) -> Location | None:
    """A standalone virtual drive's own cartridge: its file, or NAME/ in its store (None: a
    library's drive, empty until the library loads one)."""
    if tape.store is not None:
        from .s3_medium import S3Store         # boto3 only where a store is configured
        return S3Store(tape.store).cartridge(tape.name)
    return tape.path


class DriveRegistry:
    """Configured drives by name; a drive is held by at most one owner (a session) at a time."""

    def __init__(self, tapes: tuple[Tape, ...], factory: Callable[[Tape], TapeDevice] = make_drive) -> None:
        self._factory = factory
        self.configs = {t.name: t for t in tapes}
        self._drives = {t.name: factory(t) for t in tapes}
        self._locks = {t.name: threading.Lock() for t in tapes}
        self._holders = Holders()

    def __contains__(self, name: str) -> bool:
        return name in self._drives

    def reconfigured(self, tapes: tuple[Tape, ...]) -> "DriveRegistry":
        """The registry for a reloaded configuration. It shares this one's holders, so a drive a
        running session holds stays held; drives whose definition is unchanged keep their device
        and lock (a session of either configuration sees one drive), others get a fresh device."""
        new = DriveRegistry((), self._factory)
        new.configs = {t.name: t for t in tapes}
        for tape in tapes:
            same = self.configs.get(tape.name) == tape
            new._drives[tape.name] = self._drives[tape.name] if same else self._factory(tape)
            new._locks[tape.name] = self._locks[tape.name] if same else threading.Lock()
        new._holders = self._holders
        return new

    def acquire(self, name: str, owner: object, patience: float = 0.0) -> TapeDevice:
        """Reserve drive ``name`` for ``owner`` (KeyError: no such drive; DeviceBusy: held).
        ``patience``: how long to wait for a closed session still giving it back."""
        drive = self._drives[name]
        self._holders.claim(name, owner, patience)
        return drive

    def release(self, name: str, owner: object) -> None:
        """Give the drive back. A standalone virtual drive gets its cartridge back after an unload."""
        self._holders.let_go(name, owner)
        drive = self._drives[name]
        if isinstance(drive, VirtualTape) and not drive.loaded and drive.home is not None:
            drive.load(drive.home)

    def holder(self, name: str) -> object | None:
        return self._holders.holder(name)

    def drive(self, name: str) -> TapeDevice:
        return self._drives[name]

    def lock(self, name: str) -> threading.Lock:
        """Held around every call on drive ``name``: its holder's TAPE_* requests, its mover,
        and a library swapping its cartridge, so a robot never pulls a tape mid-record."""
        return self._locks[name]

    def change_cartridge(self, name: str, path: Location | None) -> None:
        """A library moved a cartridge into (``path``) or out of (None) virtual drive ``name``."""
        drive = self._drives[name]
        if not isinstance(drive, VirtualTape):
            return
        with self._locks[name]:
            if drive.path == path:
                return
            if path is None:
                drive.unload()
            else:
                drive.load(path)
