"""``[tape.store]`` / ``[changer.store]``: an S3-compatible bucket that keeps virtual cartridges.

Parsed here (not in ``config.py``) so the S3 settings, their checks and their defaults live in
one place. Credentials come from a mode-600 file (AWS shared-credentials format) or, without
one, from boto3's standard chain (AWS_* environment variables, ~/.aws, instance roles).
"""

from __future__ import annotations

import configparser
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MIN_PART = 5 << 20                  # S3's smallest part (but the last)
MAX_PART = 512 << 20
DEFAULT_PART = 8 << 20
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
STORE_KEYS = frozenset({"endpoint", "bucket", "prefix", "region", "credentials_file", "verify_tls",
                        "ca_bundle", "part_size", "uploads_in_flight", "timeout"})


class StoreConfigError(ValueError):
    """A ``store`` table that cannot work; the message starts with the key."""


@dataclass(frozen=True)
class StoreConfig:
    """Where an S3 store keeps its objects and how to reach it."""

    bucket: str
    endpoint: str | None = None         # None: AWS's own endpoint for the region
    prefix: str = ""                    # "" or ending in "/"
    region: str = "us-east-1"
    credentials_file: Path | None = None
    verify_tls: bool = True
    part_size: int = DEFAULT_PART
    uploads_in_flight: int = 4          # parts uploading while the mover keeps writing
    timeout: float = 10.0               # seconds per request attempt (connect and read)
    ca_bundle: Path | None = None       # PEM of the CAs to trust (a private CA); None: the system's

    def verify(self) -> bool | str | None:
        """boto3's ``verify``: False (checking off), a CA bundle's path, or None: verified
        against the default trust (AWS_CA_BUNDLE or the ca_bundle of ~/.aws/config when set)."""
        if not self.verify_tls:
            return False
        return str(self.ca_bundle) if self.ca_bundle is not None else None

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def credentials(self) -> tuple[str, str] | None:
        """(access key, secret key) from credentials_file; None: boto3's own chain."""
        if self.credentials_file is None:
            return None
        return read_credentials(self.credentials_file)


def read_credentials(path: Path) -> tuple[str, str]:
    """The [default] (or only) profile of an AWS shared-credentials file readable by its owner only."""
    where = f"store.credentials_file: {path}"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise StoreConfigError(f"{where} is readable by others (mode {mode:o}); chmod 600 it")
        parser = configparser.ConfigParser()
        parser.read_string(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StoreConfigError(f"{where}: cannot read it: {exc.strerror}") from None
    except configparser.Error as exc:
        raise StoreConfigError(f"{where}: not an AWS credentials file ({exc.message.splitlines()[0]})") from None
    sections = parser.sections()
    section = "default" if "default" in sections else sections[0] if len(sections) == 1 else None
    if section is None:
        raise StoreConfigError(f"{where}: no [default] profile")
    access = parser.get(section, "aws_access_key_id", fallback="").strip()
    secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
    if not access or not secret:
        raise StoreConfigError(f"{where}: [{section}] needs aws_access_key_id and aws_secret_access_key")
    return access, secret


def _size(value: Any, key: str, parse_size: Callable[[Any, str, int], int]) -> int:
    size = parse_size(value, key, MIN_PART)
    if size > MAX_PART:
        raise StoreConfigError(f"{key}: at most {MAX_PART >> 20} MiB")
    return size


def _prefix(prefix: str, key: str) -> str:
    """The prefix with its closing "/". Segments "", "." and ".." are refused: services and
    proxies that normalise paths would put (or refuse) the objects elsewhere than the key says."""
    if not prefix:
        return ""
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise StoreConfigError(f"{key}: {prefix!r}: no empty, '.' or '..' segments (services normalise them)")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in prefix) or len(prefix.encode()) > 512:
        raise StoreConfigError(f"{key}: {prefix!r}: no control characters, at most 512 bytes")
    return prefix + "/"


def parse_store(raw: Any, where: str, rel: Callable[[str], Path],
                parse_size: Callable[[Any, str, int], int]) -> StoreConfig:
    """The ``store`` table at ``where`` (e.g. ``tape[0].store``); every error names its key."""
    if not isinstance(raw, dict):
        raise StoreConfigError(f"{where}: a table (endpoint, bucket, prefix, ...)")
    unknown = sorted(set(raw) - STORE_KEYS)
    if unknown:
        raise StoreConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(STORE_KEYS))})")

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = raw.get(key, default)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if value is default:
            return value
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise StoreConfigError(f"{where}.{key}: wrong type ({type(value).__name__})")
        return value

    bucket = get("bucket", str, None)
    if bucket is None:
        raise StoreConfigError(f"{where}.bucket: required")
    if not BUCKET.match(bucket):
        raise StoreConfigError(f"{where}.bucket: {bucket!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
    endpoint = get("endpoint", str, None)
    if endpoint is not None and not re.match(r"^https?://[^/\s]+/?$", endpoint):
        raise StoreConfigError(f"{where}.endpoint: {endpoint!r}: an http:// or https:// URL of the service")
    prefix = _prefix(get("prefix", str, "").strip("/"), f"{where}.prefix")
    credentials = get("credentials_file", str, None)
    path = rel(credentials) if credentials is not None else None
    if path is not None:
        read_credentials(path)          # a wrong file fails at start, not at the first TAPE_OPEN
    in_flight = get("uploads_in_flight", int, 4)
    if not 1 <= in_flight <= 32:
        raise StoreConfigError(f"{where}.uploads_in_flight: 1 to 32")
    timeout = get("timeout", (int, float), 10.0)
    if not 0.5 <= timeout <= 600:
        raise StoreConfigError(f"{where}.timeout: 0.5 to 600 seconds")
    part = _size(get("part_size", (int, str), DEFAULT_PART), f"{where}.part_size", parse_size)
    verify_tls = get("verify_tls", bool, True)
    bundle = get("ca_bundle", str, None)
    ca_bundle = rel(bundle) if bundle is not None else None
    if ca_bundle is not None:
        if not verify_tls:
            raise StoreConfigError(f"{where}.ca_bundle: verify_tls = false checks no certificate; give one")
        if not ca_bundle.is_file():
            raise StoreConfigError(f"{where}.ca_bundle: {ca_bundle}: no such file (the PEM of the CAs to trust)")
    return StoreConfig(bucket, endpoint.rstrip("/") if endpoint else None, prefix, get("region", str, "us-east-1"),
                       path, verify_tls, part, in_flight, float(timeout), ca_bundle)
