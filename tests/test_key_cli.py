"""``ndmpd key`` and the encryption settings: keys are created private, listed without their
bytes, rotated with the old versions kept; ``encryption_key`` and ``[keys]`` are checked; and
``ndmpd tape info/extract`` name and use the key of an encrypted cartridge."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ndmpd.config import ConfigError, load
from ndmpd.devices.virtual_tape import VirtualTape
from ndmpd.devices.registry import make_drive

CONFIG = """
[server]
listen = ["127.0.0.1:10000"]
state_dir = "TMP/state"
auth = ["md5"]

[[user]]
name = "ndmp"
password = "s3cret"

[[tape]]
name = "vtape0"
path = "TMP/vtape0.img"
capacity = "64MiB"
encryption_key = "site"
EXTRA
"""


def config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "ndmpd.toml"
    path.write_text(CONFIG.replace("TMP", str(tmp_path)).replace("EXTRA", extra))
    path.chmod(0o600)
    return path


def ndmpd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndmpd", *map(str, args)], capture_output=True, timeout=60)


def test_create_list_rotate(tmp_path):
    conf = config(tmp_path)
    made = ndmpd("key", "--config", conf, "create", "site")
    assert made.returncode == 0, made.stderr
    key_file = tmp_path / "state" / "keys" / "site" / "v1.key"
    assert (key_file.stat().st_mode & 0o777) == 0o600 and len(key_file.read_bytes()) == 32
    again = ndmpd("key", "--config", conf, "create", "site")
    assert again.returncode == 1 and b"exists already" in again.stderr
    assert ndmpd("key", "--config", conf, "rotate", "site").returncode == 0
    listing = ndmpd("key", "--config", conf, "list").stdout.decode()
    rows = [line.split() for line in listing.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("site", "1"), ("site", "2")]
    assert key_file.read_bytes().hex() not in listing and rows[0][2] != rows[1][2]
    assert ndmpd("key", "--config", conf, "rotate", "nosuch").returncode == 1


def test_a_key_kept_by_path_is_created_there(tmp_path):
    conf = config(tmp_path, f'\n[keys]\nsite = "{tmp_path / "site.key"}"\n')
    assert ndmpd("key", "--config", conf, "create", "site").returncode == 0
    assert (tmp_path / "site.key").stat().st_mode & 0o777 == 0o600
    refused = ndmpd("key", "--config", conf, "rotate", "site")
    assert refused.returncode == 1 and b"switching encryption_key" in refused.stderr


@pytest.mark.parametrize("extra,message", [
    ('\n[[tape]]\nname = "lto"\nkind = "st"\npath = "/dev/null"\nencryption_key = "x"\n', "tape[1].encryption_key: only virtual tapes"),
    ('\n[keys]\n"../x" = "/tmp/k"\n', "keys.../x: key name"),
    ('\n[keys]\nsite = 3\n', "keys.site: the path of a key file"),
])
def test_bad_encryption_settings_are_refused_naming_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(config(tmp_path, extra))


def test_a_bad_key_name_and_a_library_conflict_are_config_errors(tmp_path):
    conf = config(tmp_path)
    conf.write_text(conf.read_text().replace('encryption_key = "site"', 'encryption_key = "a b"'))
    with pytest.raises(ConfigError, match=r"tape\[0\].encryption_key: key name"):
        load(conf)
    library = (f'\n[[tape]]\nname = "ltape0"\nencryption_key = "other"\n'
               f'\n[[changer]]\nname = "vlib0"\npath = "{tmp_path / "lib"}"\ndrives = ["ltape0"]\n'
               'encryption_key = "site"\n')
    with pytest.raises(ConfigError, match=r"tape\[1\].encryption_key: 'other' differs from library vlib0"):
        load(config(tmp_path, library))


def test_a_library_key_applies_to_its_drives(tmp_path):
    library = (f'\n[[tape]]\nname = "ltape0"\n'
               f'\n[[changer]]\nname = "vlib0"\npath = "{tmp_path / "lib"}"\ndrives = ["ltape0"]\n'
               'encryption_key = "lib"\n')
    loaded = load(config(tmp_path, library))
    drive = next(t for t in loaded.tapes if t.name == "ltape0")
    assert drive.encryption_key == "lib" and drive.keys.directory == tmp_path / "state" / "keys"


def a_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("secret.txt")
        data = b"the plans\n" * 1000
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tape_info_names_the_key_and_extract_decrypts(tmp_path):
    conf = config(tmp_path)
    assert ndmpd("key", "--config", conf, "create", "site").returncode == 0
    tape = next(t for t in load(conf).tapes if t.name == "vtape0")
    drive = make_drive(tape)
    assert isinstance(drive, VirtualTape)
    archive = a_tar()
    drive.open(write=True)
    drive.write_record(b"label")
    drive.write_filemarks(1)
    for i in range(0, len(archive), 10240):
        drive.write_record(archive[i:i + 10240])
    drive.close()
    image = tmp_path / "vtape0.img"
    assert b"the plans" not in image.read_bytes()
    info = ndmpd("tape", "info", image).stdout.decode()
    key_id = re.search(r"key site \(id ([0-9a-f]{16})\)", info).group(1)
    assert re.search(r"file 1 +\d+ records +%d bytes" % len(archive), info), info
    listing = ndmpd("key", "--config", conf, "list").stdout.decode()
    assert key_id in listing
    out = ndmpd("tape", "extract", "--config", conf, image, 1)
    assert out.returncode == 0, out.stderr
    assert out.stdout == archive
    assert ndmpd("tape", "extract", "--key-file", tmp_path / "state/keys/site/v1.key", image, 1).stdout == archive
    bare = ndmpd("tape", "extract", image, 1)
    assert bare.returncode == 1 and f"(id {key_id}): give --config or --key-file".encode() in bare.stderr
    other = tmp_path / "other.key"
    other.write_bytes(b"\1" * 32)
    other.chmod(0o600)
    wrong = ndmpd("tape", "extract", "--key-file", other, image, 1)
    assert wrong.returncode == 1 and b"(wrong key)" in wrong.stderr and wrong.stdout == b""


def test_a_library_drive_seals_the_cartridges_it_is_loaded_with(tmp_path):
    library = (f'\n[[tape]]\nname = "ltape0"\n'
               f'\n[[changer]]\nname = "vlib0"\npath = "{tmp_path / "lib"}"\ndrives = ["ltape0"]\n'
               'encryption_key = "lib"\n')
    conf = config(tmp_path, library)
    assert ndmpd("key", "--config", conf, "create", "lib").returncode == 0
    drive = make_drive(next(t for t in load(conf).tapes if t.name == "ltape0"))
    for barcode in ("A1", "A2"):
        drive.load(tmp_path / f"{barcode}.img")
        drive.open(write=True)
        drive.write_record(b"library secret " * 100)
        drive.close()
        info = ndmpd("tape", "info", tmp_path / f"{barcode}.img").stdout.decode()
        assert "encryption AES-256-GCM, key lib" in info
        assert b"library secret" not in (tmp_path / f"{barcode}.img").read_bytes()
    drive.unload()


def test_write_protection_keeps_the_encryption(tmp_path):
    conf = config(tmp_path)
    assert ndmpd("key", "--config", conf, "create", "site").returncode == 0
    drive = make_drive(next(t for t in load(conf).tapes if t.name == "vtape0"))
    drive.open(write=True)
    drive.write_record(b"kept")
    drive.close()
    image = tmp_path / "vtape0.img"
    assert ndmpd("tape", "protect", image, "on").returncode == 0
    drive.open(write=False)
    drive.rewind()
    assert drive.read_record(100) == b"kept"
    assert drive.status().write_protected
    drive.close()
