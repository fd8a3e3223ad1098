"""How an S3 store is reached: TLS checked by default (a private CA trusted only when
configured), credentials from the AWS environment when no file is given, which errors are
retried (transient only) and prefixes with odd characters."""

from __future__ import annotations

import time
import uuid

import pytest

from ndmpd.devices.s3_client import MAX_ATTEMPTS
from ndmpd.devices.s3_medium import S3Store
from ndmpd.devices.tape import MediaError
from ndmpd.store_config import StoreConfig, StoreConfigError, parse_store
from ndmpd.config import parse_size
from tests.s3_fronts import ScriptedS3, TlsFront
from tests.s3_server import ACCESS_KEY, SECRET_KEY
from tests.test_cartridge_sealing import read_file
from tests.test_s3_cartridge import drive, records, store_for
from tests.tls_helpers import ca_signed


@pytest.fixture
def bucket(s3_server):
    return s3_server.bucket("tr-" + uuid.uuid4().hex[:12])


@pytest.fixture
def https(s3_server, tmp_path):
    """(front, ca.pem): the SeaweedFS behind HTTPS with a certificate of a CA nobody trusts by default."""
    ca, cert, key = ca_signed(tmp_path / "tls")
    front = TlsFront(int(s3_server.endpoint.rsplit(":", 1)[1]), cert, key)
    yield front, ca
    front.close()


def over(front: TlsFront, store: S3Store, **kw) -> S3Store:
    config = store.config
    return S3Store(StoreConfig(config.bucket, front.endpoint, config.prefix, credentials_file=config.credentials_file,
                               timeout=2.0, **kw))


def round_trip(store: S3Store) -> None:
    kept = records(3, 4096)
    tape = drive(store)
    tape.open(write=True)
    for r in kept:
        tape.write_record(r)
    tape.close()
    tape.open(write=False)
    tape.rewind()
    assert read_file(tape) == kept
    tape.close()


def test_an_https_store_with_an_untrusted_certificate_is_refused_in_one_line_without_retries(
        s3_server, bucket, tmp_path, https, monkeypatch):
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    front, _ = https
    store = over(front, store_for(s3_server, bucket, tmp_path))
    assert store.config.verify_tls                            # the default
    with pytest.raises(MediaError) as caught:
        drive(store).open(write=True)
    message = str(caught.value)
    assert "\n" not in message and "certificate" in message and "not trusted" in message, message
    assert "store.ca_bundle" in message and front.endpoint in message, message
    assert front.connections == 1                           # not a transient error: no retry


@pytest.mark.parametrize("how", ["ca_bundle", "AWS_CA_BUNDLE", "verify_tls=false"])
def test_an_https_store_works_once_its_ca_is_trusted_or_checking_is_off(s3_server, bucket, tmp_path, https,
                                                                        monkeypatch, how):
    front, ca = https
    plain = store_for(s3_server, bucket, tmp_path)
    if how == "ca_bundle":
        store = over(front, plain, ca_bundle=ca)
    elif how == "AWS_CA_BUNDLE":
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
        store = over(front, plain)
    else:
        store = over(front, plain, verify_tls=False)
    round_trip(store)
    assert front.connections >= 1


def parsed(table: dict, tmp_path) -> StoreConfig:
    return parse_store(table, "tape[0].store", lambda p: tmp_path / p, parse_size)


