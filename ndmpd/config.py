"""The server configuration: a typed, validated view of ``ndmpd.toml``, loaded once and passed in.

Every problem is reported as one :class:`ConfigError` line naming the key (``volume[1].path``),
so ``ndmpd serve`` and ``ndmpd check-config`` can fail with a clear message and no traceback.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from .secret_file import read_secret

if TYPE_CHECKING:      # keys, stores and IPv6 listeners import their parsers when a file has them:
    from .keystore import KeySource     # ``ndmpd dump``'s start-up is most of a small incremental
    from .store_config import StoreConfig
from .tomlfile import parse_toml

AUTH_METHODS = ("md5", "text", "none")
SNAPSHOT_MODES = ("auto", "btrfs", "lvm", "none")
TAPE_KINDS = ("virtual", "st")
CHANGER_KINDS = ("virtual", "sg")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_PORT = 10000
MIN_RECORD_SIZE = 64 << 10         # server.max_record_size
MIN_CAPACITY = 1 << 20             # tape.capacity: smaller is a typo (a bare 20 is 20 bytes)
MIN_EARLY_WARNING = 64 << 10       # tape.early_warning: room for a DMA's trailer records
MIN_BLOCK_LIMIT = 10 << 10         # tape.max_block_size: tar's record; less refuses every usual DMA


class ConfigError(ValueError):
    """One line that says which key is wrong and why."""


@dataclass(frozen=True)
class ListenAddress:
    """An address and port to accept NDMP connections on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class User:
    """A user the server accepts (text or MD5 auth)."""

    name: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Volume:
    """A directory a DMA can back up by name."""

    name: str                  # the FILESYSTEM a DMA names
    path: Path                 # where it is on this host
    snapshot: str = "auto"
    replica: bool = False      # a read-only replica of another volume (ndmpd/replica/): P is switched in whole
    keep: int = 3              # replica states kept for rollback (replica volumes only)
    journal: bool = False      # watch it with fanotify (root): a replication update lists only what changed


@dataclass(frozen=True)
class Tape:
    """A tape drive a DMA can open: a virtual cartridge drive or a Linux st device."""

    name: str                  # the device name a DMA opens
    kind: str
    path: Path | None          # None: a library's drive, empty until the library loads it
    capacity: int              # bytes
    early_warning: int | None = None   # virtual: size of the early-warning zone (None: 1/20, <= 64 MiB)
    block_size: int = 0        # 0: variable block mode
    max_block_size: int = 4 << 20      # largest record a TAPE_WRITE may carry
    encryption_key: str | None = None  # virtual: seal what is written from BOT with this key (a name)
    keys: KeySource | None = None      # virtual: where the keys that open sealed cartridges live
    store: StoreConfig | None = None   # virtual: its cartridge is NAME/ in this S3 bucket, not a file


@dataclass(frozen=True)
class Changer:
    """A media changer a DMA can open: the virtual library or a SCSI generic device."""

    name: str                  # the SCSI device name a DMA opens
    kind: str                  # virtual | sg
    path: Path                 # virtual: directory of cartridges and state; sg: /dev/sgN
    drives: tuple[str, ...] = ()   # [[tape]] names, in data transfer element order
    slots: int = 8
    import_export: int = 1
    encryption_key: str | None = None  # virtual: the default encryption_key of its drives
    store: StoreConfig | None = None   # virtual: cartridges are BARCODE/ in this S3 bucket (state stays in path)


