"""``ndmpd init-config``: a working configuration on stdout and a generated password file,
so a new install reaches its first backup without editing anything by hand."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path

from .config import ConfigError, build, default_state_dir, new_secret_file, parse_listen

DEFAULT_LISTEN = "127.0.0.1:10000"


def service_state_dir() -> Path:
    """/var/lib/ndmpd for root (the systemd unit's StateDirectory), else the user's data directory."""
    return Path("/var/lib/ndmpd") if os.geteuid() == 0 else default_state_dir()


def add_parser(sub: argparse._SubParsersAction) -> None:
    init = sub.add_parser("init-config", help="print a working configuration and create its password file",
                          description="Prints a configuration to stdout (redirect it to ndmpd.toml) and "
                                      "creates the user's password file, mode 600, if it does not exist.")
    init.add_argument("--volume", action="append", default=[], metavar="NAME=PATH",
                      help="a volume DMAs may back up: NAME is what the DMA names (FILESYSTEM), PATH the "
                           "directory here; PATH alone uses it as the name too (repeatable)")
    init.add_argument("--listen", action="append", metavar="ADDR:PORT",
                      help=f"address to serve on (repeatable; default {DEFAULT_LISTEN})")
    init.add_argument("--state-dir", type=Path, metavar="DIR",
                      help="dump dates, cartridges, password (default: /var/lib/ndmpd as root, "
                           "else ~/.local/share/ndmpd)")
    init.add_argument("--user", default="ndmp", help="the DMA account's name (default ndmp)")
    init.add_argument("--password-file", type=Path, metavar="FILE",
                      help="where the generated password is kept (default STATE_DIR/ndmp.password)")


def parse_volume(spec: str, index: int) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` as (name, absolute path of an existing directory)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = spec, spec
    if not name or not path:
        raise ConfigError(f"--volume[{index}]: expected NAME=PATH, got {spec!r}")
    where = Path(path).expanduser().resolve()
    if not where.is_dir():
        raise ConfigError(f"--volume[{index}]: {where} is not a directory")
    return name, where


def render(volumes: list[tuple[str, Path]], listen: list[str], state_dir: Path, user: str,
           password_file: Path) -> str:
    """The configuration text: every value quoted as TOML (JSON strings are valid TOML strings)."""
    q = json.dumps
    lines = ["# Written by `ndmpd init-config`; every key is documented in conf/ndmpd.toml.",
             "# Check it with `ndmpd check-config FILE`; run it with `ndmpd serve --config FILE`.", "",
             "[server]", f"listen = [{', '.join(q(a) for a in listen)}]", f"state_dir = {q(str(state_dir))}",
             'auth = ["md5", "text"]', 'log_level = "info"', "",
             "[[user]]", f"name = {q(user)}", f"password_file = {q(str(password_file))}", ""]
    for name, path in volumes:
        lines += ["[[volume]]", f"name = {q(name)}", f"path = {q(str(path))}", 'snapshot = "auto"', ""]
    lines += ["[[tape]]", 'name = "vtape0"', 'kind = "virtual"', f"path = {q(str(state_dir / 'vtape0.img'))}",
              'capacity = "10GiB"', ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    listen = args.listen or [DEFAULT_LISTEN]
    for i, address in enumerate(listen):
        parse_listen(address, f"--listen[{i}]")
    volumes = [parse_volume(spec, i) for i, spec in enumerate(args.volume)]
    names = [name for name, _ in volumes]
    if len(set(names)) != len(names):
        raise ConfigError("--volume: two volumes with one name")
    state_dir = (args.state_dir or service_state_dir()).expanduser().resolve()
    password_file = (args.password_file or state_dir / "ndmp.password").expanduser().resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        password_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = new_secret_file(password_file)
    except OSError as exc:
        raise ConfigError(f"cannot create {exc.filename or state_dir}: {exc.strerror or exc} "
                          f"(give another --state-dir or --password-file)") from None
    text = render(volumes, listen, state_dir, args.user, password_file)
    try:                                # what it writes must pass check-config (an existing file may not)
        build(tomllib.loads(text), "<init-config>", state_dir)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (init-config keeps an existing password file as it is)") from None
    sys.stdout.write(text)
    said = "generated" if created else "kept the existing"
    print(f"ndmpd: {said} password for user '{args.user}' in {password_file} (mode 600)", file=sys.stderr)
    return 0
