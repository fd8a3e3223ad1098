"""``ndmpd tape``: create, inspect, extract from and protect virtual cartridges by hand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import BinaryIO

from .config import MIN_CAPACITY, MIN_EARLY_WARNING, ConfigError, parse_size
from .devices import cartridge
from .devices.medium import Location
from .devices.sealed_records import CartridgeKeys, RecordSeal
from .devices.sealing import ENVELOPE_OVERHEAD
from .devices.tape import TapeError
from .keystore import Keystore, KeySource, KeystoreError


def add_parser(sub: argparse._SubParsersAction) -> None:
    tape = sub.add_parser("tape", help="manage virtual tape cartridges")
    cmds = tape.add_subparsers(dest="tape_command", required=True)
    create = cmds.add_parser("create", help="write a blank cartridge")
    create.add_argument("path", type=Path, help="cartridge file to create (must not exist)")
    create.add_argument("--capacity", default="10GiB", help="e.g. 10GiB (default)")
    create.add_argument("--early-warning", help="size of the early-warning zone (default capacity/20, <= 64MiB)")
    create.add_argument("--barcode", default="", help="volume tag, up to 32 bytes")
    create.add_argument("--write-protect", action="store_true")
    where = ("cartridge file, or s3://BUCKET/PREFIX/NAME/ of a drive's or library's store "
             "(with --config)")
    info = cmds.add_parser("info", help="list the tape files: records and bytes of each, and the key it needs")
    info.add_argument("path", help=where)
    info.add_argument("--config", type=Path, help="the server's configuration (its S3 stores)")
    extract = cmds.add_parser("extract", help="write tape file N (0 = first) to stdout, decrypted")
    extract.add_argument("path", help=where)
    extract.add_argument("file", type=int, help="tape file number, 0 = the first")
    keys = extract.add_mutually_exclusive_group()
    keys.add_argument("--config", type=Path, help="an encrypted cartridge: find its key in this server's "
                      "keystore; an S3 cartridge: its store")
    keys.add_argument("--key-file", type=Path, help="an encrypted cartridge: the key file (32 bytes, mode 600)")
    protect = cmds.add_parser("protect", help="set or clear write protection")
    protect.add_argument("path", help=where)
    protect.add_argument("state", choices=["on", "off"], help="on: write-protect; off: writable")
    protect.add_argument("--config", type=Path, help="the server's configuration (its S3 stores)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.tape_command == "create":
            return _create(args)
        with cartridge.Cartridge(locate(args.path, args.config), writable=args.tape_command == "protect") as cart:
            if args.tape_command == "info":
                return _info(cart, sys.stdout)
            if args.tape_command == "extract":
                return extract_file(cart, args.file, sys.stdout.buffer, _seal(cart, args))
            cart.set_write_protected(args.state == "on")
            return 0
    except (TapeError, OSError, ConfigError) as exc:
        print(f"ndmpd tape: {exc}", file=sys.stderr)
        return 1


def locate(where: str, config: Path | None) -> Location:
    """A cartridge file, or an ``s3://`` cartridge of one of the configured stores (whose
    endpoint and credentials the configuration gives)."""
    if not where.startswith("s3://"):
        return Path(where)
    if config is None:
        raise ConfigError(f"{where}: give --config, the server configuration whose store holds it")
    from .config import load
    from .devices.s3_medium import S3Store
    loaded = load(config)
    for store in [t.store for t in loaded.tapes] + [c.store for c in loaded.changers]:
        if store is not None and where.startswith(store.url()):
            name = where[len(store.url()):].strip("/")
            if name and "/" not in name:
                return S3Store(store).cartridge(name)
    raise ConfigError(f"{where}: no [tape.store] or [changer.store] in {config} holds it")


def _create(args: argparse.Namespace) -> int:
    try:
        capacity = parse_size(args.capacity, "--capacity", MIN_CAPACITY)
        early = parse_size(args.early_warning, "--early-warning", MIN_EARLY_WARNING) if args.early_warning else None
    except ConfigError as exc:
        print(f"ndmpd tape: {exc}", file=sys.stderr)
        return 2
    if len(args.barcode.encode()) > 32:
        print("ndmpd tape: --barcode: at most 32 bytes", file=sys.stderr)
        return 2
    sb = cartridge.create(args.path, capacity, early, args.barcode, args.write_protect)
    print(f"{args.path}: blank cartridge, {sb.capacity} bytes, early warning {sb.early_warning} bytes before the end")
    return 0


def _seal(cart: cartridge.Cartridge, args: argparse.Namespace) -> RecordSeal | None:
    """The seal of an encrypted cartridge, with the key from --key-file or the server's keystore."""
    if cart.superblock.seal is None:
        return None
    if args.key_file is not None:
        store = Keystore(KeySource(Path("/nonexistent"), (("key-file", args.key_file),)))
    elif args.config is not None:
        from .key_cli import keystore_of
        store = keystore_of(args.config)
    else:
        raise TapeError(f"{cart.path} is encrypted with key {cart.superblock.seal.key_name} "
                        f"(id {cart.superblock.seal.key_id.hex()}): give --config or --key-file")
    try:
        return CartridgeKeys("ndmpd tape", store).seal_for(cart)
    except KeystoreError as exc:
        raise TapeError(str(exc)) from None


