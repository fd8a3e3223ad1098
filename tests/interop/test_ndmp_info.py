"""``ndmp info`` as a user runs it: a subprocess against an ndmpd process, by configured name
or inline spec, as a table and as JSON; failures are one line with exit 1 or 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from .conftest import PASSWORD, REPO

pytestmark = pytest.mark.interop


def ndmp(*args: str, env: dict | None = None, home=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "NDMP_PASSWORD"}
    if home is not None:
        base["XDG_CONFIG_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "ndmpd.dma", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


def test_info_by_inline_spec_as_a_table(server_factory, tmp_path):
    server = server_factory()
    result = ndmp("info", f"ndmp@{server.host}", env={"NDMP_PASSWORD": PASSWORD}, home=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{server.host}:10000" in out and "NDMPv4, logged in with MD5" in out
    assert "auth types  md5, text" in out and "local, tcp" in out
    assert "HIST=f" in out and "HIST=d" in out                 # tar's and dump's default env
    assert "/export/data" in out and "vtape0" in out


def test_info_by_configured_name_as_json(server_factory, tmp_path):
    server = server_factory(auth=["text"])
    (tmp_path / "ndmp").mkdir()
    (tmp_path / "ndmp" / "lab.pw").write_text(PASSWORD + "\n")
    (tmp_path / "ndmp" / "lab.pw").chmod(0o600)
    (tmp_path / "ndmp" / "ndmp.toml").write_text(
        f'[host.lab]\naddress = "{server.host}"\nuser = "ndmp"\npassword_file = "lab.pw"\n')
    result = ndmp("info", "lab", "--json", "--version", "3", home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["host"] == "lab" and report["version"] == 3 and report["auth"] == "text"
    assert report["server_info"]["product"] == "ndmpd" and report["server_info"]["auth_types"] == ["text"]
    assert {b["name"] for b in report["butypes"]} == {"tar", "dump", "btrfs"}
    tar = next(b for b in report["butypes"] if b["name"] == "tar")
    assert tar["default_env"]["HIST"] == "f"
    assert [f["logical_device"] for f in report["filesystems"]] == ["/export/data"]
    assert report["tape_devices"][0]["devices"][0]["device"] == "vtape0"
    assert report["connection_types"] == ["local", "tcp"]


def test_a_bad_password_is_exit_1_and_one_line(server_factory, tmp_path):
    server = server_factory()
    result = ndmp("info", f"ndmp@{server.host}", env={"NDMP_PASSWORD": "wrong"}, home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "authentication failed for user 'ndmp'" in result.stderr
    assert "Traceback" not in result.stderr and not result.stdout


def test_a_refused_connection_is_exit_1(tmp_path):
    result = ndmp("info", "ndmp@127.0.0.1:1", env={"NDMP_PASSWORD": "x"}, home=tmp_path)
    assert result.returncode == 1 and result.stderr == "ndmp: 127.0.0.1:1: cannot connect: connection refused\n"


def test_an_unknown_host_name_or_a_mode_644_password_is_exit_2(tmp_path):
    (tmp_path / "ndmp").mkdir()
    (tmp_path / "ndmp" / "lab.pw").write_text("pw\n")
    (tmp_path / "ndmp" / "lab.pw").chmod(0o644)
    (tmp_path / "ndmp" / "ndmp.toml").write_text('[host.lab]\naddress = "127.0.0.1"\npassword_file = "lab.pw"\n')
    unknown = ndmp("info", "labb", home=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.startswith("ndmp: config error: labb: unknown host name")
    assert unknown.stderr.count("\n") == 1
    readable = ndmp("info", "lab", home=tmp_path)
    assert readable.returncode == 2 and "has mode 644; chmod 600" in readable.stderr


def test_help_documents_the_exit_codes():
    result = ndmp("--help")
    assert result.returncode == 0
    for line in ("0    done", "1    the job failed", "2    usage or configuration error", "130  interrupted"):
        assert line in result.stdout
    assert ndmp("info").returncode == 2


def test_ctrl_c_is_exit_130_and_one_line(tmp_path):
    """A server that accepts but never greets: SIGINT while ndmp waits ends it cleanly."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "ndmpd.dma", "info", f"ndmp@127.0.0.1:{port}"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "NDMP_PASSWORD": "x", "XDG_CONFIG_HOME": str(tmp_path)})
        conn, _ = listener.accept()
        with conn:
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and err == "ndmp: interrupted\n" and not out


def test_info_over_v2_lists_butypes_by_attr(server_factory, tmp_path):
    server = server_factory()
    result = ndmp("info", f"ndmp@{server.host}", "--json", "--version", "2", env={"NDMP_PASSWORD": PASSWORD},
                  home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["version"] == 2 and report["host_info"]["os_type"] == "Linux"
    assert sorted(b["name"] for b in report["butypes"]) == ["dump", "tar"]
    assert report["filesystems"] == {"error": "not in NDMPv2"}
