"""``ndmp restore``: the CLI side of the recover job (arguments, the catalog's answers,
output, exit codes; the work is in :mod:`ndmpd.dma.jobs.recover`).

``ndmp restore BACKUP [PATH[=NEWPATH]]... --to HOST:DIR [--tape HOST:DRIVE]`` restores one
backup: the whole image into DIR, or each PATH (a path in the backup, as ``ndmp ls`` shows
it) to DIR/PATH, or to DIR/NEWPATH when renamed. When the catalog has the image offset
(fh_info) of every asked path, the restore is a direct access one (DAR): the server reads
only what it needs. The drive defaults to the one the backup was written to, on the host
that was backed up.

A backup a library wrote (its media rows carry barcodes) is restored through that library
(``--library HOST:CHANGER``, by default the one the catalog recorded, and the drive it was
written in): the restore loads the cartridge holding the first part it needs, changes to the
next at the end of each part and puts the last one back in its slot.

``ndmp restore --as-of WHEN HOST:VOLUME [PATH...] --to HOST:DIR`` restores the chain a
restore at WHEN needs (the level 0, then each increment in order), so deletions and renames
come out as they were.

Output is :mod:`ndmpd.dma.job_cli`'s, as for every job: the bar on a terminal, plain lines off
it, ``--json`` lines; one summary per recover (a chain: level 0 first), the command stopping at
the first that does not complete; exit 3 when all completed but a server logged a warning.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any

from .catalog import Backup, Catalog, as_path, open_catalog
from .errors import EXIT_FAILED, UsageError
from .hosts import Host, host_named, split_target
from .job_cli import (add_output_arguments, add_version_argument, completed_status, connect_sides, is_failure,
                      job_reporter, open_library, parse_env, run_job)
from .jobs.media import MediaLoader
from .jobs.recover import ALL_ONES, RecoverFailed, RecoverJob, RecoverRequest, RecoverResult, Selection
from .progress import Reporter


def add_parsers(sub: Any, epilog: str) -> None:
    """The ``restore`` subparser."""
    r = sub.add_parser("restore", help="restore a backup (whole, some paths, or a chain as of a time)",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="ndmp restore BACKUP [PATH[=NEWPATH]]... --to HOST:DIR [--tape HOST:DRIVE]\n"
                             "       ndmp restore --as-of WHEN HOST:VOLUME [PATH...] --to HOST:DIR")
    r.add_argument("what", metavar="BACKUP|HOST:VOLUME",
                   help="a backup id or unique prefix; with --as-of, the backed-up HOST:VOLUME")
    r.add_argument("paths", nargs="*", metavar="PATH[=NEWPATH]",
                   help="paths in the backup (default: all); NEWPATH is where it lands, under DIR")
    r.add_argument("--to", required=True, metavar="HOST:DIR", help="the data server and directory to restore into")
    r.add_argument("--tape", metavar="HOST:DRIVE",
                   help="where the cartridge is (default: the backup's drive on the backed-up host)")
    r.add_argument("--library", metavar="HOST:CHANGER",
                   help="load the backup's cartridges through this changer (default: the one that wrote them)")
    r.add_argument("--drive", metavar="ELEMENT",
                   help="the changer's drive element that is DRIVE (number or @ADDR), if it does not say")
    r.add_argument("--as-of", metavar="WHEN", help="ISO date and time, or 'now': restore the chain up to then")
    r.add_argument("--no-direct", dest="direct", action="store_false",
                   help="read the image from its start even when the catalog allows direct access (for a "
                        "tape agent that cannot serve the data server's reads)")
    r.add_argument("-E", dest="env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the data server (repeatable)")
    r.add_argument("--catalog", metavar="FILE", help="catalog database (default ~/.local/share/ndmp/catalog.db)")
    add_version_argument(r)
    add_output_arguments(r)


def parse_when(text: str) -> float | None:
    """``now`` (None: the catalog's now) or an ISO date and time (local time unless it says)."""
    if text == "now":
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--as-of {text}: expected an ISO date and time (2026-12-01T18:00) or 'now'") from None


def _pairs(texts: list[str]) -> list[tuple[str, str | None]]:
    out = []
    for text in texts:
        source, eq, new = text.partition("=")
        if not source or (eq and not new):
            raise UsageError(f"{text}: expected PATH or PATH=NEWPATH")
        out.append((source, new or None))
    return out


def _under(directory: str, path: str) -> str:
    return directory.rstrip("/") + "/" + path.strip("/")


def plan(catalog: Catalog, backup: Backup, pairs: list[tuple[str, str | None]], directory: str, *,
         drive: str, env: dict[str, str], missing_ok: bool = False, allow_direct: bool = True) -> RecoverRequest | None:
    """The recover of ``pairs`` (all of it when empty) from ``backup`` into ``directory``; DAR
    when the catalog knows every path's offset. None when ``missing_ok`` and it holds none of them."""
    selections = []
    for source, new in pairs:
        entry = catalog.lookup(backup.id, source)
        if entry is None:
            if missing_ok:
                continue
            raise RecoverFailed(f"{source}: not in backup {backup.id} (see ndmp ls {backup.id[:8]})")
        fh = entry.fh_info if entry.fh_info not in (None, 0, ALL_ONES) else None
        shown = as_path(source).decode("utf-8", "surrogateescape")
        selections.append(Selection(shown, _under(directory, new or shown), fh))
    if pairs and not selections:
        return None
    direct = allow_direct and bool(selections) and all(s.fh_info is not None for s in selections)
    return RecoverRequest(backup=backup, drive=drive, destination=directory, paths=selections, direct=direct,
                          env=env)


def _restorable(backup: Backup) -> None:
    if backup.status != "done":
        why = f" ({backup.halt_reason})" if backup.halt_reason else ""
        raise RecoverFailed(f"backup {backup.id} is {backup.status}{why}: only a complete backup can be restored")
    if not backup.media:
        raise RecoverFailed(f"backup {backup.id} has no media in the catalog; say where it is with --tape")


def _tape(args: argparse.Namespace, backup: Backup) -> tuple[Host, str]:
    if args.tape:
        text, drive = split_target(args.tape)
        return host_named(text, args.config), drive
    first = backup.media[0]
    if first.drive:
        text, drive = split_target(first.drive)
        return host_named(text, args.config), drive
    if first.barcode is not None:
        raise RecoverFailed(f"backup {backup.id} was written through a library to a drive the catalog does not "
                            "name; give --tape HOST:DRIVE")
    label = first.label
    if not label:
        raise RecoverFailed(f"backup {backup.id}'s media has no drive name; give --tape HOST:DRIVE")
    return host_named(backup.host, args.config), label


def _library(args: argparse.Namespace, backup: Backup) -> tuple[Host, str] | None:
    """The changer to load the backup's cartridges through: --library, else the one that wrote
    them (None: the cartridge is already in the drive, put there by hand)."""
    text = args.library
    if text is None and any(m.barcode for m in backup.media):
        text = next((m.library for m in backup.media if m.library), None)
    if text is None:
        return None
    host_text, changer = split_target(text)
    return host_named(host_text, args.config), changer


async def _run_one(args: argparse.Namespace, request: RecoverRequest, data_host: Host, tape_host: Host,
                   library: tuple[Host, str] | None, catalog: Catalog, reporter: Reporter) -> RecoverResult:
    request.data_host_name, request.tape_host_name = data_host.name, tape_host.name
    async with AsyncExitStack() as stack:
        data, tape = await connect_sides(stack, data_host, tape_host, args)
        media = None
        if library is not None:
            robot_host, changer = library
            changer_lib = await open_library(stack, robot_host, changer, args)
            media = MediaLoader(changer_lib, tape, request.drive, catalog, drive_element=args.drive,
                                reporter=reporter)
        try:
            return await RecoverJob(data, tape, request, media=media, reporter=reporter).run()
        except RecoverFailed as exc:
            if args.tape is None and "TAPE_OPEN" in str(exc):
                raise RecoverFailed(f"{exc}; the drive defaulted to {tape_host.name}:{request.drive} "
                                    "(the backed-up host): give --tape HOST:DRIVE") from None
            raise


def _work(args: argparse.Namespace, catalog: Catalog, pairs: list[tuple[str, str | None]], env: dict[str, str],
          directory: str, when: float | None) -> list[tuple[RecoverRequest, Host, tuple[Host, str] | None]]:
    """The recovers to run, in order, each with its tape host and library (RecoverFailed: nothing to restore)."""
    if args.as_of is not None:
        host_text, volume = split_target(args.what)
        chain = catalog.chain(host_named(host_text, args.config).name, volume, when)
    else:
        chain = [catalog.get(args.what)]
    work = []
    for backup in chain:
        _restorable(backup)
        tape_host, drive = _tape(args, backup)
        request = plan(catalog, backup, pairs, directory, drive=drive, env=env,
                       missing_ok=args.as_of is not None, allow_direct=args.direct)
        if request is not None:
            work.append((request, tape_host, _library(args, backup)))
    if pairs and not work:
        raise RecoverFailed(f"none of {', '.join(p for p, _ in pairs)} is in the chain of {args.what}")
    return work


async def restore(args: argparse.Namespace) -> int:
    """One recover per backup (a chain with --as-of: each its own summary, in order, through one
    reporter); the first that does not complete ends the command with its status."""
    to_text, directory = split_target(args.to)
    data_host = host_named(to_text, args.config)
    pairs, env = _pairs(args.paths), parse_env(args.env)
    if args.as_of is not None and any(new for _, new in pairs):
        raise UsageError("--as-of restores paths where they were: PATH=NEWPATH is for one backup")
    when = parse_when(args.as_of) if args.as_of is not None else None
    catalog = open_catalog(args.catalog)
    try:
        work = _work(args, catalog, pairs, env, directory, when)
    except RecoverFailed as exc:          # the catalog's answer: nothing it can restore
        print(f"ndmp: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        catalog.close()
    reporter = job_reporter(args, label=f"{data_host.name}:{directory}")
    for request, tape_host, library in work:
        catalog = open_catalog(args.catalog)          # the loader reads the media rows
        try:
            status, _ = await run_job(_run_one(args, request, data_host, tape_host, library, catalog, reporter),
                                      reporter)
        finally:
            catalog.close()
        if is_failure(status):
            return status
    return completed_status(reporter)


COMMANDS = {"restore": restore}
