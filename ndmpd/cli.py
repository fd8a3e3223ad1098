"""The ``ndmpd`` command: serve, check-config, tape, library, dump, restore."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

from . import __version__, dump_cli, library_cli, tape_cli
from .config import Config, ConfigError, embedded_default, load

log = logging.getLogger("ndmpd")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ndmpd", description="NDMP v2/v3/v4 server for Linux")
    parser.add_argument("--version", action="version", version=f"ndmpd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server in the foreground")
    serve.add_argument("--config", type=Path, help="configuration file (default: the embedded default)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="override server.log_level")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", type=Path)
    tape_cli.add_parser(sub)
    library_cli.add_parser(sub)
    dump_cli.add_parsers(sub)
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(path: Path | None) -> Config:
    if path is not None:
        return load(path)
    config, new_password = embedded_default()
    user = config.users[0]
    if new_password:
        print(f"ndmpd: generated password for user '{user.name}': {new_password}", file=sys.stderr)
        print(f"ndmpd: (kept in {config.server.state_dir / 'ndmp.password'}; it is printed only once)",
              file=sys.stderr)
    else:
        print(f"ndmpd: user '{user.name}', password in {config.server.state_dir / 'ndmp.password'}",
              file=sys.stderr)
    return config


def serve(args: argparse.Namespace) -> int:
    import asyncio

    from .context import ServerContext      # imported here: dump/restore start faster without them
    from .server import NdmpServer
    from .snapshots import remove_stale
    config = _load(args.config)
    _setup_logging(args.log_level or config.server.log_level)
    config.server.state_dir.mkdir(parents=True, exist_ok=True)
    remove_stale([volume.path for volume in config.volumes], config.server.state_dir)

    async def run() -> None:
        server = NdmpServer(ServerContext(config))
        await server.start()
        gc.freeze()     # start-up objects (codecs, config) live forever: keep them out of every collection
        await server.serve_until_stopped()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"ndmpd: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def check_config(args: argparse.Namespace) -> int:
    config = load(args.path)
    print(f"{args.path}: OK ({len(config.users)} users, {len(config.volumes)} volumes, "
          f"{len(config.tapes)} tapes, listening on {', '.join(map(str, config.server.listen))})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"serve": serve, "check-config": check_config, "tape": tape_cli.run, "library": library_cli.run,
                    "dump": dump_cli.dump, "restore": dump_cli.restore}
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"ndmpd: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
