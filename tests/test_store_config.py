"""``[tape.store]`` and ``[changer.store]``: what a user may write, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ndmpd.config import ConfigError, load
from ndmpd.store_config import DEFAULT_PART, StoreConfig

BASE = """
[server]
listen = ["127.0.0.1:10000"]
state_dir = "TMP/state"
auth = ["text"]

[[user]]
name = "ndmp"
password = "pw"
"""
DRIVE = """
[[tape]]
name = "s3tape"
{tape}
[tape.store]
bucket = "backups"
endpoint = "http://127.0.0.1:9000"
prefix = "/ndmpd/"
{store}
"""


def config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "ndmpd.toml"
    path.write_text((BASE + text).replace("TMP", str(tmp_path)))
    path.chmod(0o600)
    return path


def credentials(tmp_path: Path, mode: int = 0o600, text: str | None = None) -> Path:
    path = tmp_path / "creds"
    path.write_text(text if text is not None else "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
    path.chmod(mode)
    return path


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(config(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_drive_with_a_store_has_no_path_and_sensible_defaults(tmp_path):
    creds = credentials(tmp_path)
    loaded = load(config(tmp_path, DRIVE.format(tape="", store=f'credentials_file = "{creds}"')))
    [tape] = loaded.tapes
    assert tape.path is None
    assert tape.store == StoreConfig("backups", "http://127.0.0.1:9000", "ndmpd/", credentials_file=creds)
    assert tape.store.part_size == DEFAULT_PART and tape.store.verify_tls is True
    assert tape.store.credentials() == ("AK", "SK")


@pytest.mark.parametrize("store, key, words", [
    ('bucket2 = "x"', "tape[0].store.bucket2", "unknown key"),
    ('part_size = "1MiB"', "tape[0].store.part_size", ""),
    ('part_size = "1GiB"', "tape[0].store.part_size", "at most 512 MiB"),
    ("verify_tls = 1", "tape[0].store.verify_tls", "wrong type"),
    ("uploads_in_flight = 0", "tape[0].store.uploads_in_flight", "1 to 32"),
    ("timeout = 0", "tape[0].store.timeout", "0.5 to 600"),
])
def test_bad_store_settings_name_their_key(tmp_path, store, key, words):
    message = error(tmp_path, DRIVE.format(tape="", store=store))
    assert message.startswith(key) and words in message, message


def test_bad_bucket_and_endpoint(tmp_path):
    text = DRIVE.format(tape="", store="").replace('bucket = "backups"', 'bucket = "Bad_Bucket"')
    assert error(tmp_path, text).startswith("tape[0].store.bucket:")
    text = DRIVE.format(tape="", store="").replace("http://127.0.0.1:9000", "127.0.0.1:9000")
    assert error(tmp_path, text).startswith("tape[0].store.endpoint:")


def test_a_credentials_file_others_can_read_is_refused(tmp_path):
    creds = credentials(tmp_path, mode=0o644)
    message = error(tmp_path, DRIVE.format(tape="", store=f'credentials_file = "{creds}"'))
    assert "readable by others" in message and "chmod 600" in message


def test_a_credentials_file_without_keys_is_refused(tmp_path):
    creds = credentials(tmp_path, text="[default]\naws_access_key_id = AK\n")
    message = error(tmp_path, DRIVE.format(tape="", store=f'credentials_file = "{creds}"'))
    assert "aws_secret_access_key" in message


def test_path_and_store_together_and_store_on_st_are_refused(tmp_path):
    both = error(tmp_path, DRIVE.format(tape=f'path = "{tmp_path}/x.img"', store=""))
    assert both.startswith("tape[0].path:") and "not both" in both
    st = error(tmp_path, DRIVE.format(tape='kind = "st"\npath = "/dev/null"', store=""))
    assert st.startswith("tape[0].store:") and "only virtual" in st


def test_a_library_drive_takes_its_store_from_the_library(tmp_path):
    (tmp_path / "lib").mkdir()
    text = DRIVE.format(tape="", store="") + f"""
[[changer]]
name = "vlib0"
path = "{tmp_path}/lib"
drives = ["s3tape"]
"""
    assert "whose store keeps its cartridges" in error(tmp_path, text)


def test_a_library_needs_a_prefix_of_its_own(tmp_path):
    (tmp_path / "lib").mkdir()
    text = DRIVE.format(tape="", store="") + f"""
[[tape]]
name = "ltape0"

[[changer]]
name = "vlib0"
path = "{tmp_path}/lib"
drives = ["ltape0"]
[changer.store]
bucket = "backups"
endpoint = "http://127.0.0.1:9000"
prefix = "ndmpd"
"""
    assert "a library needs a prefix of its own" in error(tmp_path, text)
    loaded = load(config(tmp_path, text.replace('prefix = "ndmpd"\n', 'prefix = "vlib0"\n')))
    assert loaded.changers[0].store.prefix == "vlib0/"
