"""``ndmpd replica status|reset|rollback VOLUME``: a replica volume's state, by hand, on its host."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import Config, load
from .data.env import find_volume, volume_list
from .replica.state import ReplicaError
from .replica.status import replica_env
from .replica.store import ReplicaStore
from .snapshots.base import SnapshotError

DEFAULT_CONFIG = Path("/etc/ndmpd/ndmpd.toml")


def add_parser(sub: argparse._SubParsersAction) -> None:
    replica = sub.add_parser("replica", help="inspect or change a replica volume (replica = true)")
    replica.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"the server's configuration "
                         f"(default {DEFAULT_CONFIG})")
    cmds = replica.add_subparsers(dest="replica_command", required=True)
    status = cmds.add_parser("status", help="master, role, the state shown, the states kept")
    status.add_argument("volume", help="the volume's name or path")
    status.add_argument("--json", action="store_true", help="one JSON object")
    reset = cmds.add_parser("reset", help="forget the master: the next update may come from any master "
                            "(a full update); the data shown stays")
    reset.add_argument("volume", help="the volume's name or path")
    rollback = cmds.add_parser("rollback", help="show an older kept state (the next update is a full one)")
    rollback.add_argument("volume", help="the volume's name or path")
    rollback.add_argument("state", nargs="?", help="a kept state id (default: the one before the current)")


def _store(config: Config, name: str) -> ReplicaStore:
    volume = find_volume(name, config.volumes)
    if volume is None:
        raise ReplicaError(f"{name} is not a configured volume; volumes: {volume_list(config.volumes)}")
    if not volume.replica:
        raise ReplicaError(f"{volume.name} is not a replica volume (replica = true in {config.source})")
    return ReplicaStore(volume, config.server.state_dir)


def run(args: argparse.Namespace) -> int:
    try:
        store = _store(load(args.config), args.volume)
        if args.replica_command == "status":
            return _status(store, args.json)
        with store.locked(wait=False):
            if args.replica_command == "reset":
                store.reset()
                store.clean()
                print(f"{store.volume.name}: master forgotten; the next update is a full one from any master")
            else:
                store.clean()
                chosen = store.rollback(args.state)
                print(f"{store.volume.name}: now shows {chosen.id}; the next update is a full one")
        return 0
    except (ReplicaError, SnapshotError, OSError) as exc:
        print(f"ndmpd replica: {exc}", file=sys.stderr)
        return 1


def _status(store: ReplicaStore, as_json: bool) -> int:
    pairs = dict(replica_env(store.volume, store.state_dir))
    record = store.record()
    current = store.current(record)
    kept = [{"id": s.id, "received": s.received, "current": s == current} for s in store.states(record)]
    if as_json:
        print(json.dumps({"volume": store.volume.name, "path": str(store.path), "master": record.master,
                          "role": record.role, "state": pairs["NDMPD_REPLICA_STATE"],
                          "needs_full_update": record.reseed, "states": kept}))
        return 0
    print(f"volume  {store.volume.name} ({store.path})")
    print(f"master  {record.master or '(none yet)'}")
    print(f"role    {record.role}{'  (next update: full)' if record.reseed else ''}")
    print(f"state   {current.id if current else '(none)'}")
    for state in kept:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state["received"])) if state["received"] else "?"
        print(f"  {'*' if state['current'] else ' '} {state['id']}  received {when}")
    return 0
