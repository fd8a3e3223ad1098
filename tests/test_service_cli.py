"""The command line an admin meets first: help for every argument, serve overrides, init-config."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ndmpd.cli import _parser
from ndmpd.config import load
from ndmpd.context import ServerContext
from tests.blocking_client import NdmpClient
from ndmpd.server import NdmpServer

REPO = Path(__file__).resolve().parents[1]


def ndmpd(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndmpd", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, **kw)


def subcommands(parser: argparse.ArgumentParser, path: str = "ndmpd"):
    """(name, parser) of every command and sub-command, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subcommands(child, f"{path} {name}")


def test_every_positional_argument_of_every_subcommand_has_one_line_of_help():
    missing = [f"{path}: {action.dest}" for path, parser in subcommands(_parser())
               for action in parser._actions
               if not action.option_strings and not isinstance(action, argparse._SubParsersAction)
               and not action.help]
    assert missing == []


def test_serve_help_names_the_defaults():
    text = ndmpd("serve", "--help").stdout
    for option in ("--listen", "--state-dir", "--config", "--log-level"):
        assert option in text
    assert "127.0.0.1:10000" in text and "default" in text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_listens_and_keeps_state_where_the_command_line_says(tmp_path):
    port, state = free_port(), tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "ndmpd", "serve", "--listen", f"127.0.0.1:{port}",
                             "--state-dir", str(state)], cwd=REPO, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=dict(os.environ, HOME=str(tmp_path)))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = NdmpClient("127.0.0.1", port, 4, timeout=10)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        password = (state / "ndmp.password").read_text().strip()
        client.login("ndmp", password)
        client.close()
    finally:
        proc.terminate()
        proc.wait(20)
    assert stat.S_IMODE((state / "ndmp.password").stat().st_mode) == 0o600


def test_serve_refuses_a_bad_listen_override_in_one_line():
    result = ndmpd("serve", "--listen", "nowhere:99999")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("ndmpd: config error: --listen[0]:") and "Traceback" not in result.stderr


async def test_init_config_writes_a_configuration_that_checks_and_serves(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    state = tmp_path / "state"
    result = ndmpd("init-config", "--volume", f"/export/data={data}", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "ndmpd.toml"
    conf.write_text(result.stdout)
    conf.chmod(0o600)
    secret = state / "ndmp.password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and str(secret) in result.stderr
    check = ndmpd("check-config", str(conf))
    assert check.returncode == 0 and "1 volumes" in check.stdout, check.stderr
    config = load(conf, {"listen": ["127.0.0.1:0"]})
    assert [(v.name, v.path) for v in config.volumes] == [("/export/data", data)]
    srv = NdmpServer(ServerContext(config))
    host, port = (await srv.start())[0]

    def log_in() -> None:
        with NdmpClient(host, port, 4) as client:
            client.login("ndmp", secret.read_text().strip())
            assert client.call("CONFIG_GET_FS_INFO").fs_info[0].fs_logical_device == "/export/data"
    await asyncio.to_thread(log_in)
    srv.stop()
    await srv.serve_until_stopped()
    again = ndmpd("init-config", "--state-dir", str(state))         # a second run keeps the password
    assert again.returncode == 0 and "kept the existing" in again.stderr
    assert secret.read_text().strip() == load(conf).users[0].password


def test_init_config_refuses_a_volume_that_is_not_a_directory(tmp_path):
    result = ndmpd("init-config", "--volume", f"data={tmp_path / 'absent'}", "--state-dir", str(tmp_path))
    assert result.returncode == 2 and "--volume[0]" in result.stderr and not result.stdout


def test_serve_refuses_a_state_dir_it_cannot_create_in_one_line(tmp_path):
    result = ndmpd("serve", "--listen", "127.0.0.1:0", "--state-dir", "/proc/no-such-dir/ndmpd")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("ndmpd: config error: server.state_dir: cannot keep state in "
                                     "/proc/no-such-dir/ndmpd: No such file or directory (give another with --state-dir)")


def test_serve_names_the_address_it_cannot_listen_on(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for listen in (f"127.0.0.1:{port}", "999.1.1.1:10000"):
            result = ndmpd("serve", "--listen", listen, "--state-dir", str(tmp_path / "state"),
                           env=dict(os.environ, HOME=str(tmp_path)))
            lines = [line for line in result.stderr.splitlines() if "cannot listen" in line]
            assert result.returncode == 1 and "Traceback" not in result.stderr
            assert len(lines) == 1 and listen in lines[0], result.stderr


def test_serve_refuses_a_configured_state_dir_it_cannot_create_in_one_line(tmp_path):
    config = tmp_path / "ndmpd.toml"
    config.write_text('[server]\nlisten = ["127.0.0.1:0"]\nstate_dir = "/proc/no-such-dir/ndmpd"\n'
                      '[[user]]\nname = "ndmp"\npassword = "secret"\n')
    config.chmod(0o600)
    result = ndmpd("serve", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().startswith("ndmpd: config error: server.state_dir:")


@pytest.mark.parametrize("existing", ["world-readable", "empty"])
def test_init_config_never_prints_a_configuration_check_config_would_refuse(tmp_path, existing):
    secret = tmp_path / "ndmp.password"
    secret.write_text("" if existing == "empty" else "hunter2\n")
    secret.chmod(0o644 if existing == "world-readable" else 0o600)
    result = ndmpd("init-config", "--state-dir", str(tmp_path / "state"), "--password-file", str(secret))
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("ndmpd: config error: user[0].password_file:")
    assert secret.read_text() == ("" if existing == "empty" else "hunter2\n")      # kept as it was
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    result = ndmpd("init-config", "--state-dir", str(tmp_path / "state"), "--password-file", str(secret))
    assert result.returncode == 0 and "kept the existing password" in result.stderr
    (tmp_path / "ndmpd.toml").write_text(result.stdout)
    (tmp_path / "ndmpd.toml").chmod(0o600)
    assert ndmpd("check-config", str(tmp_path / "ndmpd.toml")).returncode == 0


def test_init_config_refuses_a_state_dir_it_cannot_create_in_one_line(tmp_path):
    result = ndmpd("init-config", "--state-dir", "/proc/no-such-dir/ndmpd")
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.startswith("ndmpd: config error: cannot create /proc/no-such-dir")
