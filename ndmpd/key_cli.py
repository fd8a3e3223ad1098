"""``ndmpd key``: create, rotate and list the keys that encrypt virtual cartridges.

The keys live where the server's configuration says (``<state_dir>/keys``, or ``[keys]``
paths), so every command takes ``--config``, as ``ndmpd library`` does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import ConfigError, load
from .keystore import Keystore, KeystoreError, KeySource


def add_parser(sub: argparse._SubParsersAction) -> None:
    key = sub.add_parser("key", help="manage cartridge encryption keys")
    key.add_argument("--config", type=Path, required=True, help="the server's configuration file")
    cmds = key.add_subparsers(dest="key_command", required=True)
    for command, what, name in (
            ("create", "make a new key NAME (32 random bytes, mode 600)",
             "the key's name (what encryption_key names): letters, digits, . _ -"),
            ("rotate", "a new version of NAME for new cartridges; old versions stay to read", "an existing key's name")):
        cmds.add_parser(command, help=what).add_argument("name", help=name)
    cmds.add_parser("list", help="names, versions, ids and creation times (never the key bytes)")


def keystore_of(config_path: Path) -> Keystore:
    """The keystore the server with this configuration uses."""
    config = load(config_path)
    sources = {t.keys for t in config.tapes if t.keys is not None}
    source = sources.pop() if sources else KeySource(config.server.state_dir / "keys")
    return Keystore(source)


def run(args: argparse.Namespace) -> int:
    try:
        store = keystore_of(args.config)
        if args.key_command == "list":
            return _list(store)
        key = store.create(args.name) if args.key_command == "create" else store.rotate(args.name)
        print(f"key {key.name} version {key.version}: id {key.id_hex}, in {key.path}")
        if args.key_command == "rotate":
            print(f"new cartridges written with {key.name} use version {key.version}; the older versions "
                  "stay in place for the cartridges written with them")
        return 0
    except (KeystoreError, ConfigError, OSError) as exc:
        print(f"ndmpd key: {exc}", file=sys.stderr)
        return 1


def _list(store: Keystore) -> int:
    print(f"{'NAME':<20} {'VERSION':>7}  {'ID':<16}  {'CREATED':<20} PATH")
    for name in store.names():
        try:
            versions = store.versions(name)
        except KeystoreError as exc:
            print(f"{name:<20} {'-':>7}  {'?':<16}  {'-':<20} ({exc})")
            continue
        for key in versions:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.created))
            current = "  (current)" if key is versions[-1] and len(versions) > 1 else ""
            print(f"{name:<20} {key.version:>7}  {key.id_hex:<16}  {created:<20} {key.path}{current}")
    return 0
