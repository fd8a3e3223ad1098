"""``ndmp backup``, ``ndmp backups``, ``ndmp ls`` and ``ndmp find``: the CLI side of the
backup job and the catalog (argument parsing, output, exit codes; the work is elsewhere)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import time
from contextlib import AsyncExitStack
from typing import Any

from .catalog import Backup, FileEntry, media_dict, open_catalog
from .errors import EXIT_FAILED, EXIT_OK
from .hosts import host_named, split_target
from .job_cli import (add_level_arguments, add_output_arguments, add_version_argument, connect_sides,
                      job_reporter, level_plan, open_library, parse_env, run_job)
from .jobs.backup import BackupJob, BackupRequest
from .jobs.media import MediaLoader, parse_slots


def add_parsers(sub: Any, epilog: str) -> None:
    """The four commands' subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    b = sub.add_parser("backup", help="back a volume up to a drive (two-way or three-way)", epilog=epilog,
                       formatter_class=fmt)
    b.add_argument("source", metavar="HOST:VOLUME")
    b.add_argument("--tape", required=True, metavar="HOST:DRIVE")
    b.add_argument("--library", metavar="HOST:CHANGER",
                   help="change cartridges through this changer at end of medium (the image may span them)")
    b.add_argument("--slots", metavar="RANGE", help="the library's slots to write on, e.g. 1-4 (default: all)")
    b.add_argument("--drive", metavar="ELEMENT",
                   help="the changer's drive element that is DRIVE (number or @ADDR), if it does not say")
    b.add_argument("--butype", default="tar", choices=("tar", "dump"))
    add_level_arguments(b, "backup of the volume")
    b.add_argument("-E", dest="env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the data server (repeatable)")
    b.add_argument("--catalog", metavar="FILE", help="catalog database (default ~/.local/share/ndmp/catalog.db)")
    add_version_argument(b)
    add_output_arguments(b)
    bs = sub.add_parser("backups", help="the backups in the catalog, newest first")
    bs.add_argument("--volume", metavar="V")
    bs.add_argument("--catalog", metavar="FILE")
    bs.add_argument("--json", action="store_true")
    ls = sub.add_parser("ls", help="the files of a directory in a backup")
    ls.add_argument("backup", metavar="BACKUP", help="backup id or a unique prefix")
    ls.add_argument("path", nargs="?", default="/", metavar="PATH")
    ls.add_argument("--catalog", metavar="FILE")
    ls.add_argument("--json", action="store_true")
    find = sub.add_parser("find", help="files matching a glob in every backup")
    find.add_argument("glob", metavar="GLOB")
    find.add_argument("--catalog", metavar="FILE")
    find.add_argument("--json", action="store_true")


async def backup(args: argparse.Namespace) -> int:
    data_text, volume = split_target(args.source)
    tape_text, drive = split_target(args.tape)
    data_host, tape_host = host_named(data_text, args.config), host_named(tape_text, args.config)
    user_env = parse_env(args.env)
    slots = parse_slots(args.slots)
    robot_host, changer = None, None
    if args.library:
        robot_text, changer = split_target(args.library)
        robot_host = host_named(robot_text, args.config)
    catalog = open_catalog(args.catalog)
    try:
        plan = level_plan(args, catalog, data_host.name, volume, user_env)
        request = BackupRequest(host_name=data_host.name, volume=volume, drive=drive, butype=args.butype,
                                level=plan.level, env=user_env, tape_host_name=tape_host.name,
                                base_token=plan.base_token, base_backup=plan.base.id if plan.base else None)
        async with AsyncExitStack() as stack:
            data, tape = await connect_sides(stack, data_host, tape_host, args)
            media = None
            if robot_host is not None and changer is not None:
                library = await open_library(stack, robot_host, changer, args)
                media = MediaLoader(library, tape, drive, catalog, slots=slots, drive_element=args.drive,
                                    names=(args.library, args.tape))
            reporter = job_reporter(args, label=f"{data_host.name}:{volume}")
            status, _ = await run_job(BackupJob(data, tape, catalog, request, media=media, reporter=reporter).run(),
                                      reporter)
    finally:
        catalog.close()
    return status


def _backup_dict(b: Backup) -> dict[str, Any]:
    return {"id": b.id, "host": b.host, "volume": b.volume, "butype": b.butype, "level": b.level,
            "status": b.status, "started": b.started, "ended": b.ended, "bytes": b.bytes,
            "entries": b.entries, "halt_reason": b.halt_reason, "env": b.env, "kind": b.kind,
            "destination": b.destination, "base_backup": b.base_backup, "base_token": b.base_token,
            "dump_date": b.dump_date,
            "media": [media_dict(m) for m in b.media]}


async def backups(args: argparse.Namespace) -> int:
    with _catalog(args) as cat:
        rows = cat.backups(volume=args.volume)
    if args.json:
        print(json.dumps([_backup_dict(b) for b in rows]))
        return EXIT_OK
    for b in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.started))
        why = f"  ({b.halt_reason})" if b.halt_reason else ""
        copy = f" copy to {b.destination}" if b.kind == "copy" else ""
        print(f"{b.id}  {when}  {b.host}:{b.volume}{copy}  {b.butype} L{b.level}  {b.status}  "
              f"{b.bytes} bytes  {b.entries} files{why}")
    return EXIT_OK


def _entry_dict(e: FileEntry) -> dict[str, Any]:
    return {"backup": e.backup, "path": os.fsdecode(e.path), "inode": e.inode, "size": e.size,
            "mode": e.mode, "mtime": e.mtime}


def _entry_line(e: FileEntry) -> str:
    mode = stat.filemode(e.mode) if e.mode is not None else "?" * 10
    shown = os.fsdecode(e.path).encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return f"{mode} {e.size if e.size is not None else '-':>12} {shown}"


async def ls(args: argparse.Namespace) -> int:
    with _catalog(args) as cat:
        rows = cat.ls(args.backup, args.path)
    _print_entries(rows, args.json, with_backup=False)
    return EXIT_OK


async def find(args: argparse.Namespace) -> int:
    with _catalog(args) as cat:
        rows = cat.find(args.glob)
    _print_entries(rows, args.json, with_backup=True)
    return EXIT_OK if rows else EXIT_FAILED


def _print_entries(rows: list[FileEntry], as_json: bool, with_backup: bool) -> None:
    if as_json:
        print(json.dumps([_entry_dict(e) for e in rows]))
        return
    for e in rows:
        print((f"{e.backup}  " if with_backup else "") + _entry_line(e))


class _catalog:
    """The catalog of ``--catalog`` as a context manager (closed on exit)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.cat = open_catalog(args.catalog)

    def __enter__(self) -> Any:
        return self.cat

    def __exit__(self, *exc: object) -> None:
        self.cat.close()


COMMANDS = {"backup": backup, "backups": backups, "ls": ls, "find": find}
