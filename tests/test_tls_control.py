"""TLS on the control connection: ndmpd cert, the tls_* keys, the TLS listener, and the DMA's
pinned or CA-verified connection (a wrong pin sends nothing)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import stat

import pytest

from ndmpd.cli import main as ndmpd_main
from ndmpd.config import ConfigError
from ndmpd.dma.agent import Agent
from ndmpd.dma.errors import NdmpConnectError
from ndmpd.dma.hosts import HostConfigError, TlsPeer, load_hosts
from ndmpd.tls import certs

from .server_thread import ServerThread
from .tls_helpers import RecordingTlsServer, ca_signed, pair, server_config


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- ndmpd cert --------------------------------------------------------------------------------


def test_cert_create_writes_a_pair_with_a_private_key_and_prints_its_fingerprint(tmp_path, capsys):
    assert ndmpd_main(["cert", "create", "--out", str(tmp_path / "c"), "--name", "nas1", "--days", "30"]) == 0
    out = capsys.readouterr().out
    crt, key = tmp_path / "c" / "ndmpd.crt", tmp_path / "c" / "ndmpd.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    der = ssl.PEM_cert_to_DER_cert(crt.read_text())
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert f"fingerprint {expected}" in out
    assert certs.check_pair(crt, key, "c", "k") == expected
    assert ndmpd_main(["cert", "fingerprint", str(crt)]) == 0
    assert capsys.readouterr().out.strip() == expected
    # Python's ssl (OpenSSL) takes the pair as it is
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(crt, key)


def test_cert_create_never_overwrites_and_refuses_nonsense(tmp_path, capsys):
    pair(tmp_path)
    before = (tmp_path / "ndmpd.key").read_bytes()
    assert ndmpd_main(["cert", "create", "--out", str(tmp_path), "--name", "x"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "ndmpd.key").read_bytes() == before
    assert ndmpd_main(["cert", "create", "--out", str(tmp_path / "n"), "--days", "0"]) == 2
    assert not (tmp_path / "n" / "ndmpd.key").exists()


def test_fingerprints_are_parsed_in_both_usual_spellings():
    digest = "ab" * 32
    assert certs.parse_fingerprint(f"sha256:{digest.upper()}", "k") == f"sha256:{digest}"
    assert certs.parse_fingerprint(":".join(["AB"] * 32), "k") == f"sha256:{digest}"
    with pytest.raises(certs.CertificateError, match="64 hex digits"):
        certs.parse_fingerprint("sha256:abcd", "k")


# -- the tls_* keys ---------------------------------------------------------------------------


def test_tls_keys_are_validated_with_one_clear_line(tmp_path):
    good = pair(tmp_path / "a")
    other = pair(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"server.tls_certificate: .*missing.* does not exist"):
        server_config(tmp_path, tmp_path / "missing.crt", good.key)
    with pytest.raises(ConfigError, match="server.tls_key: .* is not the key of"):
        server_config(tmp_path, good.certificate, other.key)
    (tmp_path / "junk.key").write_text("not a key")
    (tmp_path / "junk.key").chmod(0o600)
    with pytest.raises(ConfigError, match="server.tls_key: .* is not a PEM private key"):
        server_config(tmp_path, good.certificate, tmp_path / "junk.key")
    with pytest.raises(ConfigError, match="server.tls_certificate: .* is not a certificate"):
        server_config(tmp_path, tmp_path / "junk.key", good.key)
    good.key.chmod(0o644)
    with pytest.raises(ConfigError, match="server.tls_key: .* readable by others; chmod 600"):
        server_config(tmp_path, good.certificate, good.key)
    good.key.chmod(0o600)
    with pytest.raises(ConfigError, match="server.tls_certificate: missing; server.tls_listen needs"):
        server_config(tmp_path, tls_listen="127.0.0.1:10001")
    with pytest.raises(ConfigError, match="server.tls_key: missing; a certificate and its key go together"):
        server_config(tmp_path, tls_certificate=str(good.certificate))
    with pytest.raises(ConfigError, match="also in server.listen"):
        server_config(tmp_path, listen=["127.0.0.1:10500"], tls_listen="127.0.0.1:10500",
                      tls_certificate=str(good.certificate), tls_key=str(good.key))
    config = server_config(tmp_path, good.certificate, good.key)
    assert config.server.tls_certificate == good.certificate and len(config.server.tls_listen) == 1


@pytest.fixture
def tls_server(tmp_path):
    own = pair(tmp_path / "srv")
    s = ServerThread(server_config(tmp_path, own.certificate, own.key))
    s.tls_host, s.tls_port = s.server.tls_addresses[0]
    s.pair = own
    yield s
    s.stop()


def agent(host, port, tls, **kw):
    kw.setdefault("timeout", 20)
    return Agent.connect(host, port, user="ndmp", password="secret", tls=tls, **kw)


def test_ndmp_over_tls_with_a_pinned_certificate_logs_in_and_works(tls_server):
    async def go():
        pin = TlsPeer(fingerprint=tls_server.pair.fingerprint)
        async with agent(tls_server.tls_host, tls_server.tls_port, pin) as a:
            info = await a.call("CONFIG_GET_HOST_INFO")
            return a.version, a.auth, info.hostname, certs.fingerprint(a.peer_certificate)
    version, auth, hostname, seen = run(go())
    assert version == 4 and auth == "md5" and hostname
    assert seen == tls_server.pair.fingerprint


def test_the_plain_listener_stays_for_standard_dmas(tls_server):
    async def go():
        async with agent(tls_server.host, tls_server.port, None) as a:
            return (await a.call("CONFIG_GET_HOST_INFO")).hostname
    assert run(go())


def test_a_wrong_fingerprint_is_refused_before_any_byte_is_sent(tmp_path):
    own = pair(tmp_path / "impostor")
    recorder = RecordingTlsServer(own.certificate, own.key)
    try:
        with pytest.raises(NdmpConnectError) as refused:
            run(agent("127.0.0.1", recorder.port, TlsPeer(fingerprint="sha256:" + "00" * 32)))
        assert recorder.finished.wait(10)             # (the client may cut before the server's
                                                       # side of the handshake completes)
        assert bytes(recorder.received) == b""         # but not one application byte followed
        line = str(refused.value)
        assert line.startswith("127.0.0.1:") and "('" not in line
        # the handshake went far enough to see the impostor's certificate
        assert "\n" not in line and "is not the pinned sha256:" + "00" * 32 in line and own.fingerprint in line
    finally:
        recorder.close()


def test_the_recording_server_does_see_what_a_dma_sends_with_the_right_pin(tmp_path):
    """The control for the test above: with the pin right, the DMA answers the greeting."""
    own = pair(tmp_path / "real")
    recorder = RecordingTlsServer(own.certificate, own.key)
    try:
        with pytest.raises((NdmpConnectError, TimeoutError)):     # the recorder never answers CONNECT_OPEN
            run(agent("127.0.0.1", recorder.port, TlsPeer(fingerprint=own.fingerprint), timeout=2), timeout=30)
        assert recorder.finished.wait(10)
        assert len(recorder.received) >= 28                       # CONNECT_OPEN: header and body
    finally:
        recorder.close()


def test_a_wrong_fingerprint_never_reaches_the_real_server_login(tls_server, caplog):
    caplog.set_level(logging.INFO, logger="ndmpd")
    with pytest.raises(NdmpConnectError, match="is not the pinned"):
        run(agent(tls_server.tls_host, tls_server.tls_port, TlsPeer(fingerprint="sha256:" + "11" * 32)))

    async def right_pin():
        async with agent(tls_server.tls_host, tls_server.tls_port, TlsPeer(fingerprint=tls_server.pair.fingerprint)):
            pass
    run(right_pin())
    opened = [r for r in caplog.records if r.getMessage().endswith(": NDMPv4")]
    assert len(opened) == 1             # CONNECT_OPEN came from the right pin's connection only


def test_a_ca_verifies_the_chain_and_the_host_name(tmp_path):
    ca, crt, key = ca_signed(tmp_path / "pki")
    s = ServerThread(server_config(tmp_path, crt, key))
    try:
        host, port = s.server.tls_addresses[0]

        async def hostname_seen(address):
            async with agent(address, port, TlsPeer(ca=ca)) as a:
                return (await a.call("CONFIG_GET_HOST_INFO")).hostname
        assert run(hostname_seen(host))
        with pytest.raises(NdmpConnectError, match="certificate was refused: .*(mismatch|match)"):
            run(hostname_seen("localhost"))            # the certificate names 127.0.0.1 only
        other_ca, _, _ = ca_signed(tmp_path / "other")
        with pytest.raises(NdmpConnectError, match="certificate was refused"):
            run(agent(host, port, TlsPeer(ca=other_ca)))
    finally:
        s.stop()


def test_host_tls_keys_in_ndmp_toml(tmp_path):
    (tmp_path / "pw").write_text("secret")
    (tmp_path / "pw").chmod(0o600)

    def hosts(extra):
        path = tmp_path / "ndmp.toml"
        path.write_text(f'[host.nas]\naddress = "127.0.0.1"\npassword_file = "pw"\n{extra}\n')
        return load_hosts(path)["nas"]
    assert hosts("").tls is None
    pin = "sha256:" + "ab" * 32
    assert hosts(f'tls = true\nfingerprint = "{pin.upper()}"').tls == TlsPeer(fingerprint=pin)
    (tmp_path / "ca.pem").write_text("x")
    assert hosts('tls = true\nca = "ca.pem"').tls == TlsPeer(ca=tmp_path / "ca.pem")
    for bad, why in ((f'fingerprint = "{pin}"', "needs tls = true"), ("tls = true", "needs one of"),
                     (f'tls = true\nca = "ca.pem"\nfingerprint = "{pin}"', "needs one of"),
                     ('tls = true\nfingerprint = "sha1:ab"', "64 hex digits"),
                     ('tls = true\nca = "nope.pem"', "does not exist"), ('tls = "yes"', "true or false")):
        with pytest.raises(HostConfigError, match=why):
            hosts(bad)
