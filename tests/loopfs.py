"""Real filesystems on loop devices for tests (root only; skips with the reason elsewhere)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def sh(*argv: str) -> subprocess.CompletedProcess:
    """Run a command, capturing its text output, bounded in time."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def btrfs_mount(tmp_path: Path, name: str = "mnt", size: int = 320 << 20) -> Iterator[Path]:
    """A fresh btrfs on a loop device (image ``NAME.img``) mounted at ``tmp_path/NAME``,
    unmounted afterwards; several in one test need distinct names."""
    if os.geteuid() != 0:
        pytest.skip("btrfs on a loop device needs root (loop device, mount)")
    if not shutil.which("mkfs.btrfs"):
        pytest.skip("btrfs-progs is not installed")
    image, mnt = tmp_path / f"{name}.img" if name != "mnt" else tmp_path / "btrfs.img", tmp_path / name
    with open(image, "wb") as f:
        f.truncate(size)
    mnt.mkdir()
    assert sh("mkfs.btrfs", "-q", str(image)).returncode == 0
    mounted = sh("mount", "-o", "loop", str(image), str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        sh("umount", "-l", str(mnt))


@contextlib.contextmanager
def btrfs_subvolume(tmp_path: Path, size: int = 320 << 20) -> Iterator[Path]:
    """A fresh btrfs on a loop device with one subvolume ``vol``, unmounted afterwards."""
    with btrfs_mount(tmp_path, size=size) as mnt:
        assert sh("btrfs", "subvolume", "create", str(mnt / "vol")).returncode == 0
        yield mnt / "vol"


@contextlib.contextmanager
def ext4_mount(tmp_path: Path, name: str = "ext4", size: int = 64 << 20) -> Iterator[Path]:
    """A fresh ext4 on a loop device (image ``NAME.img``) mounted at ``tmp_path/NAME``."""
    if os.geteuid() != 0:
        pytest.skip("ext4 on a loop device needs root (loop device, mount)")
    if not shutil.which("mkfs.ext4"):
        pytest.skip("e2fsprogs is not installed")
    image, mnt = tmp_path / f"{name}.img", tmp_path / name
    with open(image, "wb") as f:
        f.truncate(size)
    mnt.mkdir()
    assert sh("mkfs.ext4", "-q", "-F", str(image)).returncode == 0
    mounted = sh("mount", "-o", "loop", str(image), str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        sh("umount", "-l", str(mnt))


@contextlib.contextmanager
def tmpfs_mount(tmp_path: Path, name: str = "tmpfs", size: int = 64 << 20) -> Iterator[Path]:
    """A fresh tmpfs of its own mounted at ``tmp_path/NAME`` (a filesystem-wide watch on it
    sees only the test's changes)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / name
    mnt.mkdir()
    mounted = sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        sh("umount", "-l", str(mnt))
