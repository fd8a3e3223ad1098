"""``ndmpd library``: the operator's side of a virtual tape library.

Create labelled cartridges (into free slots, or outside the library), list what every
element holds, and pass cartridges in and out through the import/export ports, as an
operator does at a real library's mail slot. Safe while the server runs (the library's lock).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .changer.library import (DRIVE, IMPORT_EXPORT, KIND_NAMES, STORAGE, LibraryError, VirtualLibrary,
                              check_barcode)
from .config import MIN_CAPACITY, MIN_EARLY_WARNING, Config, ConfigError, load, parse_size
from .devices import cartridge, medium as media
from .devices.tape import MediaError


def add_parser(sub: argparse._SubParsersAction) -> None:
    library = sub.add_parser("library", help="manage a virtual tape library's cartridges")
    library.add_argument("--config", type=Path, required=True, help="the server's configuration file")
    cmds = library.add_subparsers(dest="library_command", required=True)
    create = cmds.add_parser("create", help="write blank labelled cartridges and put them in free slots")
    create.add_argument("changer", help="name of a virtual [[changer]] in the configuration")
    create.add_argument("barcodes", nargs="+", help="barcodes of the new cartridges, one each")
    create.add_argument("--capacity", help="default: the capacity of the library's first drive")
    create.add_argument("--early-warning", help="size of the early-warning zone")
    create.add_argument("--slot", type=int, help="element address of the slot (one barcode only)")
    create.add_argument("--outside", action="store_true", help="leave them outside the library (import later)")
    listing = cmds.add_parser("list", help="what each element holds, and the cartridges outside")
    listing.add_argument("changer", help="name of a virtual [[changer]] in the configuration")
    put = cmds.add_parser("import", help="put a cartridge from outside into an import/export port")
    put.add_argument("changer", help="name of a virtual [[changer]] in the configuration")
    put.add_argument("barcode", help="barcode of a cartridge outside the library")
    put.add_argument("--port", type=int, help="element address of the port (default: the first free)")
    take = cmds.add_parser("export", help="take the cartridge out of an import/export port")
    take.add_argument("changer", help="name of a virtual [[changer]] in the configuration")
    take.add_argument("what", help="its barcode or the port's element address")


def open_library(config: Config, name: str) -> VirtualLibrary:
    changer = next((c for c in config.changers if c.name == name), None)
    if changer is None or changer.kind != "virtual":
        known = ", ".join(c.name for c in config.changers if c.kind == "virtual") or "none"
        raise LibraryError(f"no virtual library {name!r} (configured: {known})")
    return VirtualLibrary(changer.name, changer.path, changer.drives, changer.slots, changer.import_export,
                          store=changer.store)


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
        library = open_library(config, args.changer)
        if args.library_command == "create":
            return _create(args, config, library)
        if args.library_command == "list":
            return _list(library)
        if args.library_command == "import":
            address = library.place(args.barcode, args.port, (IMPORT_EXPORT,))
            print(f"{args.barcode}: in import/export port {address}")
            return 0
        barcode = library.remove(args.what)
        print(f"{barcode}: taken out of {library.name} (the cartridge stays at {library.cartridge_path(barcode)})")
        return 0
    except (LibraryError, ConfigError, OSError, MediaError) as exc:
        print(f"ndmpd library: {exc}", file=sys.stderr)
        return 1


def _create(args: argparse.Namespace, config: Config, library: VirtualLibrary) -> int:
    if args.slot is not None and len(args.barcodes) != 1:
        raise LibraryError("--slot takes one barcode")
    drive = next(t for t in config.tapes if t.name == library.drives[0])
    capacity = parse_size(args.capacity, "--capacity", MIN_CAPACITY) if args.capacity else drive.capacity
    early = parse_size(args.early_warning, "--early-warning", MIN_EARLY_WARNING) if args.early_warning else drive.early_warning
    library.directory.mkdir(parents=True, exist_ok=True)
    for barcode in args.barcodes:
        path = library.cartridge_path(check_barcode(barcode))
        if path.exists():
            raise LibraryError(f"cartridge {barcode} exists already ({path})")
        cartridge.create(path, capacity, early, barcode)
        if args.outside:
            print(f"{barcode}: created outside the library ({capacity} bytes)")
            continue
        try:
            address = library.place(barcode, args.slot, (STORAGE,))
        except LibraryError:
            media.remove(path)
            raise
        print(f"{barcode}: created in slot {address} ({capacity} bytes)")
    return 0


def _list(library: VirtualLibrary) -> int:
    with library.state() as state:
        elements = sorted(state.elements.values(), key=lambda e: e.address)
        inside = {e.barcode for e in elements if e.barcode}
        prevent = state.prevent
    for e in elements:
        what = KIND_NAMES[e.kind] + (f" ({e.drive})" if e.kind == DRIVE else "")
        held = e.barcode or "-"
        extra = f"  from {e.source}" if e.source is not None and e.barcode else ""
        print(f"{e.address:>5}  {what:<28} {held}{extra}")
    outside = [b for b in library.cartridges() if b not in inside]
    print(f"outside: {' '.join(outside) or '-'}")
    if prevent:
        print("import/export ports locked by a DMA (PREVENT MEDIUM REMOVAL)")
    return 0
