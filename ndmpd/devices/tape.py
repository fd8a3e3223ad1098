"""The tape device interface every backend implements, with Linux ``st`` semantics.

A backend behaves like a Linux non-rewinding tape device: reading or spacing forward over
a filemark leaves the head *after* it; spacing backward over one leaves it *before* it
with the block number unknown. Protocol-version differences (NDMPv4 keeps the head in
front of a filemark) are layered on top by the TAPE service, never here. This module does
not import protocol code: its errors are device facts that the service maps to NDMP errors.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass


class TapeError(Exception):
    """A device operation failed; subclasses say why."""


class NoMedium(TapeError):
    """No cartridge in the drive."""


class DeviceBusy(TapeError):
    """Another process holds the device (or the cartridge file)."""


class WriteProtected(TapeError):
    """The cartridge refuses writes."""


class NotWritable(TapeError):
    """The device was opened for reading only."""


class FilemarkReached(TapeError):
    """A read met a filemark; the head is now just past it."""


class EndOfData(TapeError):
    """A read met the end of recorded data (blank tape follows)."""


class EndOfMedium(TapeError):
    """A write did not happen because of the end of the medium: :class:`EarlyWarning` or
    :class:`PhysicalEnd` say which (``early`` tells them apart without importing both).

    ``written``: the records of a :meth:`TapeDevice.write_records` batch that went out
    before it (the warning is the caller's to act on, never lost inside a batch)."""

    early = False
    written = 0


class EarlyWarning(EndOfMedium):
    """The write would enter the early-warning zone (logical end of medium).

    Reported once per zone; the writes after it go through, so a DMA can close the tape
    with a trailer, until the physical end."""

    early = True

    def __init__(self, detail: str = "early warning: logical end of medium") -> None:
        super().__init__(detail)


class PhysicalEnd(EndOfMedium):
    """The record does not fit on the medium: nothing of it was written, and every later
    write at this position is refused too (only a rewind, a backward space or another
    cartridge makes room again). Filemarks that still fit may close the tape file."""

    def __init__(self, detail: str = "physical end of medium: the cartridge is full") -> None:
        super().__init__(detail)


class MediaError(TapeError):
    """The medium cannot be read or written here (corrupt cartridge, drive I/O error)."""


class Stop(enum.Enum):
    """Why a space operation stopped before its count was done."""

    NONE = "none"
    FILEMARK = "filemark"       # crossed one (st semantics) and stopped
    BOT = "bot"
    EOD = "eod"


@dataclass(frozen=True)
class SpaceResult:
    resid: int                  # repetitions not performed
    stop: Stop = Stop.NONE


@dataclass(frozen=True)
class TapeStatus:
    """What TAPE_GET_STATE reports; ``None`` means the backend cannot tell."""

    file_num: int | None
    blockno: int | None
    block_size: int             # 0: variable block mode
    total_space: int | None
    space_remain: int | None
    write_protected: bool
    soft_errors: int | None = 0
    loaded: bool = True


class TapeDevice(ABC):
    """One tape drive. Not thread-safe: one owner (a session or its mover) at a time."""

    name: str

    @abstractmethod
    def open(self, write: bool) -> None:
        """Make the drive usable; ``write`` asks for write access (WriteProtected, NoMedium)."""

    @abstractmethod
    def close(self) -> None:
        """Release the drive, writing a filemark if the last operation was a write (as st does)."""

    @abstractmethod
    def read_record(self, limit: int) -> bytes:
        """The next record, at most ``limit`` bytes (the rest of a longer record is skipped)."""

    def read_record_into(self, buffer: memoryview) -> int:
        """Read the next record into ``buffer``; returns its length (hot path for the mover)."""
        data = self.read_record(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    @abstractmethod
    def write_record(self, data: bytes | memoryview) -> None:
        """Write one record at the head; everything after it is lost (tape semantics)."""

    def write_records(self, data: memoryview, size: int) -> int:
        """Write ``len(data) // size`` records of ``size`` bytes; returns how many went out.

        At the first record that meets end of medium it raises that EndOfMedium with
        ``written`` set to the records before it (the mover's hot path: backends may write
        a whole batch with one system call)."""
        count = len(data) // size
        for done in range(count):
            try:
                self.write_record(data[done * size:(done + 1) * size])
            except EndOfMedium as exc:
                exc.written = done
                raise
        return count

    def flush(self) -> None:
        """Wait until every record written so far is on the medium as far as the device can
        tell (no write of it still pending); TapeError when one failed. A no-op for drives
        that write each record before the call returns."""

    @abstractmethod
    def write_filemarks(self, count: int) -> None:
        """Write ``count`` filemarks (never refused for early warning)."""

    @abstractmethod
    def space_records(self, count: int) -> SpaceResult:
        """Skip ``count`` records forward (negative: backward), stopping at a filemark/BOT/EOD."""

    @abstractmethod
    def space_filemarks(self, count: int) -> SpaceResult:
        """Skip ``count`` filemarks forward (after the last) or backward (before the last)."""

    @abstractmethod
    def rewind(self) -> None:
        """Back to the beginning of tape."""

    @abstractmethod
    def unload(self) -> None:
        """Rewind and eject; the drive is empty until a cartridge is loaded again."""

    @abstractmethod
    def status(self) -> TapeStatus:
        """Position, block size, space and protection."""

    @property
    @abstractmethod
    def loaded(self) -> bool:
        """A cartridge is in the drive."""
