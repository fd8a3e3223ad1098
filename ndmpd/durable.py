"""Files that must survive a crash whole: written, synced, then made visible."""

from __future__ import annotations

import os
from pathlib import Path


def write_synced(path: Path, data: bytes, exclusive: bool = False) -> None:
    """``data`` in ``path`` (mode 600), on the disk before this returns; ``exclusive``: the
    file must not exist yet (FileExistsError)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename or link into it) durable."""
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
