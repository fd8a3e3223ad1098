"""Configuration surprises, refused with one line naming the key: an unknown key before a
missing one (with the likely key), sizes as written with a sane minimum per setting, and path
keys checked for existence, kind and duplicates (through symlinks and "..")."""

from __future__ import annotations

import os
import re

import pytest

from ndmpd.config import ConfigError, build, parse_size

GiB = 1 << 30


def base(tmp_path) -> dict:
    (tmp_path / "vol").mkdir(exist_ok=True)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    return {
        "server": {"listen": ["127.0.0.1:10000"], "state_dir": str(tmp_path / "state")},
        "user": [{"name": "ndmp", "password_file": str(secret)}],
        "volume": [{"name": "/data", "path": str(tmp_path / "vol")}],
        "tape": [{"name": "vtape0", "path": str(tmp_path / "v0.img")}],
    }


def refused(tmp_path, data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        build(data, "<test>", tmp_path)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("table,typo,right", [
    ("user", "pasword_file", "password_file"),
    ("volume", "pth", "path"),
    ("tape", "capacty", "capacity"),
    ("server", "max_sesions", "max_sessions"),
    ("changer", "slot", "slots"),
])
def test_an_unknown_key_is_named_before_any_missing_one(tmp_path, table, typo, right):
    data = base(tmp_path)
    if table == "changer":
        data["changer"] = [{"name": "lib", "path": str(tmp_path / "lib"), "drives": ["vtape0"]}]
    entry = data[table] if table == "server" else data[table][0]
    entry[typo] = entry.pop(right, "x") if right in entry else "8"
    message = refused(tmp_path, data)
    prefix = table if table == "server" else f"{table}[0]"
    assert message.startswith(f"{prefix}.{typo}: unknown key"), message
    assert repr(right) in message and "missing" not in message


def test_an_unknown_top_level_table_is_named(tmp_path):
    data = base(tmp_path)
    data["volumes"] = []
    assert refused(tmp_path, data) == "volumes: unknown key (did you mean 'volume'?)"


@pytest.mark.parametrize("written,size", [
    ("20GB", 20 * 10**9), ("20GiB", 20 * GiB), ("20G", 20 * GiB), ("1.5TB", 15 * 10**11), ("512MiB", 512 << 20),
    ("2000kB", 2 * 10**6), ("2000KiB", 2000 << 10), ("20 MB", 20 * 10**6), (5_000_000, 5_000_000),
    ("5000000", 5_000_000), ("5000000B", 5_000_000),
])
def test_sizes_mean_what_is_written(tmp_path, written, size):
    data = base(tmp_path)
    data["tape"][0]["capacity"] = written
    assert build(data, "<test>", tmp_path).tapes[0].capacity == size


@pytest.mark.parametrize("key,value", [
    ("capacity", 20), ("capacity", "20"), ("capacity", "20kB"), ("capacity", "0"), ("early_warning", 100),
    ("max_block_size", "100B"), ("capacity", "lots"), ("capacity", "20XB"), ("capacity", True),
    ("capacity", "2000000.5"),
])
def test_sizes_below_the_minimum_or_unreadable_are_refused(tmp_path, key, value):
    data = base(tmp_path)
    data["tape"][0][key] = value
    message = refused(tmp_path, data)
    assert message.startswith(f"tape[0].{key}:"), message
    if value == 20:
        assert "20 bytes" in message and "20GiB" in message


def test_the_record_size_minimum_names_its_key(tmp_path):
    data = base(tmp_path)
    data["server"]["max_record_size"] = 4096
    assert refused(tmp_path, data).startswith("server.max_record_size: 4096 is 4096 bytes, below the minimum")


def test_parse_size_keeps_its_default_minimum_for_other_callers():
    assert parse_size("1", "--capacity") == 1
    with pytest.raises(ConfigError, match="--capacity"):
        parse_size("0", "--capacity")


def test_a_tape_path_that_is_a_directory_is_refused(tmp_path):
    data = base(tmp_path)
    (tmp_path / "adir").mkdir()
    data["tape"][0]["path"] = str(tmp_path / "adir")
    assert re.match(r"tape\[0\]\.path: .*adir is not a cartridge file \(a directory\)", refused(tmp_path, data))


def test_an_st_tape_must_be_a_character_device(tmp_path):
    data = base(tmp_path)
    (tmp_path / "plain").write_text("")
    data["tape"].append({"name": "lto", "kind": "st", "path": str(tmp_path / "plain")})
    assert refused(tmp_path, data).startswith("tape[1].path:")
    data["tape"][1]["path"] = "/dev/null"           # a character device: accepted
    assert build(data, "<test>", tmp_path).tapes[1].kind == "st"


def test_two_tapes_on_one_cartridge_are_refused_through_symlinks_and_dotdot(tmp_path):
    data = base(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "v0.img", tmp_path / "link.img")
    for other in (tmp_path / "v0.img", tmp_path / "sub" / ".." / "v0.img", tmp_path / "link.img"):
        data["tape"][1:] = [{"name": "vtape1", "path": str(other)}]
        message = refused(tmp_path, data)
        assert message.startswith("tape[1].path:") and "also tape[0].path" in message, message


def test_volumes_may_neither_share_nor_nest(tmp_path):
    data = base(tmp_path)
    (tmp_path / "vol" / "inner").mkdir()
    os.symlink(tmp_path / "vol", tmp_path / "alias")
    for path, word in ((tmp_path / "alias", "same directory"), (tmp_path / "vol" / "inner", "overlap"),
                       (tmp_path / "vol" / "inner" / "..", "same directory")):
        data["volume"][1:] = [{"name": "/other", "path": str(path)}]
        message = refused(tmp_path, data)
        assert message.startswith("volume[1].path:") and word in message, message
    data["volume"][1:] = [{"name": "/inner", "path": str(tmp_path / "vol" / "inner")}]
    data["volume"][0], data["volume"][1] = data["volume"][1], data["volume"][0]   # outer listed second
    assert "overlap" in refused(tmp_path, data)
    (tmp_path / "volume2").mkdir()                 # a sibling sharing a name prefix is fine
    data["volume"] = [{"name": "/a", "path": str(tmp_path / "vol")}, {"name": "/b", "path": str(tmp_path / "volume2")}]
    assert len(build(data, "<test>", tmp_path).volumes) == 2


def test_a_changer_path_must_be_a_directory_and_not_a_tape(tmp_path):
    data = base(tmp_path)
    data["tape"].append({"name": "lt0"})
    (tmp_path / "libfile").write_text("")
    data["changer"] = [{"name": "lib", "path": str(tmp_path / "libfile"), "drives": ["lt0"]}]
    assert refused(tmp_path, data).startswith("changer[0].path:")


def test_state_dir_that_is_a_file_is_refused(tmp_path):
    data = base(tmp_path)
    (tmp_path / "statefile").write_text("")
    data["server"]["state_dir"] = str(tmp_path / "statefile")
    assert refused(tmp_path, data).startswith("server.state_dir:")
