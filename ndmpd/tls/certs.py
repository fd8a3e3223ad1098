"""Certificates for ndmpd's TLS: make a self-signed pair, name a certificate by its SHA-256, check a pair.

EC P-256 keys: every OpenSSL TLS 1.2/1.3 stack and Python's ``ssl`` accept them, signatures
are small and handshakes fast. Everything here goes through ``cryptography``'s x509 API.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

FINGERPRINT_PREFIX = "sha256:"
_FINGERPRINT = re.compile(r"(?:sha256:)?([0-9a-fA-F]{2}(?::?[0-9a-fA-F]{2}){31})", re.I)
CERT_NAME = "ndmpd.crt"
KEY_NAME = "ndmpd.key"


class CertificateError(ValueError):
    """One line: which file is wrong and why."""


@dataclass(frozen=True)
class CertificatePair:
    """Where a certificate and its key were written, and the certificate's fingerprint."""

    certificate: Path
    key: Path
    fingerprint: str


def fingerprint(der: bytes) -> str:
    """``sha256:`` and the lower-case hex SHA-256 of a DER certificate: what ``ndmp.toml`` pins."""
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def parse_fingerprint(text: str, key: str) -> str:
    """A pinned fingerprint in canonical form (``sha256:`` + 64 hex digits; colons allowed)."""
    match = _FINGERPRINT.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise CertificateError(f"{key}: expected \"sha256:\" and 64 hex digits "
                               f"(ndmpd cert fingerprint FILE prints it), got {text!r}")
    return FINGERPRINT_PREFIX + match.group(1).replace(":", "").lower()


def create(out: Path, name: str, days: int, hosts: tuple[str, ...] = ()) -> CertificatePair:
    """Write ``out/ndmpd.crt`` and ``out/ndmpd.key`` (mode 600): a self-signed EC P-256 pair for
    ``name`` (its CN and first subjectAltName; ``hosts`` are further DNS names or IP addresses),
    valid ``days`` days. Existing files are never overwritten."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if days < 1:
        raise CertificateError(f"--days: {days}: a certificate must be valid at least 1 day")
    if not name:
        raise CertificateError("--name: the certificate needs a name (its CN)")
    cert_path, key_path = out / CERT_NAME, out / KEY_NAME
    for path in (cert_path, key_path):
        if os.path.lexists(path):
            raise CertificateError(f"{path}: already exists; remove it or choose another --out")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names = [_alt_name(x509, h) for h in dict.fromkeys((name, *hosts))]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    _write_new(key_path, key_bytes, 0o600)
    try:
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        key_path.unlink()                   # no half pair left behind
        raise
    return CertificatePair(cert_path, key_path, fingerprint(cert.public_bytes(serialization.Encoding.DER)))


def _alt_name(x509, host: str):
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)                    # whatever the umask


def certificate_der(path: Path, key: str = "certificate") -> bytes:
    """The first certificate of a PEM (or DER) file, as DER."""
    try:
        return certificate_der_of(_read(path, key))
    except CertificateError as exc:
        raise CertificateError(f"{key}: {path} is not a certificate: {exc}") from None


def certificate_der_of(raw: bytes) -> bytes:
    """A PEM or DER certificate, checked and as DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    try:
        cert = x509.load_pem_x509_certificate(raw) if b"-----BEGIN" in raw else x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise CertificateError(str(exc)) from None
    return cert.public_bytes(serialization.Encoding.DER)


def check_pair(certificate: Path, key: Path, cert_key: str, key_key: str) -> str:
    """Refuse a missing or unreadable file, a key that is no private key, and a key that is not
    the certificate's; the certificate's fingerprint when they belong together."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    der = certificate_der(certificate, cert_key)
    raw = _read(key, key_key)
    try:
        private = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise CertificateError(f"{key_key}: {key} is encrypted; ndmpd needs an unencrypted key (mode 600)") from None
    except ValueError as exc:
        raise CertificateError(f"{key_key}: {key} is not a PEM private key: {exc}") from None
    public = x509.load_der_x509_certificate(der).public_key()
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != public.public_bytes(*spki):
        raise CertificateError(f"{key_key}: {key} is not the key of {cert_key} {certificate}")
    return fingerprint(der)


def _read(path: Path, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{key}: {path} does not exist") from None
    except IsADirectoryError:
        raise CertificateError(f"{key}: {path} is a directory, not a file") from None
    except OSError as exc:
        raise CertificateError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def peer_der(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes:
    """The DER certificate the TLS peer presented (b"" when it presented none)."""
    if ssl_object is None:
        return b""
    return ssl_object.getpeercert(binary_form=True) or b""