def test_ca_bundle_is_a_file_and_contradicts_verify_off(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    assert parsed({"bucket": "backups", "ca_bundle": "ca.pem"}, tmp_path).verify() == str(tmp_path / "ca.pem")
    assert parsed({"bucket": "backups"}, tmp_path).verify() is None        # default trust, checked
    assert parsed({"bucket": "backups", "verify_tls": False}, tmp_path).verify() is False
    with pytest.raises(StoreConfigError, match=r"^tape\[0\]\.store\.ca_bundle: .*no such file"):
        parsed({"bucket": "backups", "ca_bundle": "missing.pem"}, tmp_path)
    with pytest.raises(StoreConfigError, match=r"^tape\[0\]\.store\.ca_bundle: verify_tls = false"):
        parsed({"bucket": "backups", "ca_bundle": "ca.pem", "verify_tls": False}, tmp_path)


def test_without_a_credentials_file_the_aws_environment_is_used(s3_server, bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    round_trip(S3Store(StoreConfig(bucket, s3_server.endpoint, "env/", timeout=2.0)))
    assert any(k.startswith("env/CART01/") for k in s3_server.keys(bucket))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(MediaError, match="wrong credentials"):
        drive(S3Store(StoreConfig(bucket, s3_server.endpoint, "env/", timeout=2.0))).open(write=False)


def scripted_store(endpoint: str, tmp_path) -> S3Store:
    """A store of bucket "scripted" at ``endpoint`` (a ScriptedS3), with any credentials."""
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    creds.chmod(0o600)
    return S3Store(StoreConfig("scripted", endpoint, "lib/", credentials_file=creds, timeout=2.0))


def test_an_https_endpoint_on_a_plain_http_port_fails_at_once_saying_so(tmp_path):
    service = ScriptedS3(403, "AccessDenied")       # a plain HTTP service: TLS gets text back
    endpoint = service.endpoint.replace("http://", "https://")
    try:
        store = scripted_store(endpoint, tmp_path)
        with pytest.raises(MediaError) as caught:
            drive(store).open(write=False)
        message = str(caught.value)
        assert "\n" not in message and endpoint in message, message
        assert "not TLS" in message and "store.endpoint" in message, message
        assert service.connections == 1 and service.requests == 0     # not a transient error: no retry
    finally:
        service.close()


@pytest.mark.parametrize("status, code, attempts", [
    (403, "AccessDenied", 1), (400, "InvalidRequest", 1), (404, "NoSuchBucket", 1),
    (500, "InternalError", MAX_ATTEMPTS), (503, "SlowDown", MAX_ATTEMPTS), (None, "reset", MAX_ATTEMPTS),
], ids=["403", "400", "404", "500", "503", "connection-reset"])
def test_only_transient_errors_are_retried_with_backoff(tmp_path, status, code, attempts):
    service = ScriptedS3(status, code)
    try:
        store = scripted_store(service.endpoint, tmp_path)
        started = time.monotonic()
        with pytest.raises(MediaError) as caught:
            drive(store).open(write=False)
        took = time.monotonic() - started
        assert max(service.attempts) == attempts, (service.seen, service.attempts, caught.value)
        assert "\n" not in str(caught.value) and "s3://scripted/lib/" in str(caught.value), caught.value
        assert took < 30
    finally:
        service.close()


@pytest.mark.parametrize("prefix", ["with space/ünï+cödé", "a%2Fb/c?d#e&f=g", "..dots../x.y", "deep/er/and/deeper"])
def test_a_prefix_with_odd_characters_keeps_its_cartridges_apart(s3_server, bucket, tmp_path, prefix):
    base = store_for(s3_server, bucket, tmp_path)
    odd = S3Store(parsed({"bucket": bucket, "endpoint": s3_server.endpoint, "prefix": prefix,
                          "credentials_file": str(base.config.credentials_file)}, tmp_path))
    round_trip(odd)
    round_trip(base)                                        # prefix lib/, beside it
    assert odd.names() == ["CART01"] and base.names() == ["CART01"]
    assert sorted(s3_server.keys(bucket, prefix + "/")) == sorted(s3_server.keys(bucket, prefix + "/CART01/"))
    assert len(s3_server.keys(bucket, prefix + "/CART01/")) >= 2             # its index and a segment


@pytest.mark.parametrize("prefix", ["..", "x/../y", "./x", "a//b", "tab\there"])
def test_a_prefix_a_service_would_normalise_is_refused_naming_the_key(tmp_path, prefix):
    with pytest.raises(StoreConfigError, match=r"^tape\[0\]\.store\.prefix: "):
        parsed({"bucket": "backups", "prefix": prefix}, tmp_path)
