"""The ``ndmpd`` command: serve, check-config, tape, library, dump, restore."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import __version__
from .config import Config, ConfigError, embedded_default, load, parse_listen

# The commands other modules define (each module's add_parser(s) and run or command functions).
# A command line that names one builds just that module's parser: ``ndmpd dump`` then starts
# without importing the tape, library and replica code (start-up is most of a small incremental).
_MODULES = {"init-config": "init_config", "tape": "tape_cli", "library": "library_cli", "dump": "dump_cli",
            "restore": "dump_cli", "replica": "replica_cli", "key": "key_cli", "cert": "cert_cli"}
_RUNS = {"init-config": "run", "tape": "run", "library": "run", "dump": "dump", "restore": "restore",
         "replica": "run", "key": "run", "cert": "run"}

if TYPE_CHECKING:
    from .server import NdmpServer

class _Formatter(argparse.HelpFormatter):
    """argparse's own help, as wide as shutil.get_terminal_size says, found without shutil:
    argparse makes a formatter for each argument added, and shutil brings bz2 and lzma (2 % of
    the instructions of ``ndmpd dump``'s start)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)      # (argparse's own margin)


def _columns() -> int:
    """$COLUMNS, else the terminal's width, else 80 (shutil.get_terminal_size's order)."""
    try:
        columns = int(os.environ.get("COLUMNS", 0))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    """A parser whose help goes through _Formatter (its sub-parsers are of its class)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line's parser; with ``command`` (another module's), just that command's."""
    parser = _Parser(prog="ndmpd", description="NDMP v2/v3/v4 server for Linux")
    parser.add_argument("--version", action="version", version=f"ndmpd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    if command in _MODULES:
        _add_parsers(importlib.import_module(f".{_MODULES[command]}", __package__), sub)
        return parser
    serve = sub.add_parser("serve", help="run the server in the foreground (SIGHUP reloads, SIGTERM stops)")
    serve.add_argument("--config", type=Path,
                       help="configuration file (default: the embedded default: 127.0.0.1:10000, user ndmp "
                            "with a generated password, one virtual tape, no volumes)")
    serve.add_argument("--listen", action="append", metavar="ADDR:PORT",
                       help="serve here instead of server.listen (repeatable; embedded default 127.0.0.1:10000)")
    serve.add_argument("--state-dir", type=Path, metavar="DIR",
                       help="instead of server.state_dir (embedded default: ~/.local/share/ndmpd)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="override server.log_level (default info)")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", type=Path, help="the configuration file to check")
    for name in ("init_config", "tape_cli", "library_cli", "dump_cli", "replica_cli", "key_cli", "cert_cli"):
        _add_parsers(importlib.import_module(f".{name}", __package__), sub)
    return parser


def _add_parsers(module, sub: argparse._SubParsersAction) -> None:
    (getattr(module, "add_parsers", None) or module.add_parser)(sub)


def _setup_logging(level: str) -> None:
    """To stderr, one bounded line per event whatever a peer sent; under systemd's journal
    ``<N>``-prefixed and without a timestamp."""
    import logging                      # here, as in the other serve-only functions: ``ndmpd dump``
    from .logtext import BoundedFormatter    # starts without logging
    from .sdnotify import JournalFormatter, under_journald
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(BoundedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """--listen / --state-dir as [server] keys (validated like the file's)."""
    overrides: dict[str, object] = {}
    if args.listen:
        for i, address in enumerate(args.listen):
            parse_listen(address, f"--listen[{i}]")
        overrides["listen"] = list(args.listen)
    if args.state_dir:
        overrides["state_dir"] = str(args.state_dir.expanduser().resolve())
    return overrides


def _read(args: argparse.Namespace) -> tuple[Config, str | None]:
    """The file (or the embedded default) with the command line's overrides and --log-level;
    the second value is the embedded default's password when it was just generated."""
    overrides = _overrides(args)            # validates --listen either way
    if args.config is not None:
        config, new_password = load(args.config, overrides), None
    else:
        state_dir = args.state_dir.expanduser().resolve() if args.state_dir else None
        config, new_password = embedded_default(state_dir, args.listen)
    return _cli_level(config, args), new_password


def _loader(args: argparse.Namespace) -> Callable[[], Config]:
    """Reads the configuration again on SIGHUP, as at start."""
    return lambda: _read(args)[0]


def _cli_level(config: Config, args: argparse.Namespace) -> Config:
    """--log-level wins over server.log_level, at start and at every reload."""
    if not getattr(args, "log_level", None):
        return config
    return dataclasses.replace(config, server=dataclasses.replace(config.server, log_level=args.log_level))


def _load(args: argparse.Namespace) -> Config:
    config, new_password = _read(args)
    if args.config is not None:
        return config
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
    from .sdnotify import Notifier
    from .server import NdmpServer
    config = _load(args)
    _setup_logging(config.server.log_level)
    try:
        config.server.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"server.state_dir: cannot keep state in {config.server.state_dir}: "
                          f"{exc.strerror or exc}") from None
    _remove_stale(config)
    from .engine.journal import start_journals, stop_journals
    journals = start_journals([(v.name, v.path) for v in config.volumes if v.journal])
    notifier = Notifier()
    holder: list[NdmpServer] = []

    async def run() -> None:
        server = NdmpServer(ServerContext(config, journals=journals), reload_config=_loader(args),
                            notifier=notifier)
        holder.append(server)
        await server.start()
        gc.freeze()     # start-up objects (codecs, config) live forever: keep them out of every collection
        await server.serve_until_stopped()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"ndmpd: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        stop_journals(journals)
    if holder:
        _exit_despite_stuck_jobs(holder[0])
    return 0


def _remove_stale(config: Config) -> None:
    """Snapshots a killed or stuck job left in any volume (whatever its mode: a DMA may ask), and
    the debris of replica updates (a replica's P is read-only: nothing is left inside it)."""
    import logging
    from .replica.store import clean_replicas
    from .snapshots import SnapshotError, remove_stale
    from .snapshots.holds import remove_unsettled
    remove_stale([volume.path for volume in config.volumes], config.server.state_dir)
    log = logging.getLogger("ndmpd")
    for volume in config.volumes:
        try:
            for item in remove_unsettled(volume.path):
                log.warning("removed held snapshot %s, taken by a backup that never ended", item)
        except (OSError, SnapshotError) as exc:
            log.warning("could not clean the held snapshots of %s: %s", volume.path, exc)
    for item in clean_replicas(config.volumes, config.server.state_dir):
        log.warning("removed %s, left by an interrupted replica update", item)


def _exit_despite_stuck_jobs(server: "NdmpServer") -> None:
    """A job thread stuck past server.shutdown_timeout (e.g. in a device call) would keep the
    interpreter waiting at exit for ever: remove what jobs leave behind and exit now."""
    import logging
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()
             and not t.daemon]
    for thread in stuck:
        thread.join(0.5)
    stuck = [t for t in stuck if t.is_alive()]
    if not stuck and not server.stuck:
        return
    ctx = server.ctx
    _remove_stale(ctx.config)
    logging.getLogger("ndmpd").error("%d sessions and %d threads did not stop within server.shutdown_timeout "
                                     "(%g s); exiting anyway", server.stuck, len(stuck),
                                     ctx.config.server.shutdown_timeout)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def check_config(args: argparse.Namespace) -> int:
    config = load(args.path)
    print(f"{args.path}: OK ({len(config.users)} users, {len(config.volumes)} volumes, "
          f"{len(config.tapes)} tapes, listening on {', '.join(map(str, config.server.listen))}"
          f"{''.join(f', {a} (TLS)' for a in config.server.tls_listen)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = _parser(words[0] if words else None).parse_args(argv)
    try:
        if args.command in _MODULES:
            module = importlib.import_module(f".{_MODULES[args.command]}", __package__)
            return getattr(module, _RUNS[args.command])(args)
        return {"serve": serve, "check-config": check_config}[args.command](args)
    except ConfigError as exc:
        print(f"ndmpd: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run() -> None:
    """The ``ndmpd`` command (console script and ``python -m ndmpd``): main, then the process's
    end, where the interpreter's last collections would walk every object of every module it
    loaded (a fifteenth of a small incremental's instructions) to free memory that goes with
    the process anyway: frozen, they leave them be (exit handlers and flushes still run)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
