"""What every job command (``backup``, ``restore``, ``copy``...) shares: its output options,
the reporter they choose, and how a job's end becomes the exit status.

A command adds the options with :func:`add_output_arguments`, builds one reporter with
:func:`job_reporter` and runs each job through :func:`run_job`::

    reporter = job_reporter(args, label="nas:/export/data")
    status, result = await run_job(CopyJob(src, dst, request, reporter=reporter).run(), reporter)
    return status

so every job shows the bar on a terminal, plain lines off it, ``--json`` lines with
``--json``, and ends with the same statuses: 0 done, 1 failed (:class:`JobFailed`, its
one line on stderr), 3 done but a server logged a warning or an error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from typing import Any, Awaitable, TypeVar

from .agent import Agent
from .library import Library
from .tls_data import secure_data_connection

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_WARNINGS, JobFailed, JobInterrupted, UsageError
from .catalog import Catalog
from .hosts import Host
from .levels import LevelPlan, NoBase, plan_level
from .progress import Reporter, choose_reporter

T = TypeVar("T")


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version 2|3|4``, repeatable, the same on every command that connects."""
    parser.add_argument("--version", dest="versions", type=int, choices=(2, 3, 4), action="append",
                        help="NDMP version to ask the servers for (repeatable; default 4 then 3)")


def connect(host: Host, args: argparse.Namespace) -> Any:
    """An Agent to ``host`` with the command line's versions and timeout (``async with`` it)."""
    versions = tuple(getattr(args, "versions", None) or (4, 3))
    return Agent.connect(host.address, host.port, user=host.user, password=host.password, versions=versions,
                         timeout=args.timeout, tls=host.tls)


async def connect_sides(stack: AsyncExitStack, data_host: Host, tape_host: Host,
                        args: argparse.Namespace) -> tuple[Agent, Agent]:
    """The data and tape agents of a job, in ``stack``: one session when both are one server
    (two-way), else two, with their data connection made TLS where both hosts ask for it."""
    data = await stack.enter_async_context(connect(data_host, args))
    same = (data_host.address, data_host.port) == (tape_host.address, tape_host.port)
    tape = data if same else await stack.enter_async_context(connect(tape_host, args))
    await secure_data_connection(data, tape)
    return data, tape


async def open_library(stack: AsyncExitStack, robot_host: Host, changer: str, args: argparse.Namespace) -> Library:
    """Library ``changer`` on ``robot_host`` through its own session (SCSI), closed by ``stack``."""
    robot = await stack.enter_async_context(connect(robot_host, args))
    library = await Library.open(robot, changer)
    stack.push_async_callback(library.close)
    return library


def add_level_arguments(parser: argparse.ArgumentParser, newest: str) -> None:
    """``--level N | --incremental``; ``newest`` says what the base is chosen among."""
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("--level", type=int, default=None, metavar="N",
                        help=f"dump level; N > 0 builds on the newest {newest} below level N in the catalog")
    levels.add_argument("--incremental", action="store_true",
                        help=f"one level above the newest {newest} in the catalog (else a level 0)")


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``-E NAME=VALUE`` arguments as a dict (a malformed one is a usage error)."""
    env = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise UsageError(f"-E {pair}: expected NAME=VALUE")
        env[name] = value
    return env


def level_plan(args: argparse.Namespace, catalog: Catalog, host: str, volume: str, env: dict[str, str],
               **where: Any) -> LevelPlan:
    """The level and base ``--level``/``--incremental`` ask for (a level with nothing below it is
    a usage error, unless the user gave BASE_DATE); the plan's note, if any, on stderr."""
    try:
        plan = plan_level(catalog, host, volume, level=args.level, incremental=args.incremental, **where)
    except NoBase as exc:
        if "BASE_DATE" not in env:             # the user's own token needs no base from the catalog
            raise UsageError(str(exc)) from None
        plan = LevelPlan(args.level)
    if plan.note:
        print(f"ndmp: {plan.note}", file=sys.stderr)
    return plan


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``--progress-interval``, the same on every job command."""
    parser.add_argument("--json", action="store_true",
                        help="JSON lines on stdout: progress, log, warning, then the summary")
    parser.add_argument("--progress-interval", type=float, metavar="SECONDS",
                        help="seconds between progress polls (default 0.5 behind the bar, 2 with --json)")


def job_reporter(args: argparse.Namespace, label: str = "") -> Reporter:
    """The reporter the command line asks for: JSON lines, the bar on a terminal, or plain lines."""
    return choose_reporter(args.json, sys.stdout.isatty() and sys.stderr.isatty(), label=label,
                           interval=getattr(args, "progress_interval", None))


def completed_status(reporter: Reporter) -> int:
    """The status of a command whose jobs all completed: 3 when a server logged a warning or
    an error on the way, else 0."""
    return EXIT_WARNINGS if getattr(reporter, "warnings", None) else EXIT_OK


async def run_job(job: Awaitable[T], reporter: Reporter) -> tuple[int, T | None]:
    """Await one job: (status, its result). A failure or an interrupt prints the job's one
    line on stderr and gives (1 or 130, None); a completed job (0 or 3, result)."""
    try:
        result = await job
    except JobFailed as exc:
        print(f"ndmp: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED, None
    except JobInterrupted as exc:
        print(f"ndmp: {exc}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED, None
    return completed_status(reporter), result


def is_failure(status: int) -> bool:
    """The job did not complete (the command stops there)."""
    return status not in (EXIT_OK, EXIT_WARNINGS)

