"""``ndmp copy SRC:VOLUME DST:DIR``: the CLI side of the copy job (arguments, the level from
the catalog, output, exit codes; the work is in :mod:`.jobs.copy`)."""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack
from typing import Any

from .catalog import open_catalog
from .hosts import host_named, split_target
from .tls_data import secure_data_connection
from .jobs.copy import CopyJob, CopyRequest
from .job_cli import (add_level_arguments, add_output_arguments, add_version_argument, connect, job_reporter,
                      level_plan, parse_env, run_job)


def add_parsers(sub: Any, epilog: str) -> None:
    """The ``copy`` subparser."""
    c = sub.add_parser("copy", help="copy a volume into a directory of another server, data to data (no tape)",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("source", metavar="SRC:VOLUME")
    c.add_argument("destination", metavar="DST:DIR", help="a directory inside a volume of the destination")
    c.add_argument("--butype", default="tar", choices=("tar", "dump"))
    add_level_arguments(c, "copy to the same DST:DIR")
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
        plan = level_plan(args, catalog, src.name, volume, user_env, kind="copy", destination=destination)
        request = CopyRequest(source_host=src.name, volume=volume, dest_host=dst.name, directory=directory,
                              butype=args.butype, level=plan.level, env=user_env, base_token=plan.base_token,
                              base_backup=plan.base.id if plan.base else None)
        async with AsyncExitStack() as stack:
            source = await stack.enter_async_context(connect(src, args))
            dest = await stack.enter_async_context(connect(dst, args))
            await secure_data_connection(source, dest)
            reporter = job_reporter(args, label=f"{src.name}:{volume}")
            status, _ = await run_job(CopyJob(source, dest, catalog, request, reporter).run(), reporter)
    finally:
        catalog.close()
    return status


COMMANDS = {"copy": copy}
