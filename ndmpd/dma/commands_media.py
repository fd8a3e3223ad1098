"""``ndmp tape HOST:DRIVE ...`` and ``ndmp library HOST:CHANGER ...``: drives and changers by hand.

``tape``: ``status`` (TAPE_GET_STATE), ``rewind``, ``eject`` (MTIO OFF), ``label NAME``
(writes the label file, see :mod:`ndmpd.dma.tapes` for its format; a tape that already holds a
label or data is refused unless ``--force``) and ``read-label``.

``library``: ``inventory``, ``load SLOT``, ``unload`` (back to the slot it came from),
``move FROM TO`` (``N``/``slotN``, ``driveN``, ``ieN`` or ``@ADDR``) and ``label SLOT=NAME...``
(each slot's cartridge loaded, labelled, unloaded). ``--drive NAME`` says which drive: the
NDMP tape device name (matched with the changer's drive identifiers; ndmpd's virtual library
gives them), or the drive's number or ``@ADDR`` when the changer does not identify its drives
(``label`` then needs the device name as ``--tape-device``).
"""

from __future__ import annotations

import argparse
import json
from contextlib import AsyncExitStack
from typing import Any

from ..wire import C
from .agent import Agent
from . import tapes
from .errors import EXIT_FAILED, EXIT_OK, UsageError
from .hosts import Host, host_named, split_target
from .job_cli import connect, open_library
from .library import Inventory, Library, LibraryError, element_name
from .smc import Element

TAPE_ACTIONS = ("status", "rewind", "eject", "label", "read-label")
LIBRARY_ACTIONS = ("inventory", "load", "unload", "move", "label")


