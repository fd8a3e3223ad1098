"""Which NDMP server a command line names, and with which credentials.

``HOST`` is either a name from the DMA's configuration (``$XDG_CONFIG_HOME/ndmp/ndmp.toml``,
by default ``~/.config/ndmp/ndmp.toml``, or ``--config``)::

    [host.nas]
    address = "192.0.2.10"        # or a DNS name, or an IPv6 address
    port = 10000                  # optional
    user = "ndmp"                 # optional (ndmp)
    password_file = "nas.pw"      # relative to the file; mode 600 (no group or other access)
    tls = true                    # optional: connect to the server's tls_listen port over TLS,
    fingerprint = "sha256:..."    #   checking its certificate against this pin (ndmpd cert create prints it)
    # ca = "ca.pem"               #   or verifying its chain and host name against this CA instead

or inline ``[user@]address[:port]`` (IPv6 in brackets: ``ndmp@[2001:db8::1]:10000``) with the
password from ``$NDMP_PASSWORD``. A bare word that is no configured name is refused rather
than looked up in DNS (a typo must not reach another machine): write ``ndmp@NAME`` or
``NAME:10000`` for that. Later commands name a volume or drive after one more colon:
``nas:/export/data``, ``ndmp@[::1]:10000:vtape0``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..secret_file import read_secret
from ..tomlfile import parse_toml

DEFAULT_PORT = 10000
DEFAULT_USER = "ndmp"
PASSWORD_ENV = "NDMP_PASSWORD"
_HOST_KEYS = {"address", "port", "user", "password_file", "tls", "ca", "fingerprint"}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class HostConfigError(ValueError):
    """One line saying which key or argument is wrong and why (exit 2)."""


@dataclass(frozen=True)
class TlsPeer:
    """How a host's TLS certificate is checked: against a CA (chain and host name), or a pin."""

    ca: Path | None = None
    fingerprint: str | None = None      # "sha256:<64 hex digits>"