def tape_files(cart: cartridge.Cartridge) -> list[tuple[int, int]]:
    """(records, bytes) of every tape file; a last file without a closing filemark is included.
    The bytes are the records' as the DMA wrote them (an encrypted record's envelope is not counted)."""
    files: list[tuple[int, int]] = []
    records = size = 0
    extra = ENVELOPE_OVERHEAD if cart.superblock.seal else 0
    for entry in cart.entries():
        if entry.is_filemark:
            files.append((records, size))
            records = size = 0
        else:
            records += 1
            size += entry.length - extra
    if records:
        files.append((records, size))
    return files


def _info(cart: cartridge.Cartridge, out) -> int:
    sb = cart.superblock
    print(f"cartridge  {cart.path}", file=out)
    print(f"barcode    {sb.barcode or '-'}", file=out)
    print(f"capacity   {sb.capacity} bytes (early warning {sb.early_warning} bytes before the end)", file=out)
    print(f"used       {cart.used} bytes{'  write-protected' if sb.write_protected else ''}", file=out)
    if sb.seal is None:
        print("encryption none", file=out)
    else:
        print(f"encryption AES-256-GCM, key {sb.seal.key_name or '?'} (id {sb.seal.key_id.hex()}), "
              f"cartridge id {sb.seal.cartridge_id.hex()}", file=out)
    for number, (records, size) in enumerate(tape_files(cart)):
        print(f"file {number:<5} {records:>10} records {size:>15} bytes", file=out)
    return 0


def extract_file(cart: cartridge.Cartridge, number: int, out: BinaryIO, seal: RecordSeal | None = None) -> int:
    """Copy the records of tape file ``number`` to ``out`` (decrypted and authenticated with
    ``seal`` on an encrypted cartridge); 1 when there is no such file."""
    current = index = 0
    found = False
    for entry in cart.entries():
        if entry.is_filemark:
            if current == number:
                if seal is not None:
                    seal.check_end(cart, entry, current, index)
                return 0
            current += 1
            index = 0
            continue
        if current == number:
            found = True
            if seal is not None:
                out.write(seal.open_record(cart, entry, current, index, entry.length))
            else:
                out.write(cart.read_payload(entry, entry.length))
        index += 1
    if not found:
        print(f"ndmpd tape: no file {number} on {cart.path}", file=sys.stderr)
        return 1
    if seal is not None:
        raise TapeError(f"{cart.path}: tape file {number} ends after record {index - 1} without its "
                        "authenticated end (a filemark): the cartridge was truncated or never closed")
    return 0
