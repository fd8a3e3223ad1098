"""What the pump needs of the mover it runs for: the narrow interface it reports through.

The pump (mover/pump.py) moves bytes; the NDMP mover (services/mover.py) owns the state
machine. The pump sees only this Protocol, so it depends on no service module and the
services import the pump, never the other way round.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol


class Halted(Exception):
    """The mover left ACTIVE/PAUSED for good (abort, close, error)."""


class MoverPort(Protocol):
    """The mover's window, positions and the calls the pump reports through."""

    record_size: int
    position: int            # image offset of the next byte to write (backup)
    window_offset: int
    seek_position: int       # image offset of the next byte to send (recover)
    bytes_left_to_read: int
    head_record: int         # image record number under the tape head (recover)

    @property
    def halted(self) -> bool: ...

    @property
    def window_end(self) -> int: ...

    def tape(self) -> AbstractContextManager[Any]:
        """The device under the drive's lock; raises :class:`Halted` once the mover halted."""

    def advanced(self, record_bytes: int, data_bytes: int, records: int = 1) -> None:
        """Records were written to tape."""

    def delivered(self, count: int) -> None:
        """``count`` bytes are about to go to the data connection."""

    def wait_for_read(self, timeout: float) -> bool:
        """True when a MOVER_READ is outstanding (waits up to ``timeout``)."""

    def pause(self, reason: int, peer_closed: Callable[[], bool] | None = None) -> None:
        """Pause with ``reason`` until CONTINUE (returns) or a halt (raises :class:`Halted`)."""

    def halt(self, reason: int, why: str = "") -> None:
        """Halt with ``reason`` and post NOTIFY_MOVER_HALTED, preceded by a LOG_MESSAGE
        saying ``why`` (always one for a media error: the device's reason)."""
