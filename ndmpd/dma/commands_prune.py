"""``ndmp prune --keep-last N | --older-than AGE``: forget old backups, free their media.

Per host and volume, the catalog drops the backups beyond the newest N successful ones
and/or those older than AGE (``30d``, ``12h``, ``90m``, ``45s``, ``2w``), never a running one
nor a base an increment that stays needs (see ``Catalog.prune``). A medium none of whose
backups is left is **reusable**: listed in the output and, when it has a barcode (a
library's cartridge), marked so in the catalog; a spanning backup may then overwrite it.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from .catalog import open_catalog
from .errors import EXIT_OK, UsageError


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_age(text: str) -> float:
    """``30d`` → seconds; UsageError otherwise."""
    match = AGE.match(text.lower())
    if not match:
        raise UsageError(f"--older-than {text}: expected a number and a unit s, m, h, d or w (e.g. 30d)")
    return float(match.group(1)) * UNITS[match.group(2)]


def add_parsers(sub: Any, epilog: str) -> None:
    p = sub.add_parser("prune", help="remove old backups from the catalog; report the media freed",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep-last", type=int, metavar="N", help="keep the newest N successful backups per volume")
    p.add_argument("--older-than", metavar="AGE", help="remove backups started more than AGE ago (30d, 12h)")
    p.add_argument("--catalog", metavar="FILE")
    p.add_argument("--json", action="store_true")


async def prune(args: argparse.Namespace) -> int:
    if args.keep_last is None and args.older_than is None:
        raise UsageError("prune: give --keep-last N or --older-than AGE")
    if args.keep_last is not None and args.keep_last < 1:
        raise UsageError("--keep-last: at least 1")
    older = parse_age(args.older_than) if args.older_than is not None else None
    cat = open_catalog(args.catalog)
    try:
        removed = cat.prune(keep_last=args.keep_last, older_than=older)
        freed = {m.barcode or m.label for b in removed if b.kind != "copy"      # a copy's "medium" is DST:DIR
                 for m in b.media if (m.barcode or m.label)}
        reusable = sorted(freed - cat.media_in_use())
        barcodes = {m.barcode for b in removed for m in b.media if m.barcode}
        cat.mark_reusable([r for r in reusable if r in barcodes], since=time.time())
    finally:
        cat.close()
    if args.json:
        print(json.dumps({"removed": [{"id": b.id, "host": b.host, "volume": b.volume, "level": b.level,
                                       "status": b.status, "started": b.started} for b in removed],
                          "reusable": reusable}))
        return EXIT_OK
    for b in removed:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.started))
        print(f"removed {b.id}  {when}  {b.host}:{b.volume}  L{b.level}  {b.status}")
    for name in reusable:
        print(f"reusable {name}")
    if not removed:
        print("nothing to prune")
    return EXIT_OK


COMMANDS = {"prune": prune}
