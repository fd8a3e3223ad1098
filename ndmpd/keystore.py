"""Cartridge encryption keys: 32 random bytes per key version, in mode-600 files.

Layout: ``<state_dir>/keys/NAME/vN.key`` (N = 1, 2, ...; the highest is the version new
cartridges get), or one file per name given in the config's ``[keys]`` table. A cartridge
names the *id* of the key it was sealed with (a hash of the key, see ``sealing.key_id``), so
any version of any name that is still kept opens it: rotating a key leaves the old versions
in place for the cartridges written with them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .durable import sync_directory, write_synced


KEY_SIZE = 32                       # AES-256 (sealing.py checks it too)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_VERSION = re.compile(r"^v([1-9][0-9]{0,8})\.key$")


class KeystoreError(Exception):
    """A key cannot be created, found or read; the message says which and why."""


@dataclass(frozen=True)
class KeySource:
    """Where keys live (plain data, part of the configuration)."""

    directory: Path                                  # <state_dir>/keys
    files: tuple[tuple[str, Path], ...] = ()         # [keys] NAME = "path"


@dataclass(frozen=True)
class Key:
    """One version of a named key, read from the keystore."""

    name: str
    version: int
    path: Path
    material: bytes

    @property
    def id(self) -> bytes:
        from .devices.sealing import key_id      # the cipher package only where keys are used
        return key_id(self.material)

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    @property
    def created(self) -> float:
        return self.path.stat().st_mtime


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise KeystoreError(f"key name {name!r}: 1 to 32 letters, digits, '.', '_' or '-'")
    return name


def read_key_file(path: Path, name: str, version: int = 1) -> Key:
    """A key file: exactly 32 bytes, readable by its owner only."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeystoreError(f"key {name}: {path} is readable by others (mode {mode:o}); chmod 600 it")
        data = path.read_bytes()
    except OSError as exc:
        raise KeystoreError(f"key {name}: cannot read {path}: {exc.strerror}") from None
    if len(data) != KEY_SIZE:
        raise KeystoreError(f"key {name}: {path} holds {len(data)} bytes, not a {KEY_SIZE}-byte key")
    return Key(name, version, path, data)


class Keystore:
    """The keys of one server: reading them by name or id, creating and rotating them."""

    def __init__(self, source: KeySource) -> None:
        self.source = source
        self._files = dict(source.files)

    def _versions(self, name: str) -> list[tuple[int, Path]]:
        folder = self.source.directory / name
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeystoreError(f"key {name}: cannot read {folder}: {exc.strerror}") from None
        found = [(int(m.group(1)), folder / n) for n in names if (m := _VERSION.match(n))]
        return sorted(found)

    def names(self) -> list[str]:
        try:
            stored = [n for n in os.listdir(self.source.directory)
                      if NAME_PATTERN.match(n) and self._versions(n)]
        except FileNotFoundError:
            stored = []
        return sorted(set(stored) | set(self._files))

    def versions(self, name: str) -> list[Key]:
        """Every kept version of ``name``, oldest first."""
        if name in self._files:
            return [read_key_file(self._files[name], name)]
        return [read_key_file(path, name, version) for version, path in self._versions(name)]

    def current(self, name: str) -> Key:
        """The version new cartridges are sealed with."""
        versions = self.versions(name)
        if not versions:
            raise KeystoreError(f"key {name}: no such key (create it with 'ndmpd key create {name}')")
        return versions[-1]

    def by_id(self, wanted: bytes) -> Key | None:
        """The kept key with this id, whatever its name and version."""
        for name in self.names():
            try:
                for key in self.versions(name):
                    if key.id == wanted:
                        return key
            except KeystoreError:
                continue
        return None

    def unreadable(self) -> list[str]:
        """Why each key that cannot be read cannot (a mode open to others, a short file):
        :meth:`by_id` passes over them, so a missing-key message names them, as one of them
        may be the key wanted."""
        problems = []
        for name in self.names():
            try:
                self.versions(name)
            except KeystoreError as exc:
                problems.append(str(exc))
        return problems

    def create(self, name: str) -> Key:
        """A new key NAME (version 1); refuses a name that exists."""
        check_name(name)
        if name in self._files:
            return self._write_file(name, self._files[name])
        if self._versions(name):
            raise KeystoreError(f"key {name}: exists already (use 'ndmpd key rotate {name}' for a new version)")
        return self._write(name, 1)

    def rotate(self, name: str) -> Key:
        """A new version of NAME for new cartridges; the old versions stay for reading."""
        if name in self._files:
            raise KeystoreError(f"key {name}: kept in {self._files[name]} (config [keys]); rotate it by creating "
                            "a new key and switching encryption_key to it")
        versions = self._versions(check_name(name))
        if not versions:
            raise KeystoreError(f"key {name}: no such key (create it with 'ndmpd key create {name}')")
        return self._write(name, versions[-1][0] + 1)

    def _write_file(self, name: str, path: Path) -> Key:
        """A key at the path the config's [keys] gives it."""
        return Key(name, 1, path, _install(path, name))

    def _write(self, name: str, version: int) -> Key:
        folder = self.source.directory / name
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"v{version}.key"
        return Key(name, version, path, _install(path, name))


def _install(path: Path, name: str) -> bytes:
    """A new key's 32 random bytes, in ``path`` (mode 600) whole or not at all: written to a
    temporary file, synced, then linked into place (never over an existing file)."""
    material = os.urandom(KEY_SIZE)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_synced(tmp, material, exclusive=True)
    except OSError as exc:
        raise KeystoreError(f"key {name}: cannot create {path}: {exc.strerror}") from None
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KeystoreError(f"key {name}: {path} exists already") from None
    finally:
        tmp.unlink()
    sync_directory(path.parent)
    return material
