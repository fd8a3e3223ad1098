"""The S3 client of a cartridge store: construction, retries, and one-line error messages.

boto3 is the client (what users know and configure; its credential chain is the standard
one). Retries are botocore's "standard" mode: only transient errors (throttling, 5xx,
connection resets) are retried, with exponential backoff and jitter, a bounded number of
times, and every attempt has connect and read timeouts, so a dead service is reported in
seconds, not minutes. Anything else (wrong credentials, no such bucket, a certificate not
trusted) fails at once. TLS certificates are checked unless the store says verify_tls = false.
"""

from __future__ import annotations

from typing import Any

from ..store_config import StoreConfig

MAX_ATTEMPTS = 3                    # attempts of one request, the first included (not "max_attempts": retries)


class StoreUnavailable(Exception):
    """boto3 is not installed: the s3 extra (pip install 'ndmpd[s3]')."""


def make_client(store: StoreConfig, pool: int = 16) -> Any:
    """A boto3 S3 client for ``store`` (thread-safe: the upload workers share it)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StoreUnavailable(f"{store.url()}: S3 cartridges need boto3 (pip install 'ndmpd[s3]')") from None
    credentials = store.credentials()
    keys = dict(aws_access_key_id=credentials[0], aws_secret_access_key=credentials[1]) if credentials else {}
    config = Config(retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    connect_timeout=store.timeout, read_timeout=store.timeout, max_pool_connections=pool,
                    s3={"addressing_style": "path" if store.endpoint else "auto"},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=store.endpoint, region_name=store.region,
                            verify=store.verify(), config=config, **keys)
    client.meta.events.register_first("needs-retry.s3", _tls_misfit_is_final)
    return client


_NOT_TLS = "WRONG_VERSION_NUMBER"      # OpenSSL's word for a peer that answered in plain text


def _tls_misfit_is_final(caught_exception: BaseException | None = None, **_: Any) -> bool | None:
    """botocore's standard mode retries every connection error, TLS ones included; a
    certificate nobody trusts, or an https:// endpoint whose port speaks plain HTTP, is no
    transient error: False stops the retries (None: no say)."""
    if caught_exception is not None:
        text = str(caught_exception)
        if "CERTIFICATE_VERIFY_FAILED" in text or _NOT_TLS in text:
            return False
    return None


_REASONS = {
    "InvalidAccessKeyId": "the access key is not known to the service (wrong credentials)",
    "SignatureDoesNotMatch": "the secret key does not match the access key (wrong credentials)",
    "AccessDenied": "access denied (the credentials lack permission)",
    "NoSuchBucket": "no such bucket",
    "403": "access denied (wrong credentials or no permission)",
    "404": "not found",
}


def describe(exc: BaseException, store: StoreConfig, what: str) -> str:
    """One line saying what failed and why, for a TAPE_OPEN error or a mover halt."""
    try:
        from botocore.exceptions import (ClientError, ConnectTimeoutError, EndpointConnectionError,
                                         NoCredentialsError, ReadTimeoutError, SSLError)
    except ImportError:
        return f"{store.url()}: {what}: {exc}"
    service = store.endpoint or f"AWS S3 ({store.region})"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        reason = _REASONS.get(code) or error.get("Message") or code
        return f"{store.url()}: {what}: {reason} [{code}]"
    if isinstance(exc, NoCredentialsError):
        return f"{store.url()}: {what}: no credentials (set store.credentials_file or the AWS environment)"
    if isinstance(exc, SSLError):
        return f"{store.url()}: {what}: {_tls_reason(exc, service)}"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return f"{store.url()}: {what}: cannot reach {service} (no connection after {MAX_ATTEMPTS} attempts)"
    if isinstance(exc, ReadTimeoutError):
        return f"{store.url()}: {what}: {service} did not answer within {store.timeout:g}s"
    return f"{store.url()}: {what}: {type(exc).__name__}: {exc}"


def _tls_reason(exc: BaseException, service: str) -> str:
    """Why TLS with the service failed, and for an untrusted certificate what to configure."""
    detail = str(getattr(exc, "kwargs", {}).get("error", exc))
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        why = detail.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip() or detail
        return (f"TLS: the certificate of {service} is not trusted ({why}); give store.ca_bundle "
                "(the CA that signed it) or verify_tls = false")
    if _NOT_TLS in detail:
        return (f"{service} answered in plain text, not TLS: its port serves http://, not https:// "
                "(fix store.endpoint)")
    return f"TLS with {service} failed: {detail}"


def is_missing(exc: BaseException) -> bool:
    """A 404 (no such key): a cartridge not created yet, not a failure."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