@dataclass(frozen=True)
class ServerSettings:
    """The [server] table: listeners, state, authentication and limits."""

    listen: tuple[ListenAddress, ...]
    state_dir: Path
    auth: tuple[str, ...]
    log_level: str = "info"
    max_record_size: int = 8 << 20
    max_sessions: int = 64
    max_version: int = 4
    metrics_listen: ListenAddress | None = None    # Prometheus endpoint; None: off
    login_timeout: float = 30.0          # seconds an unauthenticated connection may stay
    idle_timeout: float = 3600.0         # seconds an authenticated session may sit idle (0: never cut)
    max_logins_per_address: int = 8      # unauthenticated connections from one address
    max_pending_logins: int = 128        # unauthenticated connections in all (the oldest is cut for a new one)
    auth_failure_rate: float = 10.0      # failed logins per minute, per address and per user
    auth_failure_burst: int = 3          # failed logins allowed before the rate applies
    shutdown_timeout: float = 10.0       # seconds jobs get to stop on SIGTERM before ndmpd exits anyway
    tls_listen: tuple[ListenAddress, ...] = ()   # TLS control listeners (beside the plain ones)
    tls_certificate: Path | None = None  # this server's certificate: TLS listener and TLS data connections
    tls_key: Path | None = None          # its private key (not readable by others)


@dataclass(frozen=True)
class Config:
    """The whole configuration, loaded once and passed explicitly."""

    server: ServerSettings
    users: tuple[User, ...]
    volumes: tuple[Volume, ...]
    tapes: tuple[Tape, ...]
    changers: tuple[Changer, ...] = ()
    source: str = "<embedded default>"

    def user(self, name: str) -> User | None:
        return next((u for u in self.users if u.name == name), None)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtpe])(i)?(b)?|b)?\s*$", re.I)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_size(value: Any, key: str, minimum: int = 1) -> int:
    """A size in bytes, written as a number of bytes or with a unit, as written:
    SI "kB", "MB", "GB", "TB" are powers of 1000; IEC "KiB", "MiB", "GiB", "TiB" powers of 1024;
    a bare letter ("20G", "512M") is IEC, as in dd, truncate and sort. Below ``minimum`` is
    refused (``capacity = 20`` is 20 bytes, almost surely not what was meant)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size, written = value, str(value)
    else:
        m = _SIZE.match(value) if isinstance(value, str) else None
        if not m:
            raise ConfigError(f"{key}: expected a size such as \"10GiB\" or \"10GB\", got {value!r}")
        number, letter, iec, si = m.groups()
        scale = 1
        if not letter and "." in number:
            raise ConfigError(f"{key}: {value.strip()!r} is not a whole number of bytes; give a unit (\"1.5GiB\")")
        if letter:
            scale = (1000 if si and not iec else 1024) ** _POWERS[letter.lower()]
        size, written = int(float(number) * scale), value.strip()
    if size < minimum:
        hint = f"; did you mean \"{written}GiB\"?" if written.isdigit() and size else ""
        raise ConfigError(f"{key}: {written} is {size} bytes, below the minimum of {_show_size(minimum)}{hint}")
    return size


def _show_size(size: int) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << power and size % (1 << power) == 0:
            return f"{size >> power}{unit}"
    return f"{size} bytes"


def parse_listen(value: Any, key: str) -> ListenAddress:
    """'127.0.0.1:10000', '[::1]:10000', 'host:port', or a bare address (port 10000)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected \"ADDRESS:PORT\", got {value!r}")
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?|([0-9a-fA-F:]+)", value)
    if not m:
        raise ConfigError(f"{key}: cannot parse {value!r}; use \"127.0.0.1:10000\" or \"[::1]:10000\"")
    host = m.group(1) or m.group(3) or m.group(5)
    port = int(m.group(2) or m.group(4) or DEFAULT_PORT)
    if m.group(1) or m.group(5):
        import ipaddress
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{key}: {host!r} is not an IPv6 address") from None
    if not 0 <= port < 65536:           # 0: any free port (tests)
        raise ConfigError(f"{key}: port {port} out of range")
    return ListenAddress(host, port)


