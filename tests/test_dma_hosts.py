"""Which server a command names: ndmp.toml host tables (validated like ndmpd check-config),
inline [user@]address[:port] specs with IPv6 in brackets, and HOST:VOLUME targets."""

from __future__ import annotations

import pytest

from ndmpd.dma.hosts import (HostConfigError, config_path, load_hosts, parse_inline, resolve,
                             split_target)


def write(tmp_path, text: str, password: str = "s3cret\n", mode: int = 0o600):
    (tmp_path / "nas.pw").write_text(password)
    (tmp_path / "nas.pw").chmod(mode)
    path = tmp_path / "ndmp.toml"
    path.write_text(text)
    return path


NAS = '[host.nas]\naddress = "192.0.2.10"\nport = 10001\nuser = "backup"\npassword_file = "nas.pw"\n'


def test_a_configured_name_gives_address_port_user_and_password(tmp_path):
    path = write(tmp_path, NAS + '[host.v6]\naddress = "2001:db8::1"\npassword_file = "nas.pw"\n')
    hosts = load_hosts(path)
    nas = resolve("nas", hosts, path, env={})
    assert (nas.address, nas.port, nas.user, nas.password) == ("192.0.2.10", 10001, "backup", "s3cret")
    v6 = resolve("v6", hosts, path, env={})
    assert (v6.address, v6.port, v6.user, v6.display) == ("2001:db8::1", 10000, "ndmp", "[2001:db8::1]:10000")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_password_file_others_may_read_is_refused(tmp_path, mode):
    path = write(tmp_path, NAS, mode=mode)
    with pytest.raises(HostConfigError, match=rf"host\.nas\.password_file: .*nas\.pw has mode {mode:o}; chmod 600"):
        resolve("nas", load_hosts(path), path, env={})


@pytest.mark.parametrize("table,message", [
    ('[host.nas]\nport = 1\npassword_file = "nas.pw"\n', r"host\.nas\.address: required"),
    ('[host.nas]\naddress = "a"\nport = 70000\npassword_file = "nas.pw"\n', r"host\.nas\.port: must be an integer"),
    ('[host.nas]\naddress = "a"\n', r"host\.nas\.password_file: required"),
    ('[host.nas]\naddress = "a"\npassword = "x"\npassword_file = "p"\n', r"host\.nas\.password: unknown key"),
    ('[host.nas\n', r"not valid TOML"),
])
def test_config_errors_are_one_line_naming_the_key(tmp_path, table, message):
    path = write(tmp_path, table)
    with pytest.raises(HostConfigError, match=message) as err:
        load_hosts(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_an_empty_or_missing_password_file_is_refused(tmp_path):
    path = write(tmp_path, NAS, password="\n")
    with pytest.raises(HostConfigError, match="is empty"):
        resolve("nas", load_hosts(path), path, env={})
    (tmp_path / "nas.pw").unlink()
    with pytest.raises(HostConfigError, match="cannot read"):
        resolve("nas", load_hosts(path), path, env={})


def test_a_missing_default_config_is_empty_but_an_explicit_one_is_an_error(tmp_path):
    assert load_hosts(tmp_path / "none.toml") == {}
    with pytest.raises(HostConfigError, match="no such file"):
        load_hosts(tmp_path / "none.toml", required=True)


def test_the_config_path_follows_xdg(tmp_path):
    assert config_path(None, {"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "ndmp" / "ndmp.toml"
    assert config_path("/etc/x.toml", {"XDG_CONFIG_HOME": str(tmp_path)}).as_posix() == "/etc/x.toml"


@pytest.mark.parametrize("text,expected", [
    ("192.0.2.1", (None, "192.0.2.1", None)),
    ("backup@192.0.2.1:10001", ("backup", "192.0.2.1", 10001)),
    ("[::1]", (None, "::1", None)),
    ("ndmp@[2001:db8::7]:10002", ("ndmp", "2001:db8::7", 10002)),
    ("fe80::1", (None, "fe80::1", None)),
    ("nas.example.com:10000", (None, "nas.example.com", 10000)),
])
def test_inline_specs(text, expected):
    assert parse_inline(text) == expected


@pytest.mark.parametrize("text,message", [
    ("[::1", "unclosed"), ("[::1]x", "expected ':PORT'"), ("h:0", "not 1-65535"), ("h:port", "not 1-65535"),
    ("[nothex]:1", "not an IPv6 address"), ("@h", "empty user"),
])
def test_bad_inline_specs(text, message):
    with pytest.raises(HostConfigError, match=message):
        parse_inline(text)


def test_inline_hosts_take_the_password_from_the_environment(tmp_path):
    path = tmp_path / "ndmp.toml"
    host = resolve("backup@[::1]:10001", {}, path, env={"NDMP_PASSWORD": "pw"})
    assert (host.user, host.address, host.port, host.password) == ("backup", "::1", 10001, "pw")
    with pytest.raises(HostConfigError, match="no password: set NDMP_PASSWORD"):
        resolve("192.0.2.1", {}, path, env={})


def test_an_unknown_bare_name_is_refused_not_looked_up(tmp_path):
    path = write(tmp_path, NAS)
    with pytest.raises(HostConfigError, match=r"nsa: unknown host name, not in .*\(known: nas\)"):
        resolve("nsa", load_hosts(path), path, env={"NDMP_PASSWORD": "pw"})
    assert resolve("ndmp@nsa", {}, path, env={"NDMP_PASSWORD": "pw"}).address == "nsa"


@pytest.mark.parametrize("text,expected", [
    ("nas:/export/data", ("nas", "/export/data")),
    ("nas:vtape0", ("nas", "vtape0")),
    ("backup@192.0.2.1:10001:/vol", ("backup@192.0.2.1:10001", "/vol")),
    ("[::1]:10001:vtape0", ("[::1]:10001", "vtape0")),
    ("ndmp@[2001:db8::1]:/export/data", ("ndmp@[2001:db8::1]", "/export/data")),
])
def test_host_colon_volume_targets(text, expected):
    assert split_target(text) == expected


@pytest.mark.parametrize("text", ["nas", "nas:", "[::1]", "u@[::1]:"])
def test_a_target_without_a_volume_is_refused(text):
    with pytest.raises(HostConfigError, match="expected HOST:NAME"):
        split_target(text)