def add_parsers(sub: Any, epilog: str) -> None:
    """The ``tape`` and ``library`` subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    t = sub.add_parser("tape", help="a drive: status, rewind, eject, label NAME, read-label", epilog=epilog,
                       formatter_class=fmt)
    t.add_argument("target", metavar="HOST:DRIVE")
    t.add_argument("action", choices=TAPE_ACTIONS)
    t.add_argument("name", nargs="?", metavar="NAME", help="the label (label only)")
    t.add_argument("--force", action="store_true", help="label a tape that holds a label or data")
    t.add_argument("--json", action="store_true")
    lib = sub.add_parser("library", help="a changer: inventory, load SLOT, unload, move FROM TO, label SLOT=NAME...",
                         epilog=epilog, formatter_class=fmt)
    lib.add_argument("target", metavar="HOST:CHANGER")
    lib.add_argument("action", choices=LIBRARY_ACTIONS)
    lib.add_argument("args", nargs="*", metavar="ARG")
    lib.add_argument("--drive", metavar="NAME", help="the drive: NDMP device name, drive number or @ADDR")
    lib.add_argument("--tape-device", metavar="NAME",
                     help="label: the NDMP tape device of the drive (default: what the changer says it is)")
    lib.add_argument("--force", action="store_true", help="label: overwrite cartridges holding a label or data")
    lib.add_argument("--json", action="store_true")


def _emit(args: argparse.Namespace, report: dict[str, Any], text: str) -> None:
    print(json.dumps(report) if args.json else text)


# ------------------------------------------------------------------ tape

async def tape(args: argparse.Namespace) -> int:
    host_text, drive = split_target(args.target)
    host = host_named(host_text, args.config)
    if args.action == "label" and not args.name:
        raise UsageError("tape label: give the label NAME")
    async with connect(host, args) as agent:
        mode = C.TAPE_RDWR_MODE if args.action == "label" else C.TAPE_READ_MODE
        await tapes.open_drive(agent, drive, mode)
        try:
            return await _tape_action(agent, args, drive)
        finally:
            await agent.call("TAPE_CLOSE")


async def _tape_action(agent: Agent, args: argparse.Namespace, drive: str) -> int:
    if args.action == "status":
        state = await tapes.status(agent)
        _emit(args, {"drive": drive, **state}, "\n".join(f"{k:15} {v}" for k, v in state.items()))
    elif args.action == "rewind":
        await tapes.mtio(agent, C.MTIO_REW)
        _emit(args, {"drive": drive, "rewound": True}, f"{drive}: rewound")
    elif args.action == "eject":
        await tapes.mtio(agent, C.MTIO_OFF)
        _emit(args, {"drive": drive, "ejected": True}, f"{drive}: ejected")
    elif args.action == "read-label":
        found = await tapes.contents(agent)
        report = {"drive": drive, "label": found.label.name if found.label else None,
                  "created": found.label.created if found.label else None, "has_data": found.has_data}
        if found.label:
            text = f"{drive}: label {found.label.name} (written {found.label.created})"
        else:
            text = f"{drive}: no label ({'holds unlabelled data' if found.has_data else 'blank'})"
        _emit(args, report, text)
        return EXIT_OK if found.label else EXIT_FAILED
    elif args.action == "label":
        label = await _label_here(agent, args.name, args.force, drive)
        _emit(args, {"drive": drive, "label": label.name, "created": label.created},
              f"{drive}: labelled {label.name}")
    return EXIT_OK


async def _label_here(agent: Agent, name: str, force: bool, where: str) -> tapes.Label:
    tapes.label_record(name)                       # the name's check, before touching the tape
    found = await tapes.contents(agent)
    if not found.blank and not force:
        what = f"label {found.label.name}" if found.label else "data"
        more = " and data after it" if found.label and found.has_data else ""
        raise tapes.TapeError(f"{where} holds {what}{more}: not overwritten (--force to label it anyway)")
    return await tapes.write_label(agent, name)


# ------------------------------------------------------------------ library

def _element_dict(inv: Inventory, e: Element) -> dict[str, Any]:
    out: dict[str, Any] = {"element": element_name(inv, e), "kind": e.kind_name, "address": e.address,
                           "full": e.full, "barcode": e.barcode}
    if e.source is not None and e.full:
        source = next((s for s in inv.all() if s.address == e.source), None)
        out["source"] = element_name(inv, source) if source else f"@{e.source}"
    if e.identifier:
        out["identifier"] = e.identifier
    return out


def _inventory_text(inv: Inventory) -> str:
    lines = []
    for e in [*inv.drives, *inv.slots, *inv.ports]:
        d = _element_dict(inv, e)
        what = (d["barcode"] or "(no barcode)") if e.full else "empty"
        extra = f"  from {d['source']}" if "source" in d else ""
        ident = f"  [{e.identifier}]" if e.identifier else ""
        lines.append(f"{d['element']:10} @{e.address:<5} {what}{extra}{ident}")
    return "\n".join(lines)


async def library(args: argparse.Namespace) -> int:
    host_text, changer = split_target(args.target)
    host = host_named(host_text, args.config)
    _check_library_args(args)
    async with AsyncExitStack() as stack:
        lib = await open_library(stack, host, changer, args)
        if args.action == "label":
            return await _label_slots(lib, host, args, stack)
        return await _library_action(lib, args)


def _check_library_args(args: argparse.Namespace) -> None:
    wanted = {"inventory": 0, "load": 1, "unload": 0, "move": 2}
    if args.action in wanted and len(args.args) != wanted[args.action]:
        raise UsageError(f"library {args.action}: expected {wanted[args.action]} argument(s)")
    if args.action == "label" and (not args.args or any("=" not in a for a in args.args)):
        raise UsageError("library label: expected SLOT=NAME...")


def _drive_spec(args: argparse.Namespace) -> str | int | None:
    return args.drive


async def _library_action(lib: Library, args: argparse.Namespace) -> int:
    if args.action == "inventory":
        inv = await lib.inventory()
        _emit(args, {"changer": lib.name, "elements": [_element_dict(inv, e) for e in
                                                       [*inv.drives, *inv.slots, *inv.ports]]},
              _inventory_text(inv))
    elif args.action == "load":
        inv = await lib.inventory()
        slot = inv.locate(args.args[0])
        drive = inv.drive(_drive_spec(args))
        await lib.load(slot, f"@{drive.address}")
        _emit(args, {"loaded": slot.barcode, "from": element_name(inv, slot), "into": element_name(inv, drive)},
              f"{slot.barcode or 'cartridge'}: {element_name(inv, slot)} -> {element_name(inv, drive)}")
    elif args.action == "unload":
        inv = await lib.inventory()
        drive = inv.drive(_drive_spec(args))
        home = await lib.unload(f"@{drive.address}")
        if home is None:
            _emit(args, {"unloaded": None, "from": element_name(inv, drive)}, f"{element_name(inv, drive)} is empty")
        else:
            _emit(args, {"unloaded": drive.barcode, "from": element_name(inv, drive), "into": element_name(inv, home)},
                  f"{drive.barcode or 'cartridge'}: {element_name(inv, drive)} -> {element_name(inv, home)}")
    elif args.action == "move":
        inv = await lib.inventory()
        src, dst = inv.locate(args.args[0]), inv.locate(args.args[1])
        await lib.move(src, dst)
        _emit(args, {"moved": src.barcode, "from": element_name(inv, src), "into": element_name(inv, dst)},
              f"{src.barcode or 'cartridge'}: {element_name(inv, src)} -> {element_name(inv, dst)}")
    return EXIT_OK


async def _label_slots(lib: Library, host: Host, args: argparse.Namespace, stack: AsyncExitStack) -> int:
    inv = await lib.inventory()
    drive = inv.drive(_drive_spec(args))
    device = args.tape_device or (args.drive if args.drive and not args.drive.startswith("@")
                                  and not args.drive.isdigit() else None)
    if device is None and drive.identifier:
        device = drive.identifier.split()[-1]
    if device is None:
        raise LibraryError(f"which NDMP tape device is {element_name(inv, drive)}? (--tape-device NAME)")
    pairs = []
    for pair in args.args:
        where, _, name = pair.partition("=")
        pairs.append((inv.locate(where), name))
        tapes.label_record(name)
    tape_agent = await stack.enter_async_context(connect(host, args))
    done = []
    for slot, name in pairs:
        if drive.full or (await lib.inventory()).element(drive.address).full:
            await lib.unload(f"@{drive.address}")
        await lib.load(slot, f"@{drive.address}")
        try:
            await tapes.open_drive(tape_agent, device, C.TAPE_RDWR_MODE)
            try:
                label = await _label_here(tape_agent, name, args.force, f"{element_name(inv, slot)} "
                                          f"({slot.barcode or 'no barcode'})")
            finally:
                await tape_agent.call("TAPE_CLOSE")
        finally:
            await lib.unload(f"@{drive.address}")
        drive = (await lib.inventory()).element(drive.address)
        done.append({"slot": element_name(inv, slot), "barcode": slot.barcode, "label": label.name})
        if not args.json:
            print(f"{element_name(inv, slot)} ({slot.barcode or 'no barcode'}): labelled {label.name}")
    if args.json:
        print(json.dumps({"labelled": done}))
    return EXIT_OK


COMMANDS = {"tape": tape, "library": library}
