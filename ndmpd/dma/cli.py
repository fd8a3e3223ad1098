"""The ``ndmp`` command: a DMA driving NDMP servers (``info``, ``backup``, ``backups``, ``ls``, ``find``,
``restore``, ``copy``, ``tape``, ``library``, ``prune``, ``replicate``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any, Callable

from .errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, JobFailed, NdmpConnectError,
                     NdmpConnectionLost, NdmpReplyError, UsageError)
from .hosts import PASSWORD_ENV, HostConfigError, host_named
from . import commands_backup, commands_copy, commands_media, commands_prune, commands_replicate, commands_restore
from .catalog import CatalogError
from .jobs.media import MediaError, SlotsError
from .library import LibraryError
from .smc import ScsiError
from .tapes import TapeError
from .info import gather, render
from .job_cli import add_version_argument, connect

_EPILOG = f"""\
HOST is a name from the configuration file ([host.NAME] tables: address, port, user,
password_file of mode 600) or inline [user@]address[:port] (IPv6 in brackets) with the
password in ${PASSWORD_ENV}.

exit status:
  0    done
  1    the job failed (connection refused, authentication failed, a request failed)
  2    usage or configuration error
  3    finished with warnings: the job completed, but a server logged a warning or an
       error on the way (a file vanished, changed or could not be read, a socket skipped);
       they are shown on stderr (--json: "warning"/"log" lines) and the result is kept
  130  interrupted (Ctrl-C, SIGTERM): both servers aborted and back to idle
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors leave with status 2 and one line naming the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ndmp", description="A DMA for NDMP servers (ndmpd and others).",
                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE",
                        help="hosts file (default $XDG_CONFIG_HOME/ndmp/ndmp.toml or ~/.config/ndmp/ndmp.toml)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="per-request timeout (default 60)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    info = sub.add_parser("info", help="what a server offers (like ndmjob -q)", epilog=_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("host", metavar="HOST")
    info.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    add_version_argument(info)
    commands_backup.add_parsers(sub, _EPILOG)
    commands_restore.add_parsers(sub, _EPILOG)
    commands_copy.add_parsers(sub, _EPILOG)
    commands_media.add_parsers(sub, _EPILOG)
    commands_prune.add_parsers(sub, _EPILOG)
    commands_replicate.add_parsers(sub, _EPILOG)
    return parser


async def _info(args: argparse.Namespace) -> int:
    host = host_named(args.host, args.config)
    async with connect(host, args) as agent:
        report = await gather(agent)
    report = {"host": host.name, "address": host.display, **report}
    if args.json:
        print(json.dumps(report, indent=None, sort_keys=False))
    else:
        print(render(report))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {"info": _info, **commands_backup.COMMANDS,
                                                                  **commands_restore.COMMANDS, **commands_copy.COMMANDS,
                                                                  **commands_media.COMMANDS, **commands_prune.COMMANDS,
                                                                  **commands_replicate.COMMANDS}


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"ndmp: {record.levelname.lower()}: {super().format(record)}"


def _log_to_stderr() -> None:
    """What the client code logs (a post it could not read and dropped, a handler that failed)
    reaches stderr as ndmp's other lines do, ``ndmp: warning: ...``, not as bare text; once."""
    logger = logging.getLogger("ndmpd.dma")
    if not any(isinstance(h.formatter, _LevelFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LevelFormatter())
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """Run one ``ndmp`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    _log_to_stderr()
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except UsageError as exc:
        print(f"ndmp {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (HostConfigError, SlotsError) as exc:
        print(f"ndmp: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NdmpConnectError, NdmpConnectionLost, NdmpReplyError, TimeoutError, CatalogError, LibraryError,
            MediaError, ScsiError, TapeError, JobFailed) as exc:
        print(f"ndmp: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("ndmp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
