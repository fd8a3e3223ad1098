"""``ndmpd tape``: create, inspect, extract from and protect virtual cartridges by hand."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .config import MIN_CAPACITY, MIN_EARLY_WARNING, ConfigError, parse_size
from .devices import cartridge
from .devices.medium import Location
from .devices.sealed_records import CartridgeKeys, RecordSeal
from .devices.sealing import ENVELOPE_OVERHEAD
from .devices.tape import MediaError, TapeError
from .durable import sync_directory
from .keystore import Keystore, KeySource, KeystoreError, read_key_file


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
    extract = cmds.add_parser("extract", help="write tape file N (0 = first) to stdout or a file, decrypted")
    extract.add_argument("path", help=where)
    extract.add_argument("file", type=int, help="tape file number, 0 = the first")
    extract.add_argument("-o", "--output", type=Path,
                         help="write it to this file, whole or not at all (default: stdout)")
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
                seal = _seal(cart, args)
                if args.output is None:
                    return extract_file(cart, args.file, sys.stdout.buffer, seal)
                return extract_to(args.output, cart, args.file, seal)
            cart.set_write_protected(args.state == "on")
            return 0
    except (TapeError, OSError, ConfigError) as exc:
        print(f"ndmpd tape: {exc}", file=sys.stderr)
        return 1


def extract_to(path: Path, cart: cartridge.Cartridge, number: int, seal: RecordSeal | None) -> int:
    """Extract tape file ``number`` into ``path`` whole or not at all: written under a temporary
    name beside it (mode 600: it may be decrypted data), synced, renamed into place only when
    the whole file was read and authenticated; a failure removes it and leaves ``path`` as it was."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            status = extract_file(cart, number, out, seal)
            if status == 0:
                out.flush()
                os.fsync(out.fileno())
        if status == 0:
            os.replace(tmp, path)
            sync_directory(path.parent)
            return 0
    except BaseException:
        os.unlink(tmp)
        raise
    os.unlink(tmp)
    return status


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
    """The seal of an encrypted cartridge, with the key from --key-file or the server's keystore;
    TapeError names the key the cartridge needs and why the one given cannot open it."""
    info = cart.superblock.seal
    if info is None:
        return None
    needed = f"key {info.key_name or '?'} (id {info.key_id.hex()})"
    try:
        if args.key_file is not None:
            key = read_key_file(args.key_file, "given by --key-file")     # a bad mode or size is named here
            if key.id != info.key_id:
                raise TapeError(f"{cart.path} is encrypted with {needed}; {args.key_file} is key id "
                                f"{key.id_hex} (wrong key)")
            store = Keystore(KeySource(Path("/nonexistent"), ((key.name, args.key_file),)))
        elif args.config is not None:
            from .key_cli import keystore_of
            store = keystore_of(args.config)
        else:
            raise TapeError(f"{cart.path} is encrypted with {needed}: give --config or --key-file")
        return CartridgeKeys("extract", store).seal_for(cart)
    except KeystoreError as exc:
        raise TapeError(str(exc)) from None


def tape_files(cart: cartridge.Cartridge) -> Iterator[TapeFile]:
    """Every tape file, a last one without a closing filemark included. The bytes are the
    records' as the DMA wrote them (an encrypted record's envelope is not counted). Reading
    stops at an entry that does not verify (MediaError, after the files before it)."""
    records = size = 0
    extra = ENVELOPE_OVERHEAD if cart.superblock.seal else 0
    for entry in _entries(cart):
        if entry.is_filemark:
            yield TapeFile(records, size, closed=True)
            records = size = 0
        else:
            records += 1
            size += entry.length - extra
    if records:
        yield TapeFile(records, size, closed=False)


@dataclass(frozen=True)
class TapeFile:
    """What ``ndmpd tape info`` shows of one tape file."""

    records: int
    size: int
    closed: bool            # False: end of data came before a filemark


def _entries(cart: cartridge.Cartridge) -> Iterator[cartridge.Entry]:
    """The cartridge's entries; an entry that does not verify is named by its tape file and
    record (MediaError)."""
    offset, file, record = cartridge.DATA_START, 0, 0
    while True:
        try:
            entry = cart.entry_at(offset)
        except MediaError as exc:
            raise MediaError(f"tape file {file} record {record}: {exc}") from None
        if entry is None:
            return
        yield entry
        offset = entry.end
        file, record = (file + 1, 0) if entry.is_filemark else (file, record + 1)


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
    if cart.torn:
        print(f"torn       {cart.torn} bytes after the end of data (offset {cart.eod}) are not a complete "
              "entry: the file was truncated or a write was cut by a crash", file=out)
    for number, tape_file in enumerate(tape_files(cart)):
        print(f"file {number:<5} {tape_file.records:>10} records {tape_file.size:>15} bytes"
              f"{'' if tape_file.closed else '  (no closing filemark)'}", file=out)
    return 0


def extract_file(cart: cartridge.Cartridge, number: int, out: BinaryIO, seal: RecordSeal | None = None) -> int:
    """Copy the records of tape file ``number`` to ``out`` (decrypted and authenticated with
    ``seal`` on an encrypted cartridge: no byte of a record that fails is written); 1 when
    there is no such file, TapeError when the file cannot be read whole."""
    found = False
    for payload in file_records(cart, number, seal):
        found = True
        if payload:
            out.write(payload)
    if not found:
        print(f"ndmpd tape: no file {number} on {cart.path}", file=sys.stderr)
        return 1
    return 0


def file_records(cart: cartridge.Cartridge, number: int, seal: RecordSeal | None = None
                 ) -> Iterator[bytes]:
    """The records of tape file ``number``, each authenticated before it is yielded, then b""
    once the file is known to be whole (its filemark; nothing at all when there is no such
    file). A file that ends without its filemark is an error where that is detectable: on an
    encrypted cartridge (its end is authenticated) and where the cartridge ends inside an
    entry (torn); a plain file merely left unclosed is yielded with a warning."""
    current = index = 0
    for entry in _entries(cart):
        if current > number:
            break
        if entry.is_filemark:
            if current == number:
                if seal is not None:
                    seal.check_end(cart, entry, current, index)
                yield b""
                return
            current, index = current + 1, 0
            continue
        if current == number:
            yield (seal.open_record(cart, entry, current, index, entry.length) if seal is not None
                   else cart.read_payload(entry, entry.length))
        index += 1
    if current != number or not index:
        return                                       # no such file (end of data after filemark current - 1)
    unclosed = f"{cart.path}: tape file {number} ends after record {index - 1} without a closing filemark"
    if cart.torn:
        raise MediaError(f"{unclosed}: the cartridge ends inside an entry ({cart.torn} bytes after offset "
                         f"{cart.eod}: truncated, or a write cut by a crash); record {index} and any after it are lost")
    if seal is not None:
        raise MediaError(f"{unclosed} (its authenticated end): the cartridge was truncated or never closed")
    print(f"ndmpd tape: warning: {unclosed} (its writer stopped before closing it); "
          f"extracted the {index} records there are", file=sys.stderr)
    yield b""