def _metrics_listen(value: str) -> ListenAddress | None:
    """``server.metrics_listen``: "" (off) or ADDRESS:PORT; a bare address has no default port."""
    if not value:
        return None
    if not re.fullmatch(r"\[[^\]]+\]:\d+|[^:\[\]]+:\d+", value):
        raise ConfigError(f"server.metrics_listen: give ADDRESS:PORT, such as \"127.0.0.1:9100\", got {value!r}")
    return parse_listen(value, "server.metrics_listen")


class _Table:
    """Reads one TOML table, remembering which keys were used to reject unknown ones.

    ``known`` names the table's keys: a key outside them is reported before any missing
    key (a typo ``pasword_file`` is named as unknown, with the close known key, rather than
    surfacing as ``password: missing``)."""

    def __init__(self, data: Any, where: str, known: frozenset[str] = frozenset()) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table")
        self.data, self.where, self.used = data, where, set()
        self.known = known

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required or default is ...:
                self.reject_unknown()
                raise ConfigError(f"{self.key(key)}: missing")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(f"{self.key(key)}: expected {names}, got {type(value).__name__}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError(f"{self.key(key)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def reject_unknown(self) -> None:
        """A key that is neither known nor read so far: one line naming it and the likely key."""
        valid = self.known | self.used
        unknown = sorted(k for k in self.data if k not in valid)
        if unknown:
            import difflib                # here: only a mistyped key needs it
            close = difflib.get_close_matches(unknown[0], sorted(valid), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{self.key(unknown[0])}: unknown key{hint}")

    def finish(self) -> None:
        self.reject_unknown()


def _keys(cls: type, *extra: str) -> frozenset[str]:
    """A table's keys: its dataclass's fields (new settings are known by adding the field)."""
    return frozenset(f.name for f in fields(cls)) | frozenset(extra)


TOP_KEYS = frozenset({"server", "user", "volume", "tape", "changer", "keys"})


def _is_world_readable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IROTH)


def _read_secret(path: Path, key: str) -> str:
    return read_secret(path, key, ConfigError,
                       lambda mode: "is world-readable; chmod o-r it" if mode & stat.S_IROTH else None)


def _unique(items: list[Any], what: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            raise ConfigError(f"{what}[{i}].name: duplicate name {item.name!r} (also {what}[{seen[item.name]}])")
        seen[item.name] = i


def _real(path: Path) -> str:
    """The path as the kernel will reach it: symlinks and ".." resolved (missing parts too)."""
    return os.path.realpath(path)


def _replica_path(path: Path, key: str) -> None:
    """A replica's path may not exist yet (the first update creates it), but its parent must be
    a directory on btrfs: the store beside it is snapshotted and exchanged into place."""
    if os.path.lexists(path) and not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a directory")
    if not path.parent.is_dir():
        raise ConfigError(f"{key}: {path.parent} (the directory holding the replica) does not exist")
    from .snapshots.mounts import mount_of     # here: only a replica's parent needs the mount table
    try:
        fstype = mount_of(path.parent).fstype
    except OSError as exc:
        raise ConfigError(f"{key}: cannot tell which filesystem {path.parent} is on: {exc}") from None
    if fstype != "btrfs":
        raise ConfigError(f"{key}: replica volumes must be on btrfs ({path.parent} is on {fstype})")


def _separate_volumes(volumes: list[Volume]) -> None:
    """No two volumes on one directory, and none inside another: a restore picks its volume
    by path, so overlapping volumes make that choice ambiguous, and a snapshot of the outer
    one would not even hold an inner btrfs subvolume (files silently missing from its dumps)."""
    seen: list[tuple[str, int]] = []
    for i, volume in enumerate(volumes):
        real = _real(volume.path)
        for other, j in seen:
            if real == other:
                raise ConfigError(f"volume[{i}].path: {volume.path} is the same directory as volume[{j}].path")
            inner, outer = (real, other) if len(real) > len(other) else (other, real)
            if inner.startswith(outer.rstrip("/") + "/"):
                raise ConfigError(f"volume[{i}].path: {volume.path} and volume[{j}].path ({volumes[j].path}) "
                                  "overlap; a directory belongs to one volume")
        seen.append((real, i))


def _one_device_per_path(paths: list[tuple[str, Path]]) -> None:
    """Two drives (or libraries) on one cartridge file or device would write over each other."""
    seen: dict[str, str] = {}
    for key, path in paths:
        real = _real(path)
        if real in seen:
            raise ConfigError(f"{key}: {path} is also {seen[real]}")
        seen[real] = key


def build(data: dict[str, Any], source: str, base: Path, file_world_readable: bool = False) -> Config:
    """Validate parsed TOML data; relative paths are taken from ``base``."""
    top = _Table(data, "", TOP_KEYS)
    top.reject_unknown()

    def rel(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else (base / path)

    srv = _Table(top.get("server", dict, {}), "server", _keys(ServerSettings))
    srv.reject_unknown()
    listen = srv.get("listen", list, ["127.0.0.1:10000"])
    if not listen:
        raise ConfigError("server.listen: needs at least one address")
    addresses = tuple(parse_listen(v, f"server.listen[{i}]") for i, v in enumerate(listen))
    auth = srv.get("auth", list, ["md5", "text"])
    for i, method in enumerate(auth):
        if method not in AUTH_METHODS:
            raise ConfigError(f"server.auth[{i}]: {method!r} is not one of {', '.join(AUTH_METHODS)}")
    if not auth:
        raise ConfigError("server.auth: needs at least one method")
    max_version = srv.get("max_version", int, 4)
    if max_version not in (2, 3, 4):
        raise ConfigError("server.max_version: must be 2, 3 or 4")
    max_sessions = srv.get("max_sessions", int, 64)
    if max_sessions < 1:
        raise ConfigError("server.max_sessions: must be at least 1")
    max_record = parse_size(srv.get("max_record_size", (int, str), 8 << 20), "server.max_record_size",
                            MIN_RECORD_SIZE)
    state_dir = rel(srv.get("state_dir", str, "/var/lib/ndmpd"))
    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"server.state_dir: {state_dir} is not a directory")
    settings = ServerSettings(
        listen=addresses,
        state_dir=state_dir,
        auth=tuple(dict.fromkeys(auth)),
        log_level=srv.choice("log_level", LOG_LEVELS, "info"),
        max_record_size=max_record,
        max_sessions=max_sessions,
        max_version=max_version,
        metrics_listen=_metrics_listen(srv.get("metrics_listen", str, "")),
        **_service_settings(srv),
        **_tls_settings(srv, rel, addresses),
    )
    srv.finish()

    users = []
    for i, raw in enumerate(top.get("user", list, [])):
        t = _Table(raw, f"user[{i}]", _keys(User, "password_file"))
        t.reject_unknown()
        name = t.get("name", str, required=True)
        if "password" in t.data and "password_file" in t.data:
            raise ConfigError(f"user[{i}]: give password or password_file, not both")
        if "password_file" in t.data:
            key = f"user[{i}].password_file"
            password = _read_secret(rel(t.get("password_file", str)), key)
        else:
            password = t.get("password", str, required=True)
            if file_world_readable:
                raise ConfigError(f"user[{i}].password: {source} is world-readable; chmod o-r it or use password_file")
        if not password:
            raise ConfigError(f"user[{i}].password: empty")
        t.finish()
        users.append(User(name, password))
    _unique(users, "user")
    if not users and settings.auth != ("none",):
        raise ConfigError(f"user: no [[user]] entry, but auth allows {', '.join(m for m in settings.auth if m != 'none')}")

    volumes = []
    for i, raw in enumerate(top.get("volume", list, [])):
        t = _Table(raw, f"volume[{i}]", _keys(Volume))
        t.reject_unknown()
        name = t.get("name", str, required=True)
        path = rel(t.get("path", str, required=True))
        replica = t.get("replica", bool, False)
        keep = t.get("keep", int, 3)
        if keep < 1:
            raise ConfigError(f"volume[{i}].keep: {keep} keeps no replica state; give 1 or more")
        if replica:
            _replica_path(path, f"volume[{i}].path")
        elif not path.is_dir():
            raise ConfigError(f"volume[{i}].path: {path} is not a directory")
        snapshot = t.choice("snapshot", SNAPSHOT_MODES, "auto")
        journal = t.get("journal", bool, False)
        if journal and replica:
            raise ConfigError(f"volume[{i}].journal: a replica changes only by updates; the journal is for masters")
        volumes.append(Volume(name, path, "none" if replica else snapshot, replica, keep, journal))
        t.finish()
    _unique(volumes, "volume")
    _separate_volumes(volumes)

    changers = [_changer(raw, i, rel) for i, raw in enumerate(top.get("changer", list, []))]
    _unique(changers, "changer")
    fed = {drive: c for c in changers if c.kind == "virtual" for drive in c.drives}
    key_files = top.get("keys", dict, {})
    key_source = (_key_source(key_files, settings.state_dir, rel)     # only drives use it: a file without
                  if key_files or "tape" in top.data else None)      # them (ndmpd dump's) skips the keystore
    tapes = []
    for i, raw in enumerate(top.get("tape", list, [])):
        t = _Table(raw, f"tape[{i}]", _keys(Tape) - {"keys"})
        t.reject_unknown()
        name = t.get("name", str, required=True)
        kind = t.choice("kind", TAPE_KINDS, "virtual")
        path: Path | None
        if kind == "st":
            path = rel(t.get("path", str, required=True))
            if not path.is_char_device():
                raise ConfigError(f"tape[{i}].path: {path} is not a tape device (a character device "
                                  "such as /dev/nst0)" if path.exists() else f"tape[{i}].path: {path} does not exist")
        elif name in fed:
            if "store" in t.data:
                raise ConfigError(f"tape[{i}].store: {name} is a drive of library {fed[name].name}, "
                                  "whose store keeps its cartridges; leave store out")
            if "path" in t.data:
                raise ConfigError(f"tape[{i}].path: {name} is a drive of library {fed[name].name}, "
                                  "which loads its cartridges; leave path out")
            path = None
        elif "store" in t.data:
            if "path" in t.data:
                raise ConfigError(f"tape[{i}].path: the cartridge of a drive with a store is {name}/ in the "
                                  "bucket; give path or store, not both")
            path = None
        else:
            path = rel(t.get("path", str, str(settings.state_dir / f"{name}.img")))
            if not path.parent.is_dir() and path.parent != settings.state_dir:
                raise ConfigError(f"tape[{i}].path: directory {path.parent} does not exist")
            if path.exists() and not path.is_file():
                raise ConfigError(f"tape[{i}].path: {path} is not a cartridge file "
                                  f"({'a directory' if path.is_dir() else 'not a regular file'}); "
                                  "name a file (created blank on first use)")
        capacity = parse_size(t.get("capacity", (int, str), "10GiB"), f"tape[{i}].capacity", MIN_CAPACITY)
        early = t.get("early_warning", (int, str), None)
        early = None if early is None else parse_size(early, f"tape[{i}].early_warning", MIN_EARLY_WARNING)
        if early is not None and early >= capacity:
            raise ConfigError(f"tape[{i}].early_warning: must be smaller than the capacity")
        block_size = t.get("block_size", (int, str), 0)
        block_size = block_size if block_size == 0 else parse_size(block_size, f"tape[{i}].block_size", 512)
        if block_size % 512:
            raise ConfigError(f"tape[{i}].block_size: 0 (variable) or a multiple of 512")
        max_block = parse_size(t.get("max_block_size", (int, str), min(4 << 20, settings.max_record_size - 1024)),
                               f"tape[{i}].max_block_size", MIN_BLOCK_LIMIT)
        if max_block > settings.max_record_size - 1024:
            raise ConfigError(f"tape[{i}].max_block_size: must fit in server.max_record_size")
        if block_size > max_block:
            raise ConfigError(f"tape[{i}].block_size: larger than max_block_size")
        encryption_key = _encryption_key(t, kind, fed.get(name))
        store = _store(t, kind, rel) if name not in fed else None
        tapes.append(Tape(name, kind, path, capacity, early, block_size, max_block, encryption_key,
                          key_source if kind == "virtual" else None, store))
        t.finish()
    _unique(tapes, "tape")
    _separate_stores([(f"tape[{i}].store", t.store, False) for i, t in enumerate(tapes)]
                     + [(f"changer[{i}].store", c.store, True) for i, c in enumerate(changers)])
    _one_device_per_path([(f"tape[{i}].path", t.path) for i, t in enumerate(tapes) if t.path is not None]
                         + [(f"changer[{i}].path", c.path) for i, c in enumerate(changers)])
    kinds = {t.name: t.kind for t in tapes}
    for i, changer in enumerate(changers):
        for drive in changer.drives:
            if drive not in kinds:
                raise ConfigError(f"changer[{i}].drives: no [[tape]] named {drive!r}")
            if changer.kind == "virtual" and kinds[drive] != "virtual":
                raise ConfigError(f"changer[{i}].drives: {drive} is not a virtual tape")
    every_drive = [drive for c in changers for drive in c.drives]
    if len(set(every_drive)) != len(every_drive):
        raise ConfigError("changer: a drive belongs to one library only")
    top.finish()
    return Config(settings, tuple(users), tuple(volumes), tuple(tapes), tuple(changers), source)


def _check_key_name(name: str, where: str) -> None:
    """keystore.check_name (imported only for a file that names keys), as a ConfigError."""
    from .keystore import KeystoreError, check_name
    try:
        check_name(name)
    except KeystoreError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _key_source(raw: dict[str, Any], state_dir: Path, rel: Callable[[str], Path]) -> KeySource:
    """``[keys]``: NAME = "path of its key file"; other keys live in <state_dir>/keys."""
    from .keystore import KeySource
    files = []
    for name, path in raw.items():
        _check_key_name(name, f"keys.{name}")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"keys.{name}: the path of a key file (a string)")
        files.append((name, rel(path)))
    return KeySource(state_dir / "keys", tuple(files))


def _store(table: _Table, kind: str, rel: Callable[[str], Path]) -> StoreConfig | None:
    """A ``store`` table: S3 keeps the cartridges (see store_config.py)."""
    raw = table.get("store", dict, None)
    if raw is None:
        return None
    if kind != "virtual":
        raise ConfigError(f"{table.key('store')}: only virtual cartridges live in an object store")
    from .store_config import StoreConfigError, parse_store
    try:
        return parse_store(raw, table.key("store"), rel, parse_size)
    except StoreConfigError as exc:
        raise ConfigError(str(exc)) from None


def _separate_stores(stores: list[tuple[str, StoreConfig | None, bool]]) -> None:
    """A library owns its store's prefix (its cartridges are named by barcode there); drives
    may share a prefix, each drive's cartridge being named after the drive."""
    owners: dict[tuple, list[tuple[str, bool]]] = {}
    for key, store, library in stores:
        if store is not None:
            owners.setdefault((store.endpoint, store.bucket, store.prefix), []).append((key, library))
    for users in owners.values():
        if len(users) > 1 and any(library for _, library in users):
            raise ConfigError(f"{users[1][0]}: the same bucket and prefix as {users[0][0]}; a library needs "
                              "a prefix of its own")


def _encryption_key(table: _Table, kind: str, library: "Changer | None") -> str | None:
    """A drive's key: its own encryption_key, else its library's. Whether the key exists is
    checked when a session opens the drive for writing (keys are created after the config)."""
    own = table.get("encryption_key", str, None)
    if own is not None and kind != "virtual":
        raise ConfigError(f"{table.key('encryption_key')}: only virtual tapes encrypt (st drives have "
                          "their own hardware encryption)")
    if own is not None and library is not None and library.encryption_key not in (None, own):
        raise ConfigError(f"{table.key('encryption_key')}: {own!r} differs from library {library.name}'s "
                          f"encryption_key {library.encryption_key!r}; give one")
    chosen = own if own is not None else library.encryption_key if library is not None else None
    if chosen is not None:
        _check_key_name(chosen, table.key("encryption_key"))
    return chosen


def _seconds(table: _Table, key: str, default: float, minimum: float) -> float:
    value = table.get(key, (int, float), default)
    if value < minimum:
        raise ConfigError(f"{table.key(key)}: must be at least {minimum:g} seconds")
    return float(value)


def _count(table: _Table, key: str, default: int, minimum: int) -> int:
    value = table.get(key, int, default)
    if value < minimum:
        raise ConfigError(f"{table.key(key)}: must be at least {minimum}")
    return value


def _service_settings(srv: _Table) -> dict[str, Any]:
    """The daemon's limits (timeouts, login slots, throttling), as ServerSettings fields."""
    idle = _seconds(srv, "idle_timeout", 3600.0, 0.0)
    rate = srv.get("auth_failure_rate", (int, float), 10.0)
    if rate <= 0:
        raise ConfigError("server.auth_failure_rate: failed logins per minute, more than 0")
    return {
        "login_timeout": _seconds(srv, "login_timeout", 30.0, 1.0),
        "idle_timeout": idle,
        "max_logins_per_address": _count(srv, "max_logins_per_address", 8, 1),
        "max_pending_logins": _count(srv, "max_pending_logins", 128, 1),
        "auth_failure_rate": float(rate),
        "auth_failure_burst": _count(srv, "auth_failure_burst", 3, 1),
        "shutdown_timeout": _seconds(srv, "shutdown_timeout", 10.0, 0.0),
    }


def _tls_settings(srv: _Table, rel: Callable[[str], Path], plain: tuple[ListenAddress, ...]) -> dict[str, Any]:
    """``tls_listen`` (one address or a list), ``tls_certificate`` and ``tls_key``: both files or
    neither, readable, the key the certificate's and not readable by others."""
    raw = srv.get("tls_listen", (str, list), [])
    addresses = [raw] if isinstance(raw, str) else raw
    listen = tuple(parse_listen(v, f"server.tls_listen[{i}]") for i, v in enumerate(addresses))
    for address in listen:
        if address in plain and address.port:
            raise ConfigError(f"server.tls_listen: {address} is also in server.listen; TLS needs its own port")
    cert, key = srv.get("tls_certificate", str, ""), srv.get("tls_key", str, "")
    if listen and not (cert and key):
        raise ConfigError(f"server.{'tls_key' if cert else 'tls_certificate'}: missing; server.tls_listen "
                          "needs a certificate and its key (ndmpd cert create makes a pair)")
    if bool(cert) != bool(key):
        raise ConfigError(f"server.{'tls_key' if cert else 'tls_certificate'}: missing; "
                          "a certificate and its key go together")
    if not cert:
        return {"tls_listen": listen}
    from .tls.certs import CertificateError, check_pair     # here: only a TLS set-up needs cryptography
    cert_path, key_path = rel(cert), rel(key)
    try:
        check_pair(cert_path, key_path, "server.tls_certificate", "server.tls_key")
    except CertificateError as exc:
        raise ConfigError(str(exc)) from None
    if key_path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"server.tls_key: {key_path} is readable by others; chmod 600 it")
    return {"tls_listen": listen, "tls_certificate": cert_path, "tls_key": key_path}


def _changer(raw: Any, i: int, rel: Callable[[str], Path]) -> Changer:
    t = _Table(raw, f"changer[{i}]", _keys(Changer))
    t.reject_unknown()
    name = t.get("name", str, required=True)
    kind = t.choice("kind", CHANGER_KINDS, "virtual")
    path = rel(t.get("path", str, required=True))
    drives = t.get("drives", list, [])
    if not all(isinstance(d, str) for d in drives) or len(set(drives)) != len(drives):
        raise ConfigError(f"changer[{i}].drives: a list of distinct [[tape]] names")
    slots = t.get("slots", int, 8)
    import_export = t.get("import_export", int, 1)
    if kind == "virtual":
        if not 1 <= slots <= 4096:
            raise ConfigError(f"changer[{i}].slots: 1 to 4096")
        if not 0 <= import_export <= 64:
            raise ConfigError(f"changer[{i}].import_export: 0 to 64")
        if not 0 < len(drives) <= 64:
            raise ConfigError(f"changer[{i}].drives: a virtual library needs 1 to 64 drives")
        if not path.parent.is_dir():
            raise ConfigError(f"changer[{i}].path: directory {path.parent} does not exist")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"changer[{i}].path: {path} is not a directory (a virtual library's "
                              "cartridges and state live in one)")
    elif not path.is_char_device():
        raise ConfigError(f"changer[{i}].path: {path} is not a SCSI generic device (such as /dev/sg3)"
                          if path.exists() else f"changer[{i}].path: {path} does not exist")
    encryption_key = t.get("encryption_key", str, None)
    if encryption_key is not None:
        if kind != "virtual":
            raise ConfigError(f"changer[{i}].encryption_key: only a virtual library's cartridges are encrypted")
        _check_key_name(encryption_key, f"changer[{i}].encryption_key")
    store = _store(t, kind, rel)
    t.finish()
    return Changer(name, kind, path, tuple(drives), slots, import_export, encryption_key, store)


