"""Configuration: the public schema, one-line errors naming the key, the command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ndmpd.config import ConfigError, embedded_default, load

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    (tmp_path / "vol").mkdir(exist_ok=True)
    path = tmp_path / "ndmpd.toml"
    path.write_text(text.replace("VOL", str(tmp_path / "vol")).replace("TMP", str(tmp_path)))
    path.chmod(mode)
    return path


GOOD = """
[server]
listen = ["127.0.0.1:10000", "[::1]:10000"]
state_dir = "TMP/state"
auth = ["md5", "text"]

[[user]]
name = "ndmp"
password = "s3cret"

[[volume]]
name = "/export/data"
path = "VOL"
snapshot = "auto"

[[tape]]
name = "vtape0"
kind = "virtual"
path = "TMP/vtape0.img"
capacity = "10GiB"
"""


def test_documented_schema_loads(tmp_path):
    config = load(write(tmp_path, GOOD))
    assert [str(a) for a in config.server.listen] == ["127.0.0.1:10000", "[::1]:10000"]
    assert config.user("ndmp").password == "s3cret"
    assert config.volumes[0].name == "/export/data" and config.volumes[0].snapshot == "auto"
    assert config.tapes[0].capacity == 10 << 30


@pytest.mark.parametrize("change,key", [
    (("snapshot = \"auto\"", "snapshot = \"auto\"\ncolour = 1"), "volume[0].colour: unknown key"),
    (("path = \"VOL\"\n", ""), "volume[0].path: missing"),
    (("path = \"VOL\"", "path = \"TMP/nowhere\""), "volume[0].path:"),
    (("name = \"vtape0\"", "name = \"vtape0\"\n[[tape]]\nname = \"vtape0\""), "tape[1].name: duplicate"),
    (("auth = [\"md5\", \"text\"]", "auth = [\"md5\", \"kerberos\"]"), "server.auth[1]"),
    (("listen = [\"127.0.0.1:10000\", \"[::1]:10000\"]", "listen = [\"127.0.0.1:99999\"]"), "server.listen[0]"),
    (("capacity = \"10GiB\"", "capacity = \"lots\""), "tape[0].capacity"),
    (("snapshot = \"auto\"", "snapshot = \"zfs\""), "volume[0].snapshot"),
    (("[server]", "colour = 2\n[server]"), "colour: unknown key"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, change, key):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, GOOD.replace(*change)))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_world_readable_secrets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"user\[0\]\.password: .* world-readable"):
        load(write(tmp_path, GOOD, mode=0o644))
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    text = GOOD.replace('password = "s3cret"', f'password_file = "{secret}"')
    with pytest.raises(ConfigError, match=r"user\[0\]\.password_file: .* world-readable"):
        load(write(tmp_path, text, mode=0o644))
    secret.chmod(0o600)
    assert load(write(tmp_path, text, mode=0o644)).user("ndmp").password == "s3cret"


def test_embedded_default_generates_the_password_once(tmp_path):
    config, first = embedded_default(tmp_path / "state")
    assert first and config.user("ndmp").password == first
    assert [str(a) for a in config.server.listen] == ["127.0.0.1:10000"]
    assert config.volumes == () and [t.name for t in config.tapes] == ["vtape0"]
    assert (tmp_path / "state" / "ndmp.password").stat().st_mode & 0o077 == 0
    again, second = embedded_default(tmp_path / "state")
    assert second is None and again.user("ndmp").password == first


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndmpd", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, **(env or {})})


def test_check_config_cli_reports_ok_and_errors_without_traceback(tmp_path):
    good = run_cli("check-config", str(write(tmp_path, GOOD)))
    assert good.returncode == 0 and "OK" in good.stdout
    bad = run_cli("check-config", str(write(tmp_path, GOOD.replace("snapshot", "snapshoot"))))
    assert bad.returncode == 2
    assert bad.stderr.strip() == "ndmpd: config error: volume[0].snapshoot: unknown key (did you mean 'snapshot'?)"
    missing = run_cli("check-config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_example_configuration_in_conf_is_valid(tmp_path):
    text = (REPO / "conf" / "ndmpd.toml").read_text()
    copy = tmp_path / "ndmpd.toml"
    shutil.copy(REPO / "conf" / "ndmpd.toml", copy)
    copy.chmod(0o600)
    secret = tmp_path / "secret"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    (tmp_path / "data").mkdir()
    patched = (text.replace("/srv/data", str(tmp_path / "data")).replace("/var/lib/ndmpd", str(tmp_path))
               .replace("/etc/ndmpd/ndmp.password", str(secret)))
    copy.write_text(patched)
    config = load(copy)
    assert config.volumes and config.tapes and config.users


def test_the_shipped_example_with_a_library_is_valid(tmp_path):
    """conf/ndmpd.toml, with its host paths moved under a temporary directory."""
    text = (Path(__file__).parents[1] / "conf" / "ndmpd.toml").read_text()
    (tmp_path / "srv").mkdir()
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o600)
    text = (text.replace("/etc/ndmpd/ndmp.password", str(tmp_path / "pw")).replace("/srv/data", str(tmp_path / "srv"))
            .replace("/var/lib/ndmpd", str(tmp_path)))
    config = load(write(tmp_path, text))
    changer = config.changers[0]
    assert (changer.name, changer.drives, changer.slots, changer.import_export) == ("vlib0", ("ltape0",), 8, 1)
    assert next(t for t in config.tapes if t.name == "ltape0").path is None


@pytest.mark.parametrize("changer,message", [
    ('drives = ["nope"]', "no [[tape]] named 'nope'"),
    ('drives = ["vtape0"]\nslots = 0', "changer[0].slots"),
    ('drives = []', "1 to 64 drives"),
    ('drives = ["vtape0"]\nkind = "robot"', "changer[0].kind"),
])
def test_bad_changers_are_refused_naming_the_key(tmp_path, changer, message):
    text = GOOD + f'\n[[changer]]\nname = "vlib0"\npath = "{tmp_path / "lib"}"\n{changer}\n'
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(write(tmp_path, text))
