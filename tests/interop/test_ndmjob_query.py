"""ndmjob (Amanda's reference DMA) connects, negotiates v2/v3/v4, authenticates and queries."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import run

pytestmark = pytest.mark.interop

QUERIES = [(v, a) for v in "432" for a in "tm"]


def query(ndmjob, agent: str) -> str:
    result = run([ndmjob, "-q", "-D", agent])
    return result.stdout + result.stderr


def check_query_output(out: str, version: str, auths: str = "MD5 TEXT") -> None:
    assert "Data Agent" in out and f"NDMPv{version}" in out, out
    assert "hostname" in out and "os_type    Linux" in out
    assert "err " not in out, out
    if version == "2":
        # v2 has no SERVER_INFO/FS_INFO: host info carries the auth types, butypes go by GET_BUTYPE_ATTR
        assert "NDMP2_AUTH_MD5" in out and "Mover types" in out
        assert "Backup type attributes of tar format" in out and "backup-fhinfo     yes" in out
    else:
        listed = " ".join(f"NDMP{version}_AUTH_{a}" for a in auths.split())
        assert "product    ndmpd" in out and listed in out
        assert "Backup type info of tar format" in out and "Backup type info of dump format" in out
        assert "set        HIST=f" in out and "set        HIST=d" in out
        assert "File system /export/data" in out and "status     online" in out


def test_query_every_version_and_auth_method(ndmjob, server_factory):
    server = server_factory()
    for version, auth in QUERIES:
        check_query_output(query(ndmjob, server.agent(version + auth)), version)


def test_auth_none_refused_unless_configured_and_wrong_password_refused(ndmjob, server_factory):
    server = server_factory()
    assert "err connect-auth-none-failed" in query(ndmjob, server.agent("4n"))
    for flags in ("4m", "3t", "2m"):
        out = query(ndmjob, server.agent(flags).replace("s3cret-pw", "wrong"))
        assert "auth" in out and "failed" in out and "Host info" not in out
    server.stop()
    open_server = server_factory(auth=["none", "md5"])
    check_query_output(query(ndmjob, open_server.agent("4n")), "4", auths="NONE MD5")


def test_captured_sessions_have_no_malformed_pdus(ndmjob, server_factory, tshark_capture):
    server = server_factory()
    stop = tshark_capture(server.host)
    for version, auth in QUERIES:
        query(ndmjob, server.agent(version + auth))
    query(ndmjob, server.agent("4n"))
    query(ndmjob, server.agent("3m").replace("s3cret-pw", "wrong"))
    pcap = stop()
    summary = subprocess.run(["tshark", "-r", str(pcap), "-Y", "ndmp"], capture_output=True, text=True).stdout
    for message in ("CONNECT_OPEN", "CONNECT_CLIENT_AUTH", "CONFIG_GET_HOST_INFO", "CONFIG_GET_SERVER_INFO",
                    "CONFIG_GET_FS_INFO", "CONFIG_GET_AUTH_ATTR", "NOTIFY_CONNECTED"):
        assert f"{message} Reply" in summary or f"{message} Request" in summary, message
    malformed = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "_ws.malformed && !(ndmp.msg_type == 1 && tcp.len == 28)"],
        capture_output=True, text=True).stdout
    assert malformed.strip() == "", malformed


def test_sigterm_stops_the_server_cleanly(ndmjob, server_factory):
    server = server_factory()
    check_query_output(query(ndmjob, server.agent("4m")), "4")
    assert server.stop() == 0