@dataclass(frozen=True)
class Host:
    """An NDMP server to connect to: where, as whom, and the name it was given by."""

    name: str
    address: str
    port: int
    user: str
    password: str
    tls: TlsPeer | None = None          # None: plain TCP

    @property
    def display(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{address}:{self.port}"


@dataclass(frozen=True)
class HostEntry:
    """A ``[host.NAME]`` table; the password is read only when the host is used."""

    name: str
    address: str
    port: int
    user: str
    password_file: Path
    tls: TlsPeer | None = None


def config_path(explicit: str | os.PathLike | None = None, env: Mapping[str, str] = os.environ) -> Path:
    """``--config``, else $XDG_CONFIG_HOME/ndmp/ndmp.toml, else ~/.config/ndmp/ndmp.toml."""
    if explicit:
        return Path(explicit)
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ndmp" / "ndmp.toml"


def load_hosts(path: Path, required: bool = False) -> dict[str, HostEntry]:
    """The ``[host.NAME]`` tables of ``path``; an absent file is empty unless ``required``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise HostConfigError(f"{path}: no such file") from None
        return {}
    except OSError as exc:
        raise HostConfigError(f"{path}: {exc.strerror}") from None
    data = parse_toml(raw, path, HostConfigError)
    hosts = data.get("host", {})
    if not isinstance(hosts, dict):
        raise HostConfigError(f"{path}: host: must be tables [host.NAME]")
    return {name: _entry(path, name, table) for name, table in hosts.items()}


def _entry(path: Path, name: str, table: object) -> HostEntry:
    key = f"{path}: host.{name}"
    if not _NAME.fullmatch(name):
        raise HostConfigError(f"{key}: a host name is letters, digits, '-' and '_', starting with a letter")
    if not isinstance(table, dict):
        raise HostConfigError(f"{key}: must be a table")
    unknown = sorted(set(table) - _HOST_KEYS)
    if unknown:
        raise HostConfigError(f"{key}.{unknown[0]}: unknown key (known: {', '.join(sorted(_HOST_KEYS))})")
    address = table.get("address")
    if not isinstance(address, str) or not address:
        raise HostConfigError(f"{key}.address: required, a host name or IP address")
    port = table.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise HostConfigError(f"{key}.port: must be an integer 1-65535")
    user = table.get("user", DEFAULT_USER)
    if not isinstance(user, str) or not user:
        raise HostConfigError(f"{key}.user: must be a non-empty string")
    password_file = table.get("password_file")
    if not isinstance(password_file, str) or not password_file:
        raise HostConfigError(f"{key}.password_file: required, a file holding the password (mode 600)")
    return HostEntry(name, address.strip("[]"), port, user, path.parent / Path(password_file).expanduser(),
                     _tls(path, key, table))


def _tls(path: Path, key: str, table: dict) -> TlsPeer | None:
    """``tls = true`` with exactly one of ``ca`` and ``fingerprint``; either without ``tls``
    is refused, so a pin is never silently unused."""
    tls = table.get("tls", False)
    if not isinstance(tls, bool):
        raise HostConfigError(f"{key}.tls: must be true or false")
    ca, pin = table.get("ca"), table.get("fingerprint")
    if not tls:
        if ca is not None or pin is not None:
            raise HostConfigError(f"{key}.{'ca' if ca is not None else 'fingerprint'}: needs tls = true")
        return None
    if (ca is None) == (pin is None):
        raise HostConfigError(f"{key}: tls = true needs one of fingerprint = \"sha256:...\" (a pinned "
                              "certificate) or ca = FILE (verify chain and host name)")
    if ca is not None:
        if not isinstance(ca, str) or not ca:
            raise HostConfigError(f"{key}.ca: a file of CA certificates (PEM)")
        ca_path = path.parent / Path(ca).expanduser()
        if not ca_path.is_file():
            raise HostConfigError(f"{key}.ca: {ca_path} does not exist")
        return TlsPeer(ca=ca_path)
    from ..tls.certs import CertificateError, parse_fingerprint
    try:
        return TlsPeer(fingerprint=parse_fingerprint(pin, f"{key}.fingerprint"))
    except CertificateError as exc:
        raise HostConfigError(str(exc)) from None


def read_password_file(path: Path, key: str) -> str:
    """The password in ``path``, refused unless only its owner may read it (mode 600/400)."""
    return read_secret(path, key, HostConfigError,
                       lambda mode: f"has mode {mode:o}; chmod 600 it" if mode & (stat.S_IRWXG | stat.S_IRWXO) else None)


def parse_inline(text: str) -> tuple[str | None, str, int | None]:
    """``[user@]address[:port]`` as (user, address, port); IPv6 in brackets, or bare without port."""
    user, at, rest = text.rpartition("@")
    if not at:
        user, rest = "", text
    if at and not user:
        raise HostConfigError(f"{text}: empty user before '@'")
    port_text = ""
    if rest.startswith("["):
        address, close, after = rest[1:].partition("]")
        if not close or not address:
            raise HostConfigError(f"{text}: unclosed '[' in an IPv6 address")
        if after:
            if not after.startswith(":"):
                raise HostConfigError(f"{text}: expected ':PORT' after ']'")
            port_text = after[1:]
        _check_ipv6(text, address)
    elif rest.count(":") > 1:
        address = rest
        _check_ipv6(text, address)
    else:
        address, _, port_text = rest.partition(":")
    if not address:
        raise HostConfigError(f"{text}: no address")
    port = None
    if port_text or rest.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise HostConfigError(f"{text}: port {port_text!r} is not 1-65535")
        port = int(port_text)
    return user or None, address, port


def _check_ipv6(text: str, address: str) -> None:
    try:
        ipaddress.IPv6Address(address.split("%")[0])
    except ValueError:
        raise HostConfigError(f"{text}: {address!r} is not an IPv6 address") from None


_TARGET = re.compile(r"(?P<host>(?:[^@:\[]+@)?(?:\[[^\]]*\]|[^:\[]+))(?::(?P<port>\d+)(?=:))?:(?P<name>.+)")


def split_target(text: str) -> tuple[str, str]:
    """``HOST:VOLUME`` (or ``HOST:DRIVE``) as (HOST, VOLUME): after the host and its optional
    ``:PORT`` (digits followed by another colon), the rest is the volume or drive name."""
    match = _TARGET.fullmatch(text)
    if match is None:
        raise HostConfigError(f"{text}: expected HOST:NAME (a volume or drive after the host)")
    host = match["host"] + (f":{match['port']}" if match["port"] else "")
    return host, match["name"]


def resolve(text: str, hosts: Mapping[str, HostEntry], config: Path,
            env: Mapping[str, str] = os.environ) -> Host:
    """The server ``text`` names: a configured name, or an inline ``[user@]address[:port]``."""
    entry = hosts.get(text)
    if entry is not None:
        return Host(entry.name, entry.address, entry.port, entry.user,
                    read_password_file(entry.password_file, f"{config}: host.{entry.name}.password_file"),
                    entry.tls)
    user, address, port = parse_inline(text)
    if user is None and port is None and _NAME.fullmatch(address) and address != "localhost":
        known = f" (known: {', '.join(sorted(hosts))})" if hosts else ""
        raise HostConfigError(f"{text}: unknown host name, not in {config}{known}; "
                              f"write ndmp@{text} or {text}:{DEFAULT_PORT} to connect to it directly")
    password = env.get(PASSWORD_ENV)
    if not password:
        raise HostConfigError(f"{text}: no password: set {PASSWORD_ENV}, or name the host in {config}")
    return Host(text, address, port or DEFAULT_PORT, user or DEFAULT_USER, password)


def host_named(text: str, config: str | os.PathLike | None = None) -> Host:
    """The server ``text`` names, with the hosts file ``--config`` gives (which must then exist)
    or the default one (which may be absent): what every ``ndmp`` command resolves HOST with."""
    path = config_path(config)
    return resolve(text, load_hosts(path, required=bool(config)), path)
