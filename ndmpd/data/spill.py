"""Posts that wait on disk while the DMA is slow to read them.

File history must neither stall the data stream nor grow in memory without bound when a
DMA stops reading its control connection; encoded posts beyond the in-flight window go
to an unlinked temporary file and leave it in order as the window opens.
"""

from __future__ import annotations

import os
import struct
import tempfile

_HEAD = struct.Struct(">II")           # message code, body length


class Spill:
    """A FIFO of encoded posts in an anonymous file (gone when closed or the process ends)."""

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._fd = -1
        self._write_at = 0
        self._read_at = 0
        self.count = 0
        self.spilled_bytes = 0          # all that ever went to disk (for the log)

    def push(self, code: int, body: bytes) -> None:
        if self._fd < 0:
            self._fd, path = tempfile.mkstemp(prefix="ndmpd-fh-", dir=self._directory)
            os.unlink(path)
        record = _HEAD.pack(code, len(body)) + body
        os.pwrite(self._fd, record, self._write_at)
        self._write_at += len(record)
        self.spilled_bytes += len(record)
        self.count += 1

    def pop(self) -> tuple[int, bytes]:
        """The oldest post still waiting."""
        if not self.count:
            raise IndexError("the spill is empty")
        code, length = _HEAD.unpack(os.pread(self._fd, _HEAD.size, self._read_at))
        body = os.pread(self._fd, length, self._read_at + _HEAD.size)
        self._read_at += _HEAD.size + length
        self.count -= 1
        if not self.count:              # caught up: start the file again
            os.ftruncate(self._fd, 0)
            self._write_at = self._read_at = 0
        return code, body

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.count = 0
