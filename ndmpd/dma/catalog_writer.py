"""A backup's file history rows written by a child process, so the insert runs beside the DMA.

sqlite3 holds the GIL while it binds each row and lets go of it for each step, so a writer
thread and the recorder's thread reading FH posts took turns instead of running together:
the insert rate was the sum of both costs. :class:`ProcessFileWriter` sends each batch
(``marshal``: 0.1 µs a row) down a pipe to ``python -m ndmpd.dma.catalog_writer DB N``,
which inserts it with :class:`~ndmpd.dma.catalog_sqlite.SqliteFileWriter` in its own
transaction (all or nothing, as before) and answers ``ok`` or ``error TEXT``. Up to
:data:`AHEAD` batches are in flight; a failure is raised by the next ``write`` or by
``close``. The child is in its own session (a terminal's Ctrl-C goes to the DMA, which
then finishes the history itself) and ends at end of input, so it never outlives its DMA.

Frames: a 4-byte big-endian length, then ``marshal.dumps(rows)`` (rows of bytes and ints).
"""

from __future__ import annotations

import marshal
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

AHEAD = 2                                  # batches sent before waiting for the oldest's answer
_LENGTH = struct.Struct(">I")


class CatalogWriteError(Exception):
    """The child could not store a batch (its message says why) or went away."""


class ProcessFileWriter:
    """:class:`~ndmpd.dma.catalog_history.FileWriter` whose inserts run in a child process."""

    def __init__(self, path: Path, backup_n: int) -> None:
        self._path, self._n = Path(path), int(backup_n)
        self._child: subprocess.Popen | None = None
        self._unanswered = 0

    def write(self, rows: list[tuple]) -> None:
        """Send one batch; raises if an earlier one failed."""
        child = self._child or self._start()
        frame = marshal.dumps(rows)
        try:
            child.stdin.write(_LENGTH.pack(len(frame)))
            child.stdin.write(frame)
            child.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise CatalogWriteError(self._gone(f"cannot send file history: {exc}")) from None
        self._unanswered += 1
        while self._unanswered > AHEAD:
            self._answer()

    def close(self) -> None:
        """Wait for every batch and the final entry count; raises the first failure."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()
        except OSError:
            pass
        try:
            while self._unanswered:
                self._answer(child)
            self._answer(child, final=True)
        finally:
            child.stdout.close()
            child.wait(timeout=60)

    def _start(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[2])      # this ndmpd, wherever it was imported from
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "ndmpd.dma.catalog_writer", str(self._path), str(self._n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, close_fds=True, env=env)
        return self._child

    def _answer(self, child: subprocess.Popen | None = None, final: bool = False) -> None:
        child = child or self._child
        line = child.stdout.readline().decode("utf-8", "replace").strip()
        if not final:
            self._unanswered -= 1
        if line in ("ok", "closed"):
            return
        raise CatalogWriteError(line[len("error "):] if line.startswith("error ") else
                                self._gone("the catalog writer ended without an answer"))

    def _gone(self, why: str) -> str:
        child = self._child
        code = child.poll() if child is not None else None
        return f"{why} (catalog writer exit status {code})" if code is not None else why


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def serve(path: Path, backup_n: int, frames: BinaryIO, answers: BinaryIO) -> int:
    """The child: insert each frame's rows, answer each; at end of input, close the writer."""
    from .catalog_sqlite import SqliteFileWriter

    writer = SqliteFileWriter(path, backup_n)
    while (head := _read_exact(frames, _LENGTH.size)) is not None:
        body = _read_exact(frames, _LENGTH.unpack(head)[0])
        if body is None:
            break
        try:
            writer.write(marshal.loads(body))
        except Exception as exc:  # noqa: BLE001 - the parent raises it
            answers.write(f"error {type(exc).__name__}: {exc}\n".encode())
            answers.flush()
            return 1
        answers.write(b"ok\n")
        answers.flush()
    try:
        writer.close()
    except Exception as exc:  # noqa: BLE001
        answers.write(f"error {type(exc).__name__}: {exc}\n".encode())
        answers.flush()
        return 1
    answers.write(b"closed\n")
    answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1]), int(sys.argv[2]), sys.stdin.buffer, sys.stdout.buffer))