def load(path: Path, server_overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a configuration file; ``server_overrides`` replace keys of its
    [server] table before validation (``ndmpd serve --listen/--state-dir``)."""
    try:
        raw = path.read_bytes()
        world_readable = _is_world_readable(path)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    data = parse_toml(raw, path, ConfigError)
    if server_overrides:
        server = data.get("server", {})
        data["server"] = {**server, **server_overrides} if isinstance(server, dict) else server
    return build(data, str(path), path.resolve().parent, world_readable)


def default_state_dir() -> Path:
    """Under the user's data directory: $XDG_DATA_HOME/ndmpd or ~/.local/share/ndmpd."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ndmpd"


def new_secret_file(path: Path) -> str | None:
    """Create ``path`` (mode 600) holding a generated password; the password, or None when
    the file already exists (it is never overwritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    import secrets                    # here: ndmpd dump never makes a password
    password = secrets.token_urlsafe(18)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def embedded_default(state_dir: Path | None = None,
                     listen: list[str] | None = None) -> tuple[Config, str | None]:
    """The configuration used without --config: loopback, one virtual drive, no volumes.

    The password of user ``ndmp`` is generated on first use and kept (mode 600) in the
    state directory; the second value is the password when it was just generated.
    """
    state = state_dir or default_state_dir()
    secret_file = state / "ndmp.password"
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        new_password = new_secret_file(secret_file)
    except OSError as exc:
        raise ConfigError(f"server.state_dir: cannot keep state in {state}: {exc.strerror or exc} "
                          f"(give another with --state-dir)") from None
    data = {
        "server": {"listen": listen or ["127.0.0.1:10000"], "state_dir": str(state), "auth": ["md5", "text"]},
        "user": [{"name": "ndmp", "password_file": str(secret_file)}],
        "tape": [{"name": "vtape0", "kind": "virtual", "path": str(state / "vtape0.img"), "capacity": "10GiB"}],
    }
    return build(data, "<embedded default>", state), new_password
