"""``ndmp copy SRC:VOLUME DST:DIR``: the CLI side of the copy job (arguments, the level from
the catalog, output, exit codes; the work is in :mod:`.jobs.copy`)."""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from typing import Any

from .catalog import open_catalog
from .commands_backup import parse_env
from .errors import UsageError
from .hosts import host_named, split_target
from .jobs.copy import CopyJob, CopyRequest
from .levels import LevelPlan, NoBase, plan_level
from .job_cli import add_output_arguments, add_version_argument, connect, job_reporter, run_job


def add_parsers(sub: Any, epilog: str) -> None:
    """The ``copy`` subparser."""
    c = sub.add_parser("copy", help="copy a volume into a directory of another server, data to data (no tape)",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("source", metavar="SRC:VOLUME")
    c.add_argument("destination", metavar="DST:DIR", help="a directory inside a volume of the destination")
    c.add_argument("--butype", default="tar", choices=("tar", "dump"))
    levels = c.add_mutually_exclusive_group()
    levels.add_argument("--level", type=int, default=None, metavar="N",
                        help="N > 0: only what changed since the newest copy below level N to the same DST:DIR")
    levels.add_argument("--incremental", action="store_true",
                        help="one level above the newest copy to the same DST:DIR (else a level 0)")
    c.add_argument("-E", dest="env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the source's data server (repeatable)")
    c.add_argument("--catalog", metavar="FILE", help="catalog database (default ~/.local/share/ndmp/catalog.db)")
    add_version_argument(c)
    add_output_arguments(c)


async def copy(args: argparse.Namespace) -> int:
    src_text, volume = split_target(args.source)
    dst_text, directory = split_target(args.destination)
    src, dst = host_named(src_text, args.config), host_named(dst_text, args.config)
    user_env = parse_env(args.env)
    destination = f"{dst.name}:{directory}"
    catalog = open_catalog(args.catalog)
    try:
        try:
            plan = plan_level(catalog, src.name, volume, level=args.level, incremental=args.incremental,
                              kind="copy", destination=destination)
        except NoBase as exc:
            if "BASE_DATE" not in user_env:       # the user's own token needs no base from the catalog
                raise UsageError(str(exc)) from None
            plan = LevelPlan(args.level)
        if plan.note:
            print(f"ndmp: {plan.note}", file=sys.stderr)
        request = CopyRequest(source_host=src.name, volume=volume, dest_host=dst.name, directory=directory,
                              butype=args.butype, level=plan.level, env=user_env, base_token=plan.base_token,
                              base_backup=plan.base.id if plan.base else None)
        async with AsyncExitStack() as stack:
            source = await stack.enter_async_context(connect(src, args))
            dest = await stack.enter_async_context(connect(dst, args))
            reporter = job_reporter(args, label=f"{src.name}:{volume}")
            status, _ = await run_job(CopyJob(source, dest, catalog, request, reporter).run(), reporter)
    finally:
        catalog.close()
    return status


COMMANDS = {"copy": copy}
